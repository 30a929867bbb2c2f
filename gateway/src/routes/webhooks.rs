//! Webhooks: a `callback: {url, user, password}` on a job or a task (seed
//! 004), customer-wide subscriptions, the deliveries the reaper makes (with
//! their attempts, and redelivery), and the customer's signing secret.
//! Passwords are never returned; the secret only to admins.

use axum::extract::State;
use axum::response::Response;
use orq_shared::domain::JobId;
use orq_shared::repo::webhooks::{self, Delivery, DeliveryFilter, Endpoint};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{PageQuery, paged};
use crate::auth::{Admins, Authorized, Viewers};
use crate::error::{ApiError, Json, Query};
use crate::idempotency::{Caller, CreateRequest, IdemKey, create_once};
use crate::ids::{DeliveryId, Id, SubscriptionId};
use crate::service;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// PENDING, DELIVERED or DEAD.
    status: Option<String>,
    /// Only this job's deliveries.
    job_id: Option<String>,
}

/// `GET /webhooks/deliveries?status=&job_id=`.
#[utoipa::path(get, path = "/webhooks/deliveries", operation_id = "webhooks_deliveries", tag = "webhooks", params(DeliveryQuery, super::PageQuery), responses((status = 200, description = "A page of deliveries", body = [orq_shared::repo::webhooks::Delivery], headers(("x-next-cursor" = String, description = "Present when there may be more: pass it back as `?after=`"))), crate::error::Refusals))]
pub async fn deliveries(
    State(state): State<AppState>,
    who: Authorized<Admins>,
    Query(q): Query<DeliveryQuery>,
    Query(paging): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let page = paging.page()?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s @ ("PENDING" | "DELIVERED" | "DEAD")) => Some(s.to_string()),
        Some(other) => {
            return Err(ApiError::invalid_field(
                "status",
                format!("unknown status {other:?}; one of PENDING, DELIVERED, DEAD"),
            ));
        }
    };
    let job = q
        .job_id
        .map(|j| {
            j.parse::<JobId>()
                .map_err(|_| ApiError::invalid_field("job_id", "job_id must be a job id"))
        })
        .transpose()?;
    let db = state.db().await?;
    let items =
        webhooks::deliveries(&db, who.customer_id, &DeliveryFilter { status, job }, page).await?;
    let last = items.last().map(|d| d.id.to_string());
    Ok(paged(items, page, last))
}

/// `GET /webhooks/deliveries/{id}`: with its events and every attempt.
#[utoipa::path(get, path = "/webhooks/deliveries/{id}", operation_id = "webhooks_delivery", tag = "webhooks", params(("id" = uuid::Uuid, Path, description = "The delivery's id")), responses((status = 200, description = "The delivery with its attempts", body = orq_shared::repo::webhooks::Delivery), crate::error::Refusals))]
pub async fn delivery(
    State(state): State<AppState>,
    who: Authorized<Admins>,
    Id(id): Id<DeliveryId>,
) -> Result<axum::Json<Delivery>, ApiError> {
    let db = state.db().await?;
    Ok(axum::Json(
        webhooks::delivery_detail(&db, who.customer_id, id).await?,
    ))
}

/// `POST /webhooks/deliveries/{id}/redeliver` (admin): the same delivery
/// (same `webhook-id`) with a fresh schedule.
#[utoipa::path(post, path = "/webhooks/deliveries/{id}/redeliver", operation_id = "webhooks_redeliver", tag = "webhooks", params(("id" = uuid::Uuid, Path, description = "The delivery's id")), responses((status = 200, description = "Queued again", body = orq_shared::repo::webhooks::Delivery), crate::error::Refusals))]
pub async fn redeliver(
    State(state): State<AppState>,
    who: Authorized<Admins>,
    Id(id): Id<DeliveryId>,
) -> Result<axum::Json<Delivery>, ApiError> {
    let delivery = state
        .in_transaction(async |tx| webhooks::redeliver(tx, who.customer_id, id).await)
        .await?;
    Ok(axum::Json(delivery))
}

/// `GET /webhooks/subscriptions`.
#[utoipa::path(get, path = "/webhooks/subscriptions", operation_id = "webhooks_subscriptions", tag = "webhooks", responses((status = 200, description = "OK", body = [orq_shared::repo::webhooks::Endpoint]), crate::error::Refusals))]
pub async fn subscriptions(
    State(state): State<AppState>,
    who: Authorized<Viewers>,
) -> Result<axum::Json<Vec<Endpoint>>, ApiError> {
    let db = state.db().await?;
    Ok(axum::Json(
        webhooks::subscriptions(&db, who.customer_id).await?,
    ))
}

/// `POST /webhooks/subscriptions` (admin): `{url, user?, password?}`; every
/// event of every job of the customer is delivered there from now on.
#[utoipa::path(post, path = "/webhooks/subscriptions", operation_id = "webhooks_subscribe", tag = "webhooks", params(super::IdempotencyHeader), request_body = service::webhooks::SubscriptionBody, responses((status = 201, description = "Subscribed", body = orq_shared::repo::webhooks::Endpoint), crate::error::Refusals))]
pub async fn subscribe(
    State(state): State<AppState>,
    who: Authorized<Admins>,
    key: IdemKey,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    let new = service::webhooks::parse_endpoint(&state, "subscription", &body)?;
    let request = CreateRequest::of("webhooks.subscribe", &[], &body);
    let created = create_once(&state, &Caller::token(&who), &key, request, async |tx| {
        Ok(
            webhooks::create_endpoint(tx, who.customer_id, "subscription", &new, &state.sealer)
                .await?,
        )
    })
    .await?;
    Ok(created.respond())
}

/// `DELETE /webhooks/subscriptions/{id}` (admin): disables it.
#[utoipa::path(delete, path = "/webhooks/subscriptions/{id}", operation_id = "webhooks_unsubscribe", tag = "webhooks", params(("id" = uuid::Uuid, Path, description = "The subscription's id")), responses((status = 200, description = "Removed", body = orq_shared::repo::webhooks::Endpoint), crate::error::Refusals))]
pub async fn unsubscribe(
    State(state): State<AppState>,
    who: Authorized<Admins>,
    Id(id): Id<SubscriptionId>,
) -> Result<axum::Json<Endpoint>, ApiError> {
    let db = state.db().await?;
    Ok(axum::Json(
        webhooks::disable_endpoint(&db, Some(who.customer_id), id, "disabled by an admin").await?,
    ))
}

/// `GET /webhooks/secret` (admin): the secret deliveries are signed with.
#[utoipa::path(get, path = "/webhooks/secret", operation_id = "webhooks_secret", tag = "webhooks", responses((status = 200, description = "The signing secret", body = Object), crate::error::Refusals))]
pub async fn secret(
    State(state): State<AppState>,
    who: Authorized<Admins>,
) -> Result<axum::Json<Value>, ApiError> {
    let db = state.db().await?;
    let secret = webhooks::signing_secret(&db, who.customer_id, &state.sealer).await?;
    Ok(axum::Json(json!({ "secret": secret })))
}

/// `POST /webhooks/secret/rotate` (admin).
#[utoipa::path(post, path = "/webhooks/secret/rotate", operation_id = "webhooks_rotate_secret", tag = "webhooks", responses((status = 200, description = "The new signing secret", body = Object), crate::error::Refusals))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    who: Authorized<Admins>,
) -> Result<axum::Json<Value>, ApiError> {
    let db = state.db().await?;
    let secret = webhooks::rotate_signing_secret(&db, who.customer_id, &state.sealer).await?;
    Ok(axum::Json(json!({ "secret": secret })))
}
