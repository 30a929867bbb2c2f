//! HTTP routes, split by area. A route file never imports another: what
//! several share is here (paging, text fields, the OpenAPI document's
//! shared parameters) or in `crate::service`.

pub mod activity;
pub mod agent;
pub mod bots;
pub mod dashboard;
pub mod feed;
pub mod health;
pub mod human;
pub mod jobs;
pub mod overview;
pub mod photos;
pub mod scripts;
pub mod session;
pub mod task_defs;
pub mod tasks;
pub mod webhooks;

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use orq_shared::repo::Page;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;
use crate::service::fields;
use orq_shared::domain::Role;
use orq_shared::repo::customers::Principal;
use orq_shared::repo::task_defs::Reader;

/// How a caller reads task definitions: admins see all, others what the
/// tasks' `acls` allow them.
pub fn reader(who: &Principal) -> Reader<'_> {
    if who.role == Role::Admin {
        Reader::Admin
    } else {
        Reader::Named(who.name.as_deref())
    }
}

/// `{customer}` in a path, as the OpenAPI document shows it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct CustomerPath {
    /// The customer's name
    customer: String,
}

/// `Idempotency-Key` on every create, as the OpenAPI document shows it
/// (see `crate::idempotency`).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IdempotencyHeader {
    /// Repeat a request safely
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

/// `?sofier=` where it is only checked, as the OpenAPI document shows it
/// (`human::SofierQuery` where `name` is read too).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SofierParam {
    /// The worker's e-mail (the seed's); when given it must be the token's
    sofier: Option<String>,
}

/// `?tags=a,b`: only what carries every one of these labels.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LabelQuery {
    /// Labels, comma-separated: only items carrying every one.
    pub tags: Option<String>,
}

impl LabelQuery {
    pub fn labels(&self) -> Result<Vec<String>, ApiError> {
        Ok(fields::labels(self.tags.as_deref().unwrap_or_default())?)
    }
}

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// `?limit=&after=&order=` on every list.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// At most this many items (1-1000, default 100).
    pub limit: Option<i64>,
    /// The `X-Next-Cursor` of the previous page.
    pub after: Option<Uuid>,
    /// `asc` (oldest first, the default) or `desc` (newest first).
    pub order: Option<String>,
}

impl PageQuery {
    pub fn page(&self) -> Result<Page, ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::invalid_field(
                "limit",
                format!("limit must be between 1 and {MAX_LIMIT}"),
            ));
        }
        let newest_first = match self.order.as_deref() {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(other) => {
                return Err(ApiError::invalid_field(
                    "order",
                    format!("order must be asc or desc, not {other:?}"),
                ));
            }
        };
        Ok(Page {
            limit,
            after: self.after,
            newest_first,
        })
    }
}

/// A page of items as a plain JSON array (what the proof of concept's
/// clients expect), with `X-Next-Cursor` set when there may be more: pass it
/// back as `?after=`.
pub fn paged<T: Serialize>(items: Vec<T>, page: Page, last_id: Option<String>) -> Response {
    let full = items.len() as i64 == page.limit;
    let mut response = axum::Json(items).into_response();
    if full
        && let Some(id) = last_id
        && let Ok(value) = HeaderValue::from_str(&id)
    {
        response.headers_mut().insert("x-next-cursor", value);
    }
    response
}

/// An optional field naming one value of a text enum (a status, a mode):
/// `None` when absent, a 400 naming `field` when it is no such value.
pub fn optional_enum<T>(field: &str, value: Option<&str>) -> Result<Option<T>, ApiError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    Ok(fields::optional_enum(field, value)?)
}

/// Reads a non-empty, trimmed text field of bounded length.
pub fn text_field(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    Ok(fields::text_field(field, value, max)?)
}

/// A file name to write on the bot: one path component, nothing special.
pub fn check_filename(name: &str) -> Result<String, ApiError> {
    Ok(fields::check_filename(name)?)
}
