//! Who is calling: a token from `Authorization: Bearer` or `?access_token=`,
//! resolved to its customer and role. Every handler scopes its queries to
//! that customer.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use orq_shared::domain::Role;
use orq_shared::repo::customers::{self, Principal};

use crate::error::ApiError;
use crate::state::AppState;

pub struct Auth(pub Principal);

impl Auth {
    /// Passes when the caller's role is one of `roles` (ranked: `User`
    /// admits `Admin` too).
    pub fn require(&self, roles: &[Role]) -> Result<&Principal, ApiError> {
        if roles.iter().any(|r| self.0.role.allows(*r)) {
            Ok(&self.0)
        } else {
            Err(ApiError::forbidden(format!(
                "role {} may not do this (needs {})",
                self.0.role,
                roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )))
        }
    }
}

/// The token a request presents, from the header or the query string.
pub fn presented_token(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    let query = parts.uri.query()?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v)
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = presented_token(parts).ok_or_else(ApiError::unauthorized)?;
        let key = orq_shared::token::hash(&token);
        if let Some(principal) = state.principals.get(&key) {
            return Ok(Auth(principal));
        }
        let db = state.db().await?;
        let principal = customers::authenticate(&db, &token)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        state.principals.insert(key, principal.clone());
        Ok(Auth(principal))
    }
}
