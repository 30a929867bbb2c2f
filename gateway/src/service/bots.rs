//! Bots: what the admin's and the agent's routes do to one — reading a
//! bot's fields (with what a bot's own token may change of them), creating
//! and changing one, draining it, and making sure its queue exists before
//! any work is sent to it.

use deadpool_postgres::GenericClient;
use orq_shared::broker::Topology;
use orq_shared::deny::DenyList;
use orq_shared::domain::{BotId, BotStatus, Delivery, Role};
use orq_shared::field::FieldError;
use orq_shared::messages::Control;
use orq_shared::repo::RepoError;
use orq_shared::repo::bots::{self, Bot, BotSpec};
use orq_shared::repo::customers::Principal;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use uuid::Uuid;

use super::fields::{optional_enum, text_field};
use super::jobs;
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bot's queue could not be declared: RabbitMQ is away.
    #[error("RabbitMQ is unavailable; retry shortly")]
    BrokerUnavailable,
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// A bot token asked to change a field other than its bot's status.
    #[error("a bot token may change only its bot's status, not {0}; an admin sets the rest")]
    NotItsToChange(&'static str),
    /// A bot token that does not hold the bot it changes.
    #[error(
        "this bot token does not hold bot {0}; an admin issues a bot its own token \
         (POST /bots/{0}/token, or `gateway admin create-token --role bot --bot <name>`)"
    )]
    NotYourBot(BotId),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// Every field optional: `POST` fills defaults, `PUT` keeps current values
/// (a legacy bot sends just `{"status": "BUSY"}`).
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
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

fn not_an_address() -> FieldError {
    FieldError::new("ip_address", "ip_address must be an IPv4 or IPv6 address")
}

/// `base` with the fields `body` gives, each checked.
pub fn apply(body: BotBody, base: BotSpec) -> Result<BotSpec, FieldError> {
    let name = match body.name {
        Some(n) => text_field("name", &n, 200)?,
        None => base.name,
    };
    let ip_address = match body.ip_address {
        Some(ip) => {
            let ip = ip.trim().to_string();
            ip.parse::<IpAddr>().map_err(|_| not_an_address())?;
            ip
        }
        None => base.ip_address,
    };
    let port = body.port.unwrap_or(base.port);
    if !(1..=65535).contains(&port) {
        return Err(FieldError::new("port", "port must be between 1 and 65535"));
    }
    let status = optional_enum("status", body.status.as_deref())?.unwrap_or(base.status);
    let delivery = optional_enum("delivery", body.delivery.as_deref())?.unwrap_or(base.delivery);
    let capacity = body.capacity.unwrap_or(base.capacity);
    if !(1..=1000).contains(&capacity) {
        return Err(FieldError::new(
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

/// A new bot from `body`: `name` and `ip_address` are required, the rest
/// defaults. Bots created over the API are the proof of concept's HTTP
/// bots.
pub fn new_spec(body: BotBody) -> Result<BotSpec, FieldError> {
    if body.name.is_none() {
        return Err(FieldError::new("name", "name is required"));
    }
    if body.ip_address.is_none() {
        return Err(FieldError::new("ip_address", "ip_address is required"));
    }
    apply(
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
    )
}

/// An HTTP bot's delivery address must be outside `deny`
/// (`security.bot_deny_networks`).
pub fn check_address(deny: &DenyList, spec: &BotSpec) -> Result<(), FieldError> {
    if spec.delivery != Delivery::Http {
        return Ok(());
    }
    let ip: IpAddr = spec.ip_address.parse().map_err(|_| not_an_address())?;
    deny.check(ip)
        .map_err(|e| FieldError::new("ip_address", format!("ip_address: {e}")))
}

/// What a `bot` token may change of the bot it holds: the status. The
/// other fields may be sent (a bot that echoes the object back) but not
/// changed: the refusal names the first that would.
pub fn bot_may_change(current: &BotSpec, wanted: &BotSpec) -> Result<(), Error> {
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
        Some((field, _)) => Err(Error::NotItsToChange(field)),
    }
}

/// A new spec, checked (see `new_spec`, `check_address`): what the create
/// route checks before its transaction.
pub fn check_new(state: &AppState, body: BotBody) -> Result<BotSpec, Error> {
    let spec = new_spec(body)?;
    check_address(&state.bot_deny_networks, &spec)?;
    Ok(spec)
}

/// Creates a bot in the caller's transaction, and its queue when it is an
/// agent. The caller wakes the dispatchers once it is committed.
pub async fn create(
    state: &AppState,
    tx: &impl GenericClient,
    who: &Principal,
    spec: &BotSpec,
) -> Result<Bot, Error> {
    let bot = bots::insert(tx, who.customer_id, spec).await?;
    if bot.delivery == Delivery::Agent {
        declare_queue(state, bot.id).await?;
    }
    Ok(bot)
}

/// Changes a bot: an admin any field (an HTTP bot's new address checked),
/// a bot token only the status of the bot it holds. Wakes the dispatchers
/// when the bot is then AVAILABLE.
pub async fn update(
    state: &AppState,
    who: &Principal,
    id: BotId,
    body: BotBody,
) -> Result<Bot, Error> {
    let customer = who.customer_id;
    let bot = state
        .in_transaction(async |tx| {
            let current = bots::get(tx, customer, id).await?;
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
            if who.role == Role::Bot && bots::holder(tx, customer, id).await? != Some(who.token_id)
            {
                return Err(Error::NotYourBot(id));
            }
            let spec = apply(body, current.clone())?;
            if who.role == Role::Bot {
                bot_may_change(&current, &spec)?;
            } else if spec.ip_address != current.ip_address || spec.delivery != current.delivery {
                check_address(&state.bot_deny_networks, &spec)?;
            }
            Ok(bots::update(tx, customer, id, &spec).await?)
        })
        .await?;
    if bot.status == BotStatus::Available {
        jobs::wake(state, customer, None);
    }
    Ok(bot)
}

/// Drains a bot (it takes no new work and finishes what it has) or
/// resumes it; a resumed bot wakes the dispatchers.
pub async fn set_draining(
    state: &AppState,
    who: &Principal,
    id: BotId,
    draining: bool,
) -> Result<Bot, Error> {
    let db = state.db().await?;
    let bot = bots::set_draining(&db, who.customer_id, id, draining).await?;
    if bot.delivery == Delivery::Agent {
        // The agent gives back what it holds unstarted (its prefetch) at
        // once. An agent that misses this still takes nothing new.
        let message = Control::Drain {
            id: Uuid::now_v7(),
            draining,
        };
        tell_agent(state, bot.id, &message).await;
    }
    if !draining {
        jobs::wake(state, who.customer_id, None);
    }
    Ok(bot)
}

/// Publishes `message` to the agent's control queue. Best effort: an agent
/// that is not connected misses it (and is told nothing it cannot learn
/// otherwise: a canceled job's next report is refused, a drained bot gets
/// no new work).
pub async fn tell_agent(state: &AppState, bot: BotId, message: &Control) {
    let key = Topology::control_key(bot);
    if let Err(e) = state.broker.publish_json(&key, message.id(), message).await {
        tracing::warn!(error = %e, %bot, "control message not delivered to the agent");
    }
}

/// Declares a bot's queue.
pub async fn declare_queue(state: &AppState, bot: BotId) -> Result<(), Error> {
    let Some(session) = state.broker.current() else {
        return Err(Error::BrokerUnavailable);
    };
    let declared = async {
        let ch = session.channel().await?;
        session.topology().declare_bot_queue(&ch, bot).await?;
        let _ = ch.close(200, "done".into()).await;
        Ok::<_, orq_shared::broker::BrokerError>(())
    };
    declared.await.map_err(|e| {
        tracing::warn!(error = %e, %bot, "declaring bot queue failed");
        Error::BrokerUnavailable
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BotSpec {
        BotSpec {
            name: "b1".into(),
            ip_address: "10.0.0.1".into(),
            port: 5000,
            status: BotStatus::Available,
            delivery: Delivery::Http,
            capacity: 1,
            systems: vec!["sap".into()],
            tags: Vec::new(),
        }
    }

    #[test]
    fn a_body_changes_only_the_fields_it_gives() {
        let base = spec();
        let same = apply(BotBody::default(), base.clone()).expect("nothing given");
        assert_eq!(format!("{same:?}"), format!("{base:?}"));
        let body = BotBody {
            name: Some("  b2 ".into()),
            capacity: Some(3),
            status: Some("BUSY".into()),
            ..BotBody::default()
        };
        let changed = apply(body, base).expect("valid");
        assert_eq!(changed.name, "b2");
        assert_eq!(changed.capacity, 3);
        assert_eq!(changed.status, BotStatus::Busy);
        assert_eq!(changed.ip_address, "10.0.0.1");
    }

    #[test]
    fn a_body_out_of_bounds_names_its_field() {
        let cases = [
            (
                BotBody {
                    ip_address: Some("x".into()),
                    ..BotBody::default()
                },
                "ip_address",
            ),
            (
                BotBody {
                    port: Some(0),
                    ..BotBody::default()
                },
                "port",
            ),
            (
                BotBody {
                    capacity: Some(1001),
                    ..BotBody::default()
                },
                "capacity",
            ),
            (
                BotBody {
                    delivery: Some("pigeon".into()),
                    ..BotBody::default()
                },
                "delivery",
            ),
            (
                BotBody {
                    tags: Some(vec![" ".into()]),
                    ..BotBody::default()
                },
                "tags",
            ),
        ];
        for (body, field) in cases {
            assert_eq!(apply(body, spec()).expect_err(field).field, field);
        }
    }

    #[test]
    fn a_new_bot_needs_a_name_and_an_address_and_is_an_http_bot() {
        let e = new_spec(BotBody::default()).expect_err("no name");
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("name", "name is required")
        );
        let e = new_spec(BotBody {
            name: Some("b".into()),
            ..BotBody::default()
        })
        .expect_err("no address");
        assert_eq!(e.field, "ip_address");
        let new = new_spec(BotBody {
            name: Some("b".into()),
            ip_address: Some("10.0.0.2".into()),
            ..BotBody::default()
        })
        .expect("valid");
        assert_eq!(
            (new.port, new.capacity, new.delivery),
            (5000, 1, Delivery::Http)
        );
    }

    #[test]
    fn only_an_http_bot_address_is_checked_against_the_deny_list() {
        let deny =
            DenyList::parse("security.bot_deny_networks", &["10.0.0.0/8".into()]).expect("list");
        let e = check_address(&deny, &spec()).expect_err("denied");
        assert_eq!(e.field, "ip_address");
        assert!(e.message.starts_with("ip_address: "), "{}", e.message);
        let agent = BotSpec {
            delivery: Delivery::Agent,
            ..spec()
        };
        assert!(check_address(&deny, &agent).is_ok());
        let outside = BotSpec {
            ip_address: "192.0.2.1".into(),
            ..spec()
        };
        assert!(check_address(&deny, &outside).is_ok());
    }

    #[test]
    fn a_bot_changes_its_status_and_nothing_else() {
        let current = spec();
        let busy = BotSpec {
            status: BotStatus::Busy,
            ..spec()
        };
        assert!(bot_may_change(&current, &busy).is_ok());
        // The same address, written otherwise, is no change.
        let v6 = BotSpec {
            ip_address: "::1".into(),
            ..spec()
        };
        let v6_long = BotSpec {
            ip_address: "0:0:0:0:0:0:0:1".into(),
            ..spec()
        };
        assert!(bot_may_change(&v6, &v6_long).is_ok());
        let cases = [
            (
                BotSpec {
                    name: "x".into(),
                    ..spec()
                },
                "name",
            ),
            (
                BotSpec {
                    ip_address: "10.0.0.9".into(),
                    ..spec()
                },
                "ip_address",
            ),
            (BotSpec { port: 1, ..spec() }, "port"),
            (
                BotSpec {
                    delivery: Delivery::Agent,
                    ..spec()
                },
                "delivery",
            ),
            (
                BotSpec {
                    capacity: 2,
                    ..spec()
                },
                "capacity",
            ),
            (
                BotSpec {
                    systems: Vec::new(),
                    ..spec()
                },
                "systems",
            ),
            (
                BotSpec {
                    tags: vec!["t".into()],
                    ..spec()
                },
                "tags",
            ),
        ];
        for (wanted, field) in cases {
            match bot_may_change(&current, &wanted) {
                Err(Error::NotItsToChange(f)) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert_eq!(
            Error::NotItsToChange("port").to_string(),
            "a bot token may change only its bot's status, not port; an admin sets the rest"
        );
    }
}
