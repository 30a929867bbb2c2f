//! The OpenAPI document: generated from the handlers' `#[utoipa::path]`
//! annotations and their request and response types, collected with the
//! routes themselves (`crate::api`), and served at `/openapi.json`.

use axum::Extension;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Orquestra",
        description = "Jobs for bots and tasks for people: the proof of concept's bots and CSV tasks, \
            TheEye's customer-scoped tasks and jobs, flowBuild's user tasks, the field workers' \
            micro-tasks, webhooks and the live event feed. Errors are always \
            `{\"error\": {\"code\", \"message\", \"details\"}}`."
    ),
    paths(
        orq_shared::ops::healthz,
        orq_shared::ops::readyz,
        orq_shared::ops::scrape,
        crate::routes::photos::download,
        crate::routes::photos::upload,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&Security),
    security(("bearer" = []), ("access_token" = [])),
    tags(
        (name = "bots", description = "Machines that run jobs (seed 003)"),
        (name = "tasks", description = "CSV tasks: jobs of kind `system` (seed 003)"),
        (name = "agent", description = "What the bot agent calls"),
        (name = "theeye", description = "Customer-scoped task definitions, jobs and scripts (seed 002)"),
        (name = "micro_task", description = "Field workers' micro-tasks (seed 000)"),
        (name = "activity_manager", description = "flowBuild user tasks (seed 001)"),
        (name = "webhooks", description = "Deliveries, subscriptions and the signing secret (seed 004)"),
        (name = "events", description = "The live event feed"),
        (name = "dashboard", description = "What the operator's dashboard reads beside the lists"),
        (name = "ops", description = "Health, readiness, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// A token in `Authorization: Bearer` or in `?access_token=` (TheEye's way,
/// and the only one a browser's EventSource has).
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "access_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("access_token"))),
        );
    }
}

/// The whole document, as `GET /openapi.json` serves it.
pub fn document_json() -> serde_json::Result<String> {
    crate::api().into_openapi().to_pretty_json()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub async fn document(Extension(spec): Extension<axum::body::Bytes>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        spec,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes the seed documents fix (000 micro-tasks, 001 user tasks,
    /// 002 TheEye, 003 bots and tasks) and the ones this API adds: each must
    /// be in the document with its method.
    const CONTRACT: &[(&str, &str)] = &[
        // seed 003
        ("get", "/bots"),
        ("post", "/bots"),
        ("get", "/bots/{id}"),
        ("put", "/bots/{id}"),
        ("delete", "/bots/{id}"),
        ("get", "/tasks"),
        ("post", "/tasks"),
        ("get", "/tasks/{id}"),
        ("put", "/tasks/{id}"),
        ("delete", "/tasks/{id}"),
        // seed 000
        ("post", "/micro_task/execution/{id}/start"),
        ("post", "/micro_task/execution/{id}/finish"),
        ("post", "/micro_task/execution/{id}/photo"),
        // seed 001
        ("post", "/activity_manager"),
        ("get", "/activity_manager/{id}"),
        ("post", "/activity_manager/{id}/commit"),
        ("post", "/activity_manager/{id}/submit"),
        // seed 002
        ("get", "/{customer}/task"),
        ("post", "/{customer}/task"),
        ("get", "/{customer}/task/{id}"),
        ("put", "/{customer}/task/{id}"),
        ("delete", "/{customer}/task/{id}"),
        ("get", "/{customer}/task/{id}/recipe"),
        ("post", "/{customer}/task/import"),
        ("get", "/{customer}/task/{id}/credentials"),
        ("post", "/{customer}/task/{id}/job"),
        ("delete", "/{customer}/task/{id}/job"),
        ("post", "/job"),
        ("post", "/{customer}/task/{id}/secret/{key}/job"),
        ("post", "/job/secret/{key}"),
        ("get", "/{customer}/job"),
        ("get", "/{customer}/job/{id}"),
        ("put", "/{customer}/job/{id}/cancel"),
        ("post", "/{customer}/job/{id}/cancel"),
        // ours
        ("post", "/agent/register"),
        ("get", "/agent/scripts/{id}"),
        ("get", "/events/stream"),
        ("get", "/webhooks/deliveries"),
        ("post", "/webhooks/deliveries/{id}/redeliver"),
        ("post", "/webhooks/secret/rotate"),
        ("put", "/photos/{key}"),
        ("get", "/photos/{key}"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/me"),
    ];

    fn document() -> serde_json::Value {
        serde_json::from_str(&document_json().expect("serializes")).expect("is JSON")
    }

    #[test]
    fn every_contract_route_is_documented() {
        let doc = document();
        let missing: Vec<_> = CONTRACT
            .iter()
            .filter(|(method, path)| doc["paths"][path][method].is_null())
            .collect();
        assert!(missing.is_empty(), "not in the document: {missing:?}");
    }

    /// Every operation names its tag and has its own operationId, every path
    /// parameter is declared, and every `$ref` resolves: what a client
    /// generator needs.
    #[test]
    fn the_document_is_complete_for_client_generators() {
        let doc = document();
        let text = doc.to_string();
        for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap_or_default();
            assert!(
                !doc["components"]["schemas"][name].is_null(),
                "dangling $ref to {name}"
            );
        }
        let paths = doc["paths"].as_object().expect("paths");
        assert!(paths.len() >= 55, "only {} paths", paths.len());
        let mut operation_ids = std::collections::HashSet::new();
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("path item") {
                assert!(op["tags"].is_array(), "{method} {path} has no tag");
                let id = op["operationId"].as_str().unwrap_or_default();
                assert!(
                    operation_ids.insert(id.to_string()),
                    "{method} {path}: operationId {id:?} is not unique"
                );
                let declared: Vec<&str> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["in"] == "path")
                            .filter_map(|p| p["name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                for segment in path.split('/') {
                    if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}'))
                    {
                        assert!(
                            declared.contains(&name),
                            "{method} {path}: path parameter {name} not declared"
                        );
                    }
                }
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path} has no responses"
                );
            }
        }
    }

    /// POST operations that answer 201 but create nothing a retry could
    /// duplicate, and why.
    const CREATES_NOTHING_DURABLE: &[(&str, &str)] = &[(
        "/micro_task/execution/{id}/photo",
        "an upload ticket: nothing is stored; a retry gets a fresh ticket",
    )];

    /// Every POST that creates something (answers 201) takes an
    /// `Idempotency-Key` header, and says so.
    #[test]
    fn every_create_declares_the_idempotency_key_header() {
        let doc = document();
        let mut creates = 0;
        let mut missing = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let op = &item["post"];
            if op["responses"]["201"].is_null()
                || CREATES_NOTHING_DURABLE.iter().any(|(p, _)| p == path)
            {
                continue;
            }
            creates += 1;
            let declared = op["parameters"].as_array().is_some_and(|ps| {
                ps.iter().any(|p| {
                    p["in"] == "header"
                        && p["name"] == "Idempotency-Key"
                        && p["required"] != true
                        && p["schema"]["type"].to_string().contains("string")
                })
            });
            if !declared {
                missing.push(path.clone());
            }
        }
        assert!(missing.is_empty(), "no Idempotency-Key header: {missing:?}");
        // tasks, bots, scripts, task definitions (create, import), four job
        // routes, micro-tasks, user tasks, workers, subscriptions.
        assert!(creates >= 13, "only {creates} creating operations found");
    }
}
