//! `GET /{customer}/overview`: the dashboard's landing view in one read
//! (admins: it counts every job, whatever its task's acls, and the
//! webhook and notification failures, which are admins' to see). What it
//! holds is `crate::service::overview`'s.

use axum::extract::State;

use crate::auth::{Admins, Scoped};
use crate::error::ApiError;
use crate::service::overview::{self as service, Overview};
use crate::state::AppState;

#[utoipa::path(get, path = "/{customer}/overview", operation_id = "overview_get", tag = "dashboard", params(super::CustomerPath), responses((status = 200, description = "Jobs by status, completed and failed per minute over the last hour, the backlog, the bots, webhook and notification failures, the longest-running jobs", body = Overview), crate::error::Refusals))]
pub async fn get(
    State(state): State<AppState>,
    who: Scoped<Admins>,
) -> Result<axum::Json<Overview>, ApiError> {
    Ok(axum::Json(service::read(&state, who.customer_id).await?))
}
