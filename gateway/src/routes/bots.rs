//! The proof of concept's `/bots` CRUD, plus drain/resume.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use orq_shared::domain::{BotId, BotStatus, Delivery, Role};
use orq_shared::repo::bots::{self, Bot, BotFilter, BotSpec};
use orq_shared::repo::customers;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

use super::{PageQuery, optional_enum, paged, text_field};
use crate::auth::{Admins, AdminsOrBots, Authorized, ViewersOrBots};
use crate::error::{ApiError, Json, Query};
use crate::idempotency::{Caller, CreateRequest, IdemKey, create_once};
use crate::ids::Id;
use crate::service;
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

/// Every field optional: `POST` fills defaults, `PUT` keeps current values
/// (a legacy bot sends just `{"status": "BUSY"}`).
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct BotBody {
    name: Option<String>,
    ip_address: Option<String>,
    port: Option<i32>,
    status: Option<String>,
    delivery: Option<String>,
    capacity: Option<i32>,
    systems: Option<Vec<String>>,
    tags: Option<Vec<String>>,
}

fn apply(body: BotBody, base: BotSpec) -> Result<BotSpec, ApiError> {
    let name = match body.name {
        Some(n) => text_field("name", &n, 200)?,
        None => base.name,
    };
    let ip_address = match body.ip_address {
        Some(ip) => {
            let ip = ip.trim().to_string();
            ip.parse::<IpAddr>().map_err(|_| {
                ApiError::invalid_field("ip_address", "ip_address must be an IPv4 or IPv6 address")
            })?;
            ip
        }
        None => base.ip_address,
    };
    let port = body.port.unwrap_or(base.port);
    if !(1..=65535).contains(&port) {
        return Err(ApiError::invalid_field(
            "port",
            "port must be between 1 and 65535",
        ));
    }
    let status = optional_enum("status", body.status.as_deref())?.unwrap_or(base.status);
    let delivery = optional_enum("delivery", body.delivery.as_deref())?.unwrap_or(base.delivery);
    let capacity = body.capacity.unwrap_or(base.capacity);
    if !(1..=1000).contains(&capacity) {
        return Err(ApiError::invalid_field(
            "capacity",
            "capacity must be between 1 and 1000",
        ));
    }
    let systems = match body.systems {
        Some(list) => list
            .iter()
            .map(|s| text_field("systems", s, 200))
            .collect::<Result<_, _>>()?,
        None => base.systems,
    };
    let tags = match body.tags {
        Some(list) => list
            .iter()
            .map(|s| text_field("tags", s, 200))
            .collect::<Result<_, _>>()?,
        None => base.tags,
    };
    Ok(BotSpec {
        name,
        ip_address,
        port,
        status,
        delivery,
        capacity,
        systems,
        tags,
    })
}

/// An HTTP bot's delivery address must be outside `security.bot_deny_networks`.
fn check_address(state: &AppState, spec: &BotSpec) -> Result<(), ApiError> {
    if spec.delivery != Delivery::Http {
        return Ok(());
    }
    let ip: IpAddr = spec.ip_address.parse().map_err(|_| {
        ApiError::invalid_field("ip_address", "ip_address must be an IPv4 or IPv6 address")
    })?;
    state
        .bot_deny_networks
        .check(ip)
        .map_err(|e| ApiError::invalid_field("ip_address", format!("ip_address: {e}")))
}

/// What a `bot` token may change of the bot it holds: the status. The
/// other fields may be sent (a bot that echoes the object back) but not
/// changed: `403 field_not_allowed` names the first that would.
fn bot_may_change(current: &BotSpec, wanted: &BotSpec) -> Result<(), ApiError> {
    let changed = [
        ("name", current.name != wanted.name),
        (
            "ip_address",
            current.ip_address.parse::<IpAddr>().ok() != wanted.ip_address.parse::<IpAddr>().ok(),
        ),
        ("port", current.port != wanted.port),
        ("delivery", current.delivery != wanted.delivery),
        ("capacity", current.capacity != wanted.capacity),
        ("systems", current.systems != wanted.systems),
        ("tags", current.tags != wanted.tags),
    ];
    match changed.iter().find(|(_, differs)| *differs) {
        None => Ok(()),
        Some((field, _)) => Err(ApiError::field_not_allowed(
            field,
            format!(
                "a bot token may change only its bot's status, not {field}; an admin sets the rest"
            ),
        )),
    }
}

#[utoipa::path(post, path = "/bots", operation_id = "bots_create", tag = "bots", params(super::IdempotencyHeader), request_body = BotBody, responses((status = 201, description = "Created", body = orq_shared::repo::bots::Bot), crate::error::Refusals))]
pub async fn create(
    State(state): State<AppState>,
    who: Authorized<Admins>,
    key: IdemKey,
    Json(body): Json<BotBody>,
) -> Result<Response, ApiError> {
    let request = CreateRequest::of("bots.create", &[], &body);
    if body.name.is_none() {
        return Err(ApiError::invalid_field("name", "name is required"));
    }
    if body.ip_address.is_none() {
        return Err(ApiError::invalid_field(
            "ip_address",
            "ip_address is required",
        ));
    }
    // Bots created over the API are the proof of concept's HTTP bots.
    let spec = apply(
        body,
        BotSpec {
            name: String::new(),
            ip_address: String::new(),
            port: 5000,
            status: BotStatus::Available,
            delivery: Delivery::Http,
            capacity: 1,
            systems: Vec::new(),
            tags: Vec::new(),
        },
    )?;
    check_address(&state, &spec)?;
    let created = create_once(&state, &Caller::token(&who), &key, request, async |tx| {
        let bot = bots::insert(tx, who.customer_id, &spec).await?;
        if bot.delivery == Delivery::Agent {
            service::bots::declare_queue(&state, bot.id).await?;
        }
        Ok(bot)
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
    let bot = state
        .in_transaction(async |tx| {
            let current = bots::get(tx, who.customer_id, id).await?;
            let current = BotSpec {
                name: current.name,
                ip_address: current.ip_address,
                port: current.port,
                status: current.status,
                delivery: current.delivery,
                capacity: current.capacity,
                systems: current.systems,
                tags: current.tags,
            };
            if who.role == Role::Bot
                && bots::holder(tx, who.customer_id, id).await? != Some(who.token_id)
            {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "not_your_bot",
                    format!(
                        "this bot token does not hold bot {id}; an admin issues a bot its own token \
                         (POST /bots/{id}/token, or `gateway admin create-token --role bot --bot <name>`)"
                    ),
                ));
            }
            let spec = apply(body, current.clone())?;
            if who.role == Role::Bot {
                bot_may_change(&current, &spec)?;
            } else if spec.ip_address != current.ip_address || spec.delivery != current.delivery {
                check_address(&state, &spec)?;
            }
            Ok(bots::update(tx, who.customer_id, id, &spec).await?)
        })
        .await?;
    if bot.status == BotStatus::Available {
        service::jobs::wake(&state, who.customer_id, None);
    }
    Ok(axum::Json(bot))
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

async fn set_draining(
    state: AppState,
    who: Authorized<Admins>,
    id: BotId,
    draining: bool,
) -> Result<axum::Json<Bot>, ApiError> {
    let db = state.db().await?;
    let bot = bots::set_draining(&db, who.customer_id, id, draining).await?;
    if !draining {
        service::jobs::wake(&state, who.customer_id, None);
    }
    Ok(axum::Json(bot))
}

/// The bot takes no new work and finishes what it has.
#[utoipa::path(post, path = "/bots/{id}/drain", operation_id = "bots_drain", tag = "bots", params(("id" = uuid::Uuid, Path, description = "The bot's id")), responses((status = 200, description = "OK", body = orq_shared::repo::bots::Bot), crate::error::Refusals))]
pub async fn drain(
    State(state): State<AppState>,
    who: Authorized<Admins>,
    Id(id): Id<BotId>,
) -> Result<axum::Json<Bot>, ApiError> {
    set_draining(state, who, id, true).await
}

#[utoipa::path(post, path = "/bots/{id}/resume", operation_id = "bots_resume", tag = "bots", params(("id" = uuid::Uuid, Path, description = "The bot's id")), responses((status = 200, description = "OK", body = orq_shared::repo::bots::Bot), crate::error::Refusals))]
pub async fn resume(
    State(state): State<AppState>,
    who: Authorized<Admins>,
    Id(id): Id<BotId>,
) -> Result<axum::Json<Bot>, ApiError> {
    set_draining(state, who, id, false).await
}
