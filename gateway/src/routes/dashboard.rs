//! The operator's dashboard: a no-build page of vanilla JavaScript over the
//! JSON API (`gateway/dashboard/`), compiled into the binary so it works
//! offline and needs no static-file directory at run time. Every response
//! carries a strict Content-Security-Policy: the page loads nothing but its
//! own files and talks to nothing but this origin.
//!
//! `/dashboard` cannot clash with `/{customer}/…`: "dashboard" is a reserved
//! customer name (`orq_shared::repo::customers::RESERVED_NAMES`).

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::error::ApiError;
use crate::error::Path;

pub const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
     style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'none'";

/// (name, content type, body) of every file the page is made of.
const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../dashboard/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../dashboard/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../dashboard/app.css"),
    ),
];

/// `GET /` (a redirect), `GET /dashboard` and `GET /dashboard/{file}`.
/// Generic over the state so it merges into the API's router and stands
/// alone in tests.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/dashboard") }))
        .route("/dashboard", get(index))
        .route("/dashboard/", get(index))
        .route("/dashboard/{file}", get(file))
}

async fn index() -> Response {
    serve("index.html").unwrap_or_else(|e| e.into_response())
}

async fn file(Path(name): Path<String>) -> Response {
    serve(&name).unwrap_or_else(|e| e.into_response())
}

fn serve(name: &str) -> Result<Response, ApiError> {
    let (_, content_type, body) = FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| ApiError::not_found("file"))?;
    // Served from memory, and small: no-cache makes a new build show at
    // once without giving up conditional requests elsewhere.
    Ok((
        [
            (CONTENT_TYPE, *content_type),
            (CACHE_CONTROL, "no-cache"),
            (HeaderName::from_static("content-security-policy"), CSP),
            (HeaderName::from_static("x-content-type-options"), "nosniff"),
            (HeaderName::from_static("referrer-policy"), "no-referrer"),
        ],
        *body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get_path(path: &str) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let response = routes::<()>()
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, headers, body.to_vec())
    }

    #[tokio::test]
    async fn serves_each_file_with_its_type_and_the_policy() {
        for (path, kind) in [
            ("/dashboard", "text/html"),
            ("/dashboard/", "text/html"),
            ("/dashboard/index.html", "text/html"),
            ("/dashboard/app.js", "text/javascript"),
            ("/dashboard/app.css", "text/css"),
        ] {
            let (status, headers, body) = get_path(path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            let content_type = headers[CONTENT_TYPE].to_str().unwrap_or_default();
            assert!(content_type.starts_with(kind), "{path}: {content_type}");
            assert_eq!(headers["content-security-policy"], CSP, "{path}");
            assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
            assert_eq!(headers[CACHE_CONTROL], "no-cache", "{path}");
            assert!(!body.is_empty(), "{path}");
        }
    }

    #[tokio::test]
    async fn an_unknown_file_is_the_json_404() {
        for path in ["/dashboard/nope", "/dashboard/..%2FCargo.toml"] {
            let (status, _, body) = get_path(path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            let error: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            assert_eq!(error["error"]["code"], "not_found", "{path}");
        }
    }

    #[tokio::test]
    async fn the_root_redirects_to_the_dashboard() {
        let (status, headers, _) = get_path("/").await;
        assert_eq!(status, StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(headers["location"], "/dashboard");
    }

    #[test]
    fn the_policy_pins_base_and_forms() {
        // <base> cannot redirect the page's relative URLs, and no form
        // submits anywhere (the login form is handled by script).
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ] {
            assert!(
                CSP.split("; ").any(|d| d == directive),
                "{directive} is missing from {CSP}"
            );
        }
    }

    #[test]
    fn the_script_never_puts_the_token_in_a_url() {
        let (_, _, js) = FILES[1];
        assert!(!js.contains("access_token"), "app.js mentions access_token");
        assert!(
            !js.contains("new EventSource"),
            "app.js opens an EventSource"
        );
        assert!(js.contains("Authorization: `Bearer ${session.token}`"));
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        let (_, _, html) = FILES[0];
        assert!(html.contains("src=\"/dashboard/app.js\""));
        assert!(html.contains("href=\"/dashboard/app.css\""));
        assert!(!html.contains("<script>") && !html.contains("style="));
        assert!(!html.contains("http://") && !html.contains("https://"));
    }
}
