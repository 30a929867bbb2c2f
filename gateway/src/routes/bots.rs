//! The proof of concept's `/bots` CRUD, plus drain/resume.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use orq_shared::domain::{BotId, Role};
use orq_shared::repo::bots::{self, Bot, BotFilter};
use orq_shared::repo::customers;
use serde::Deserialize;

use super::{PageQuery, optional_enum, paged};
use crate::auth::{Admins, AdminsOrBots, Authorized, ViewersOrBots};
use crate::error::{ApiError, Json, Query};
use crate::idempotency::{Caller, CreateRequest, IdemKey, create_once};
use crate::ids::Id;
use crate::service;
use crate::service::bots::BotBody;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    ip_address: Option<String>,
    name: Option<String>,
    status: Option<String>,
}

#[utoipa::path(get, path = "/bots", operation_id = "bots_list", tag = "bots", params(ListQuery, super::PageQuery), responses((status = 200, description = "A page of bots", body = [orq_shared::repo::bots::Bot], headers(("x-next-cursor" = String, description = "Present when there may be more: pass it back as `?after=`"))), crate::error::Refusals))]
pub async fn list(
    State(state): State<AppState>,
    who: Authorized<ViewersOrBots>,
    Query(q): Query<ListQuery>,
    Query(paging): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let page = paging.page()?;
    let filter = BotFilter {
        ip_address: q.ip_address,
        name: q.name,
        status: optional_enum("status", q.status.as_deref())?,
    };
    let db = state.db().await?;
    let items = bots::list(&db, who.customer_id, &filter, page).await?;
    let last = items.last().map(|b| b.id.to_string());
    Ok(paged(items, page, last))
}

#[utoipa::path(get, path = "/bots/{id}", operation_id = "bots_get", tag = "bots", params(("id" = uuid::Uuid, Path, description = "The bot's id")), responses((status = 200, description = "OK", body = orq_shared::repo::bots::Bot), crate::error::Refusals))]
pub async fn get(
    State(state): State<AppState>,
    who: Authorized<ViewersOrBots>,
    Id(id): Id<BotId>,
) -> Result<axum::Json<Bot>, ApiError> {
    let db = state.db().await?;
    Ok(axum::Json(bots::get(&db, who.customer_id, id).await?))
}

#[utoipa::path(post, path = "/bots", operation_id = "bots_create", tag = "bots", params(super::IdempotencyHeader), request_body = BotBody, responses((status = 201, description = "Created", body = orq_shared::repo::bots::Bot), crate::error::Refusals))]
pub async fn create(
    State(state): State<AppState>,
    who: Authorized<Admins>,
    key: IdemKey,
    Json(body): Json<BotBody>,
) -> Result<Response, ApiError> {
    let request = CreateRequest::of("bots.create", &[], &body);
    let spec = service::bots::check_new(&state, body)?;
    let created = create_once(&state, &Caller::token(&who), &key, request, async |tx| {
        Ok(service::bots::create(&state, tx, &who, &spec).await?)
    })
    .await?;
    if created.fresh().is_some() {
        service::jobs::wake(&state, who.customer_id, None);
    }
    Ok(created.respond())
}

#[utoipa::path(put, path = "/bots/{id}", operation_id = "bots_update", tag = "bots", params(("id" = uuid::Uuid, Path, description = "The bot's id")), request_body = BotBody, responses((status = 200, description = "OK", body = orq_shared::repo::bots::Bot), crate::error::Refusals))]
pub async fn update(
    State(state): State<AppState>,
    who: Authorized<AdminsOrBots>,
    Id(id): Id<BotId>,
    Json(body): Json<BotBody>,
) -> Result<axum::Json<Bot>, ApiError> {
    Ok(axum::Json(
        service::bots::update(&state, &who, id, body).await?,
    ))
}

#[utoipa::path(delete, path = "/bots/{id}", operation_id = "bots_delete", tag = "bots", params(("id" = uuid::Uuid, Path, description = "The bot's id")), responses((status = 204, description = "Deleted"), crate::error::Refusals))]
pub async fn delete(
    State(state): State<AppState>,
    who: Authorized<Admins>,
    Id(id): Id<BotId>,
) -> Result<StatusCode, ApiError> {
    state
        .in_transaction(async |tx| bots::delete(tx, who.customer_id, id).await)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /bots/{id}/token` (admin): a `bot` token that holds this bot,
/// shown this once. With it a legacy bot sets its own status (`PUT
/// /bots/{id}`), and nothing else; the token that held the bot before no
/// longer does.
#[utoipa::path(post, path = "/bots/{id}/token", operation_id = "bots_issue_token", tag = "bots", params(("id" = uuid::Uuid, Path, description = "The bot's id"), super::IdempotencyHeader), responses((status = 201, description = "The bot's token, shown once: `{bot_id, name, role, access_token}`", body = Object), crate::error::Refusals))]
pub async fn issue_token(
    State(state): State<AppState>,
    who: Authorized<Admins>,
    key: IdemKey,
    Id(id): Id<BotId>,
) -> Result<Response, ApiError> {
    let path = id.to_string();
    let params = [path.as_str()];
    let request = CreateRequest::of("bots.issue_token", &params, &serde_json::Value::Null);
    // The answer holds the token: stored sealed, replayed only to this caller.
    let created = create_once(&state, &Caller::token(&who), &key, request, async |tx| {
        let bot = bots::get(tx, who.customer_id, id).await?;
        let (token_id, token) =
            customers::issue_token(tx, who.customer_id, Role::Bot, Some(&bot.name)).await?;
        bots::hold(tx, who.customer_id, id, token_id).await?;
        Ok(serde_json::json!({
            "bot_id": id, "name": bot.name, "role": "bot", "access_token": token,
        }))
    })
    .await?;
    Ok(created.respond())
}

/// The bot takes no new work and finishes what it has.
#[utoipa::path(post, path = "/bots/{id}/drain", operation_id = "bots_drain", tag = "bots", params(("id" = uuid::Uuid, Path, description = "The bot's id")), responses((status = 200, description = "OK", body = orq_shared::repo::bots::Bot), crate::error::Refusals))]
pub async fn drain(
    State(state): State<AppState>,
    who: Authorized<Admins>,
    Id(id): Id<BotId>,
) -> Result<axum::Json<Bot>, ApiError> {
    Ok(axum::Json(
        service::bots::set_draining(&state, &who, id, true).await?,
    ))
}

#[utoipa::path(post, path = "/bots/{id}/resume", operation_id = "bots_resume", tag = "bots", params(("id" = uuid::Uuid, Path, description = "The bot's id")), responses((status = 200, description = "OK", body = orq_shared::repo::bots::Bot), crate::error::Refusals))]
pub async fn resume(
    State(state): State<AppState>,
    who: Authorized<Admins>,
    Id(id): Id<BotId>,
) -> Result<axum::Json<Bot>, ApiError> {
    Ok(axum::Json(
        service::bots::set_draining(&state, &who, id, false).await?,
    ))
}
