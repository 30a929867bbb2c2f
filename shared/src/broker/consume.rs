//! The one consume loop. It opens a consumer on the live session, hands
//! each delivery (or each batch of what is ready) to a handler, and when
//! the consumer ends (the connection was lost: the supervisor reconnects
//! with backoff) opens it again on the next session, until shutdown.
//! Acking is the handler's, so it can ack after its commit.

use futures::FutureExt;
use lapin::Consumer;
use lapin::message::Delivery;
use lapin::options::BasicRejectOptions;
use serde::de::DeserializeOwned;
use std::ops::ControlFlow;
use tokio_util::sync::CancellationToken;

use super::{Broker, BrokerError, Session};
use crate::domain::BotId;

/// How a consumer is opened on a session.
pub trait Open {
    /// Names the consumer in logs.
    fn name(&self) -> String;

    fn open(
        &self,
        session: &Session,
    ) -> impl Future<Output = Result<Subscription, BrokerError>> + Send;
}

/// An open consumer, and what must live exactly as long as it.
pub struct Subscription {
    consumer: Consumer,
    /// Consumers held, never read, while this one lasts (an agent's
    /// presence: the consumer itself is the signal).
    _held: Vec<Consumer>,
}

impl From<Consumer> for Subscription {
    fn from(consumer: Consumer) -> Self {
        Subscription {
            consumer,
            _held: Vec::new(),
        }
    }
}

/// A durable queue, `prefetch` unacked deliveries at most.
pub struct Queue {
    pub name: String,
    pub prefetch: u16,
}

impl Open for Queue {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn open(&self, session: &Session) -> Result<Subscription, BrokerError> {
        Ok(session.consume(&self.name, self.prefetch).await?.into())
    }
}

/// An agent's control messages, with its presence held beside them (both
/// on every connection, for as long as the connection lasts).
pub struct AgentControl(pub BotId);

impl Open for AgentControl {
    fn name(&self) -> String {
        format!("control-{}", self.0)
    }

    async fn open(&self, session: &Session) -> Result<Subscription, BrokerError> {
        let presence = session.hold_presence(self.0).await?;
        let control = session.consume_control(self.0).await?;
        Ok(Subscription {
            consumer: control,
            _held: vec![presence],
        })
    }
}

/// Consumes one delivery at a time until shutdown or until `handle`
/// breaks.
pub async fn consume<O, F, Fut>(
    broker: &Broker,
    open: O,
    shutdown: &CancellationToken,
    mut handle: F,
) where
    O: Open,
    F: FnMut(Delivery) -> Fut,
    Fut: Future<Output = ControlFlow<()>>,
{
    consume_batches(broker, open, 1, shutdown, |batch| {
        // One delivery per batch: one future.
        let each: Vec<Fut> = batch.into_iter().map(&mut handle).collect();
        async move {
            for f in each {
                f.await?;
            }
            ControlFlow::Continue(())
        }
    })
    .await
}

/// Consumes batches until shutdown or until `handle` breaks: each batch is
/// the next delivery and whatever else is ready then, `batch_max` at most
/// (it never waits for more).
pub async fn consume_batches<O, F, Fut>(
    broker: &Broker,
    open: O,
    batch_max: usize,
    shutdown: &CancellationToken,
    mut handle: F,
) where
    O: Open,
    F: FnMut(Vec<Delivery>) -> Fut,
    Fut: Future<Output = ControlFlow<()>>,
{
    let batch_max = batch_max.max(1);
    let mut last = None;
    loop {
        let (session, mut sub) = tokio::select! {
            s = subscribe(broker, &open, &mut last) => s,
            _ = shutdown.cancelled() => return,
        };
        loop {
            let first = tokio::select! {
                d = session.next(&mut sub.consumer) => d,
                _ = shutdown.cancelled() => return,
            };
            let Some(first) = first else {
                break;
            };
            let mut batch = vec![first];
            while batch.len() < batch_max {
                match session.next(&mut sub.consumer).now_or_never() {
                    Some(Some(d)) => batch.push(d),
                    _ => break,
                }
            }
            if handle(batch).await.is_break() {
                return;
            }
        }
    }
}

/// Opens the consumer on the first live session newer than `*last` (the
/// one whose consumer just ended), retrying on each new session until it
/// works; records the session's generation in `*last`.
async fn subscribe<O: Open>(
    broker: &Broker,
    open: &O,
    last: &mut Option<u64>,
) -> (Session, Subscription) {
    loop {
        let session = broker.session_after(*last).await;
        *last = Some(session.generation());
        match open.open(&session).await {
            Ok(sub) => {
                tracing::info!(consumer = %open.name(), "consuming");
                return (session, sub);
            }
            Err(e) => {
                tracing::warn!(error = %e, consumer = %open.name(), "cannot consume");
                session.report_failure();
            }
        }
    }
}

/// A delivery's JSON body; a malformed one is dead-lettered (`what` names
/// it in the log). Not for consumers without acks (controls).
pub async fn decode<T: DeserializeOwned>(delivery: &Delivery, what: &str) -> Option<T> {
    match serde_json::from_slice(&delivery.data) {
        Ok(message) => Some(message),
        Err(e) => {
            tracing::warn!(error = %e, what, "malformed message dead-lettered");
            let _ = delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await;
            None
        }
    }
}
