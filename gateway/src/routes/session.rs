//! `GET /me`: who the presented token belongs to. The dashboard reads its
//! customer from here to build `/{customer}/…` URLs, and checks a token
//! typed at its login with it.

use axum::Json;
use orq_shared::domain::Role;
use serde_json::{Value, json};

use crate::auth::Auth;
use crate::error::ApiError;

/// Any role may ask who it is.
#[utoipa::path(get, path = "/me", operation_id = "session_me", tag = "ops", responses((status = 200, description = "`{customer, role, name}` of the token", body = Object), crate::error::Refusals))]
pub async fn me(auth: Auth) -> Result<Json<Value>, ApiError> {
    let who = auth.require(Role::ALL)?;
    Ok(Json(json!({
        "customer": who.customer,
        "role": who.role.as_str(),
        "name": who.name,
    })))
}
