//! The native API of bot-agents: registration.

use axum::extract::State;
use orq_shared::repo::bots::{self, Bot, Registration};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

use super::text_field;
use crate::auth::{Authorized, Bots};
use crate::error::{ApiError, Json};
use crate::service;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RegisterBody {
    name: String,
    ip_address: String,
    capacity: i32,
    /// Assignments it may hold beyond `capacity`, unstarted (0-1000).
    #[serde(default)]
    prefetch: i32,
    #[serde(default)]
    systems: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Registered {
    #[serde(flatten)]
    bot: Bot,
    customer_id: orq_shared::domain::CustomerId,
    /// The queue the agent consumes.
    queue: String,
}

/// Creates the agent's bot (or takes over the bot of that name) and makes
/// sure its queue exists before any work is sent to it.
#[utoipa::path(post, path = "/agent/register", operation_id = "agent_register", tag = "agent", request_body = RegisterBody, responses((status = 200, description = "The bot and its queue", body = Registered), crate::error::Refusals))]
pub async fn register(
    State(state): State<AppState>,
    who: Authorized<Bots>,
    Json(body): Json<RegisterBody>,
) -> Result<axum::Json<Registered>, ApiError> {
    let name = text_field("name", &body.name, 200)?;
    body.ip_address
        .parse::<IpAddr>()
        .map_err(|_| ApiError::invalid_field("ip_address", "ip_address must be an IP address"))?;
    if !(1..=1000).contains(&body.capacity) {
        return Err(ApiError::invalid_field(
            "capacity",
            "capacity must be between 1 and 1000",
        ));
    }
    if !(0..=1000).contains(&body.prefetch) {
        return Err(ApiError::invalid_field(
            "prefetch",
            "prefetch must be between 0 and 1000",
        ));
    }
    let systems = body
        .systems
        .iter()
        .map(|s| text_field("systems", s, 200))
        .collect::<Result<Vec<_>, _>>()?;
    let reg = Registration {
        name,
        ip_address: body.ip_address,
        capacity: body.capacity,
        prefetch: body.prefetch,
        systems,
        tags: body.tags,
    };
    let bot = state
        .in_transaction(async |tx| {
            let bot = bots::register_agent(tx, who.customer_id, &reg, who.token_id).await?;
            // The queue exists before the bot can be matched: a job assigned
            // to it the moment the registration commits has somewhere to go.
            service::bots::declare_queue(&state, bot.id).await?;
            Ok::<_, ApiError>(bot)
        })
        .await?;
    service::jobs::wake(&state, who.customer_id, None);
    Ok(axum::Json(Registered {
        queue: state.broker.topology().bot_queue(bot.id),
        customer_id: who.customer_id,
        bot,
    }))
}
