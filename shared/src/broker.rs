//! RabbitMQ: the topology, declared in one place, and a supervisor that keeps
//! a connection alive.
//!
//! lapin's own recovery is young, so the supervisor does it: connect with
//! backoff, declare the topology, open a confirming publisher channel, publish
//! the session on a `watch` channel, and when the connection dies, withdraw it
//! and start over. Consumers go through the one loop in `consume`, which
//! opens them again on each new session.
//!
//! `amqp.url` may list several nodes of a cluster: each process starts at a
//! node of its own (so the copies of a service spread over the cluster) and
//! moves to the next node whenever a connection fails or is lost.

mod consume;

pub use consume::{AgentControl, Open, Queue, Subscription, consume, consume_batches, decode};

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{AmqpSettings, redact_url};
use crate::domain::BotId;

/// Names of every exchange and queue, derived from one prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
}

/// Routing keys on the work exchange.
pub const KEY_INTAKE: &str = "intake";
pub const KEY_REPORTS: &str = "reports";
pub const KEY_FINISH: &str = "finish";

/// A message that keeps failing is dead-lettered after this many deliveries
/// instead of looping forever (quorum queues count them).
const DELIVERY_LIMIT: i64 = 20;

impl Topology {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// The direct exchange all work goes through.
    pub fn work_exchange(&self) -> String {
        format!("{}.work", self.prefix)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Wake-ups from the gateway to the dispatchers, as services before
    /// PostgreSQL NOTIFY carried them sent them (drained, no longer fed).
    pub fn intake_queue(&self) -> String {
        format!("{}.dispatcher.intake", self.prefix)
    }

    /// Reports from bots to the dispatchers.
    pub fn reports_queue(&self) -> String {
        format!("{}.dispatcher.reports", self.prefix)
    }

    /// Micro-task finish submissions, from the gateway to the dispatchers.
    pub fn finish_queue(&self) -> String {
        format!("{}.dispatcher.finish", self.prefix)
    }

    pub fn bot_queue(&self, bot: BotId) -> String {
        format!("{}.bot.{}", self.prefix, bot)
    }

    pub fn bot_key(bot: BotId) -> String {
        format!("bot.{bot}")
    }

    /// A queue an agent consumes on every connection, for as long as the
    /// agent lives: it has a consumer exactly while that agent is connected
    /// (RabbitMQ drops a consumer the moment its connection closes, and
    /// sees a vanished machine within two AMQP heartbeats). The reaper
    /// reads its consumer count as evidence.
    pub fn presence_queue(&self, bot: BotId) -> String {
        format!("{}.presence.{}", self.prefix, bot)
    }

    /// Routing key of an agent's control messages (cancel a running job).
    pub fn control_key(bot: BotId) -> String {
        format!("control.{bot}")
    }

    fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange().into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        args
    }

    async fn declare_queue(&self, ch: &Channel, queue: &str, key: &str) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(queue.into(), durable, self.queue_args())
            .await?;
        ch.queue_bind(
            queue.into(),
            self.work_exchange().into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    }

    /// Declares everything the services share. Idempotent: every service calls
    /// it at every (re)connect.
    pub async fn declare(&self, ch: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            self.work_exchange().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            self.dead_letter_exchange().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
        let mut dead_args = FieldTable::default();
        dead_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        ch.queue_declare(
            self.dead_letter_queue().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            dead_args,
        )
        .await?;
        ch.queue_bind(
            self.dead_letter_queue().into(),
            self.dead_letter_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        self.declare_queue(ch, &self.intake_queue(), KEY_INTAKE)
            .await?;
        self.declare_queue(ch, &self.reports_queue(), KEY_REPORTS)
            .await?;
        self.declare_queue(ch, &self.finish_queue(), KEY_FINISH)
            .await
    }

    /// Declares a bot's presence queue (a quorum queue, so it outlives a
    /// broker node; no binding, nothing is published to it).
    async fn presence_declare(&self, ch: &Channel, bot: BotId) -> lapin::Result<lapin::Queue> {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        ch.queue_declare(
            self.presence_queue(bot).into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
    }

    pub async fn declare_presence_queue(&self, ch: &Channel, bot: BotId) -> lapin::Result<String> {
        self.presence_declare(ch, bot).await?;
        Ok(self.presence_queue(bot))
    }

    /// A bot's own queue. Declared by whoever registers the bot and by the
    /// agent itself, so work can wait for an agent that is not up yet.
    pub async fn declare_bot_queue(&self, ch: &Channel, bot: BotId) -> lapin::Result<()> {
        self.declare_queue(ch, &self.bot_queue(bot), &Self::bot_key(bot))
            .await
    }

    /// Removes everything `declare` made plus the given bots' queues: for
    /// tests and benchmarks that use a private prefix.
    pub async fn teardown(&self, ch: &Channel, bots: &[BotId]) -> lapin::Result<()> {
        let mut queues = vec![
            self.intake_queue(),
            self.reports_queue(),
            self.finish_queue(),
            self.dead_letter_queue(),
        ];
        queues.extend(bots.iter().map(|b| self.bot_queue(*b)));
        queues.extend(bots.iter().map(|b| self.presence_queue(*b)));
        for q in queues {
            ch.queue_delete(q.into(), QueueDeleteOptions::default())
                .await?;
        }
        for e in [self.work_exchange(), self.dead_letter_exchange()] {
            ch.exchange_delete(e.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("not connected to RabbitMQ")]
    NotConnected,
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for routing key {0:?}")]
    Unroutable(String),
    #[error("encoding message: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One live connection with its confirming publisher channel.
#[derive(Clone)]
pub struct Session {
    connection: Arc<Connection>,
    publisher: Channel,
    generation: u64,
    topology: Topology,
    /// Cancelled when the supervisor sees this connection die.
    lost: CancellationToken,
}

impl Session {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A new channel consuming `queue` with `prefetch` unacked messages at most.
    pub async fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer, BrokerError> {
        let ch = self.connection.create_channel().await?;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let tag = format!("{}-{}", queue, Uuid::now_v7());
        Ok(ch
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?)
    }

    /// The consumer's next delivery; `None` when the consumer ended or failed
    /// (a failure is reported, so the supervisor reconnects).
    pub async fn next(&self, consumer: &mut Consumer) -> Option<lapin::message::Delivery> {
        use futures::StreamExt;
        match consumer.next().await {
            Some(Ok(delivery)) => Some(delivery),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer failed");
                self.report_failure();
                None
            }
            None => None,
        }
    }

    /// Consumes an agent's control messages: a queue exclusive to this
    /// connection (gone with it), bound to the bot's control key. A control
    /// message sent while the agent is away has nowhere to go, which is
    /// right: it is about work that agent is running now.
    pub async fn consume_control(&self, bot: BotId) -> Result<Consumer, BrokerError> {
        let ch = self.connection.create_channel().await?;
        let queue = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        ch.queue_bind(
            queue.name().clone(),
            self.topology.work_exchange().into(),
            Topology::control_key(bot).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(ch
            .basic_consume(
                queue.name().clone(),
                format!("control-{bot}").into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?)
    }

    /// Consumes this bot's presence queue on this connection (see
    /// `Topology::presence_queue`); nothing is ever sent there: the
    /// consumer itself is the signal, and it lasts as long as the channel.
    pub async fn hold_presence(&self, bot: BotId) -> Result<Consumer, BrokerError> {
        let ch = self.connection.create_channel().await?;
        let queue = self.topology.declare_presence_queue(&ch, bot).await?;
        Ok(ch
            .basic_consume(
                queue.into(),
                format!("presence-{bot}").into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?)
    }

    /// Whether each bot's agent is connected now (its presence queue has a
    /// consumer). Declares a missing queue rather than looking for it
    /// passively: a refusal would close the channel.
    pub async fn presence(&self, bots: &[BotId]) -> Result<Vec<(BotId, bool)>, BrokerError> {
        let ch = self.connection.create_channel().await?;
        let mut out = Vec::with_capacity(bots.len());
        for bot in bots {
            let q = self.topology.presence_declare(&ch, *bot).await?;
            out.push((*bot, q.consumer_count() > 0));
        }
        let _ = ch.close(200, "done".into()).await;
        Ok(out)
    }

    /// Messages ready in `queue` (a passive declare: it must exist).
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        let ch = self.connection.create_channel().await?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = ch.close(200, "done".into()).await;
        Ok(q?.message_count())
    }

    /// A plain channel, e.g. for declaring a bot's queue.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        Ok(self.connection.create_channel().await?)
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Resolves when this session's connection is gone.
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }

    /// Tells the supervisor this session failed (a consumer saw an error), so
    /// it reconnects without waiting for its own checks.
    pub fn report_failure(&self) {
        self.lost.cancel();
    }

    /// Publishes persistently to the work exchange and waits for the broker's
    /// confirm. `mandatory`: a message no queue takes comes back as an error.
    pub async fn publish_json<T: Serialize>(
        &self,
        key: &str,
        message_id: Uuid,
        body: &T,
    ) -> Result<(), BrokerError> {
        self.send_json(key, message_id, body)
            .await?
            .confirmed()
            .await
    }

    /// Publishes without waiting for the confirm: the returned handle waits
    /// for it. Messages sent on one session keep their order, so a caller
    /// can send several and await the confirms together.
    pub async fn send_json<T: Serialize>(
        &self,
        key: &str,
        message_id: Uuid,
        body: &T,
    ) -> Result<Pending, BrokerError> {
        self.send_bytes(key, message_id, &serde_json::to_vec(body)?)
            .await
    }

    /// `send_json` of a body already serialized (JSON).
    pub async fn send_bytes(
        &self,
        key: &str,
        message_id: Uuid,
        payload: &[u8],
    ) -> Result<Pending, BrokerError> {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(ShortString::from(message_id.to_string()));
        let confirm = self
            .publisher
            .basic_publish(
                self.topology.work_exchange().into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                payload,
                props,
            )
            .await;
        match confirm {
            Ok(confirm) => Ok(Pending {
                confirm,
                key: key.to_string(),
            }),
            Err(e) => {
                self.report_failure();
                Err(e.into())
            }
        }
    }
}

/// A sent message whose confirm has not been awaited yet.
pub struct Pending {
    confirm: lapin::PublisherConfirm,
    key: String,
}

impl Pending {
    pub async fn confirmed(self) -> Result<(), BrokerError> {
        match self.confirm.await? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(self.key)),
            Confirmation::Nack(_) => Err(BrokerError::Nacked),
        }
    }
}

/// A handle to the supervised connection. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    sessions: watch::Receiver<Option<Session>>,
    topology: Topology,
}

static GENERATION: AtomicU64 = AtomicU64::new(0);

impl Broker {
    /// Starts the supervisor; it runs until `shutdown` is cancelled.
    /// `name` shows in RabbitMQ's connection list.
    pub fn start(settings: &AmqpSettings, name: &str, shutdown: CancellationToken) -> Broker {
        Self::start_with_bots(settings, name, &[], shutdown)
    }

    /// Like `start`, also declaring these bots' queues at every connect (an
    /// agent's own queue exists before it consumes it).
    pub fn start_with_bots(
        settings: &AmqpSettings,
        name: &str,
        bots: &[BotId],
        shutdown: CancellationToken,
    ) -> Broker {
        let (tx, rx) = watch::channel(None);
        let topology = Topology::new(&settings.prefix);
        tokio::spawn(supervise(
            settings.clone(),
            name.to_string(),
            topology.clone(),
            bots.to_vec(),
            tx,
            shutdown,
        ));
        Broker {
            sessions: rx,
            topology,
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The current session, if connected.
    pub fn current(&self) -> Option<Session> {
        self.sessions.borrow().clone()
    }

    pub fn is_connected(&self) -> bool {
        self.current().is_some_and(|s| !s.lost.is_cancelled())
    }

    /// Waits for a live session whose generation is not `after` (pass the
    /// generation of a session that just failed to get its successor).
    pub async fn session_after(&self, after: Option<u64>) -> Session {
        let mut rx = self.sessions.clone();
        loop {
            if let Some(s) = rx.borrow_and_update().clone()
                && Some(s.generation) != after
                && !s.lost.is_cancelled()
            {
                return s;
            }
            if rx.changed().await.is_err() {
                // The supervisor is gone (shutdown): nothing will ever come.
                std::future::pending::<()>().await;
            }
        }
    }

    pub async fn session(&self) -> Session {
        self.session_after(None).await
    }

    /// Publishes on the current session; fails at once when disconnected.
    pub async fn publish_json<T: Serialize>(
        &self,
        key: &str,
        message_id: Uuid,
        body: &T,
    ) -> Result<(), BrokerError> {
        let session = self.current().ok_or(BrokerError::NotConnected)?;
        session.publish_json(key, message_id, body).await
    }
}

/// The broker nodes a supervisor connects to, and which one it tries next.
/// Pure bookkeeping, so the order is tested without a broker.
#[derive(Debug)]
struct Nodes {
    urls: Vec<String>,
    next: usize,
    /// Connection attempts failed in a row.
    failures: usize,
}

impl Nodes {
    /// Starts at `start` (modulo the count); an empty list keeps the one
    /// (unusable) empty URL, so the connect error says what is wrong.
    fn new(mut urls: Vec<String>, start: usize) -> Nodes {
        if urls.is_empty() {
            urls.push(String::new());
        }
        let next = start % urls.len();
        Nodes {
            urls,
            next,
            failures: 0,
        }
    }

    fn current(&self) -> &str {
        &self.urls[self.next]
    }

    /// A connection to the current node could not be made. Moves to the
    /// next node; true when every node failed once since the last success,
    /// the moment to back off (with one node: after every failure).
    fn failed(&mut self) -> bool {
        self.next = (self.next + 1) % self.urls.len();
        self.failures += 1;
        self.failures.is_multiple_of(self.urls.len())
    }

    fn connected(&mut self) {
        self.failures = 0;
    }

    /// The connection was lost: its node may be the one that died, so the
    /// next attempt goes to the next node.
    fn lost(&mut self) {
        self.next = (self.next + 1) % self.urls.len();
    }
}

async fn connect(
    url: &str,
    name: &str,
    topology: &Topology,
    bots: &[BotId],
) -> Result<(Connection, Channel), lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let connection = Connection::connect(url, props).await?;
    let ch = connection.create_channel().await?;
    topology.declare(&ch).await?;
    for bot in bots {
        topology.declare_bot_queue(&ch, *bot).await?;
    }
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok((connection, ch))
}

async fn supervise(
    settings: AmqpSettings,
    name: String,
    topology: Topology,
    bots: Vec<BotId>,
    tx: watch::Sender<Option<Session>>,
    shutdown: CancellationToken,
) {
    let backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(settings.reconnect_min_ms))
            .with_max_delay(Duration::from_millis(settings.reconnect_max_ms))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = backoff();
    let mut nodes = Nodes::new(settings.urls(), usize::from(rand::random::<u16>()));
    while !shutdown.is_cancelled() {
        let url = nodes.current().to_string();
        let node = redact_url(&url);
        let attempt = tokio::select! {
            r = connect(&url, &name, &topology, &bots) => r,
            _ = shutdown.cancelled() => break,
        };
        let (connection, publisher) = match attempt {
            Ok(ok) => ok,
            Err(e) => {
                if !nodes.failed() {
                    tracing::warn!(error = %e, %node, "RabbitMQ connect failed, trying the next node");
                    continue;
                }
                let wait = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, %node, ?wait, "RabbitMQ connect failed, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        nodes.connected();
        delays = backoff();
        let session = Session {
            connection: Arc::new(connection),
            publisher,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed) + 1,
            topology: topology.clone(),
            lost: shutdown.child_token(),
        };
        tracing::info!(generation = session.generation, %node, "connected to RabbitMQ");
        tx.send_replace(Some(session.clone()));
        watch_connection(&session, &shutdown).await;
        session.lost.cancel();
        tx.send_replace(None);
        // Closing a broken connection can wait forever for an answer that
        // never comes (seen with a reset socket): bound it.
        let close = |code, reason: &'static str| {
            tokio::time::timeout(
                Duration::from_secs(2),
                session.connection.close(code, reason.into()),
            )
        };
        if shutdown.is_cancelled() {
            let _ = close(200, "shutdown").await;
            break;
        }
        tracing::warn!(generation = session.generation, %node, "RabbitMQ connection lost");
        nodes.lost();
        let _ = close(320, "reconnecting").await;
    }
    tx.send_replace(None);
}

/// Returns when the connection stops being usable or on shutdown.
async fn watch_connection(session: &Session, shutdown: &CancellationToken) {
    use futures::StreamExt;
    let mut events = session.connection.events_listener();
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = session.lost.cancelled() => return,
            event = events.next() => match event {
                // A channel's refusal (a passive declare of a queue that
                // is not there) closes that channel only; the publisher's
                // is checked below.
                Some(lapin::Event::Error(e)) if e.is_amqp_soft_error() => {
                    tracing::debug!(error = %e, "RabbitMQ channel error");
                }
                Some(lapin::Event::Error(e)) => {
                    tracing::warn!(error = %e, "RabbitMQ connection error");
                    return;
                }
                Some(_) => {}
                None => return,
            },
            _ = check.tick() => {
                if !session.connection.status().connected()
                    || !session.publisher.status().connected()
                {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Vec<String> {
        ["amqp://n1", "amqp://n2", "amqp://n3"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn one_node_is_retried_after_a_backoff_each_time() {
        let mut nodes = Nodes::new(vec!["amqp://only".into()], 7);
        assert_eq!(nodes.current(), "amqp://only");
        assert!(nodes.failed(), "back off after every failure");
        assert!(nodes.failed());
        nodes.lost();
        assert_eq!(nodes.current(), "amqp://only");
    }

    #[test]
    fn nodes_are_tried_in_turn_from_the_start_given() {
        let mut nodes = Nodes::new(three(), 4);
        assert_eq!(nodes.current(), "amqp://n2");
        assert!(!nodes.failed());
        assert_eq!(nodes.current(), "amqp://n3");
        assert!(!nodes.failed());
        assert_eq!(nodes.current(), "amqp://n1");
        assert!(nodes.failed(), "a full round failed: back off");
        assert_eq!(nodes.current(), "amqp://n2");
    }

    #[test]
    fn a_lost_connection_moves_to_the_next_node_and_a_success_starts_a_new_round() {
        let mut nodes = Nodes::new(three(), 0);
        assert!(!nodes.failed());
        nodes.connected();
        assert_eq!(nodes.current(), "amqp://n2");
        nodes.lost();
        assert_eq!(nodes.current(), "amqp://n3");
        assert!(!nodes.failed());
        assert!(!nodes.failed());
        assert!(nodes.failed());
    }

    #[test]
    fn an_empty_list_still_gives_an_address_to_fail_on() {
        let nodes = Nodes::new(Vec::new(), 3);
        assert_eq!(nodes.current(), "");
    }
}
