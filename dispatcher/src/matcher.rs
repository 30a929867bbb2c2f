//! The matching loop. Wake-ups mark a customer dirty; one loop per dispatcher
//! matches dirty customers' oldest waiting jobs to free bots, one transaction
//! per batch, then delivers what it assigned.

use futures::future::join_all;
use lapin::options::BasicAckOptions;
use orq_shared::CancellationToken;
use orq_shared::broker::{self, Broker, BrokerError, Topology};
use orq_shared::config::{DatabaseSettings, Settings};
use orq_shared::db::{self, Heard};
use orq_shared::domain::{BotId, CustomerId, Delivery, JobEvent, JobId};
use orq_shared::messages::{Assignment, Control, Wake};
use orq_shared::repo::jobs::{self, Actor, Assigned, EventKind, EventRecord, Outcome};
use orq_shared::repo::{RepoError, bots};
use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Clone)]
pub struct Matcher {
    inner: Arc<Inner>,
}

struct Inner {
    pool: deadpool_postgres::Pool,
    broker: Broker,
    settings: Arc<Settings>,
    http: reqwest::Client,
    /// Where legacy bots may not be (`security.bot_deny_networks`).
    bot_deny: orq_shared::deny::DenyList,
    /// Customers that may have work to match, and the wake-up messages to
    /// acknowledge once a round that covers them has committed.
    pending: Mutex<Pending>,
    notify: Notify,
}

#[derive(Default)]
struct Pending {
    customers: HashSet<CustomerId>,
    /// Every customer with waiting work (the sweep's tick, or the wake-up
    /// listener back from an outage).
    all: bool,
    acks: Vec<lapin::Acker>,
}

impl Matcher {
    pub fn new(
        pool: deadpool_postgres::Pool,
        broker: Broker,
        settings: Arc<Settings>,
    ) -> anyhow::Result<Matcher> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(
                settings.dispatcher.http_delivery_timeout_ms,
            ))
            // A bot's answer must not send the task elsewhere (SSRF past
            // the deny list), nor may a proxy from the environment.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        let bot_deny = orq_shared::deny::DenyList::parse(
            "security.bot_deny_networks",
            &settings.security.bot_deny_networks,
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Matcher {
            inner: Arc::new(Inner {
                pool,
                broker,
                settings,
                http,
                bot_deny,
                pending: Mutex::new(Pending::default()),
                notify: Notify::new(),
            }),
        })
    }

    /// Asks for a matching round for `customer`.
    pub fn wake(&self, customer: CustomerId) {
        self.push(customer, None);
    }

    /// Asks for a matching round for every customer with waiting work.
    pub fn wake_all(&self) {
        if let Ok(mut p) = self.inner.pending.lock() {
            p.all = true;
        }
        self.inner.notify.notify_one();
    }

    /// Asks for a matching round at `at` (a triggered run's grace time
    /// ends). In memory only: the sweep covers a dispatcher that stops
    /// before then.
    pub fn wake_at(&self, customer: CustomerId, at: time::OffsetDateTime) {
        let this = self.clone();
        let wait = Duration::try_from(at - time::OffsetDateTime::now_utc()).unwrap_or_default();
        tokio::spawn(async move {
            tokio::time::sleep(wait + Duration::from_millis(5)).await;
            this.wake(customer);
        });
    }

    /// Tells an agent to stop an attempt the job no longer is (a control
    /// message, as for a cancel; lost if the agent is not connected, which
    /// is then moot).
    pub fn stop_stale(&self, bot: BotId, job: JobId, attempt: i32) {
        let broker = self.inner.broker.clone();
        tokio::spawn(async move {
            let message = Control::Cancel {
                id: Uuid::now_v7(),
                job_id: job,
                attempt,
            };
            match broker
                .publish_json(&Topology::control_key(bot), message.id(), &message)
                .await
            {
                Ok(()) => {
                    tracing::info!(%bot, %job, attempt, "told the agent to stop a stale attempt")
                }
                Err(e) => tracing::debug!(error = %e, %bot, %job, "stale attempt not stopped"),
            }
        });
    }

    fn push(&self, customer: CustomerId, ack: Option<lapin::Acker>) {
        if let Ok(mut p) = self.inner.pending.lock() {
            p.customers.insert(customer);
            p.acks.extend(ack);
        }
        self.inner.notify.notify_one();
    }

    fn take(&self) -> Pending {
        self.inner
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.inner.notify.notified() => {}
                _ = shutdown.cancelled() => break,
            }
            let mut batch = self.take();
            let mut failed = false;
            if batch.all {
                match self.customers_with_waiting().await {
                    Ok(customers) => batch.customers.extend(customers),
                    Err(e) => {
                        tracing::warn!(error = %e, "looking for waiting work failed; will retry");
                        failed = true;
                        self.wake_all();
                    }
                }
            }
            for customer in &batch.customers {
                if let Err(e) = self.match_customer(*customer).await {
                    tracing::warn!(error = %e, %customer, "matching failed; will retry");
                    failed = true;
                    self.push(*customer, None);
                }
            }
            // The work itself is in PostgreSQL: a wake-up has done its job
            // once a round ran, and the sweep covers a failed round.
            for ack in batch.acks {
                let _ = ack.ack(BasicAckOptions::default()).await;
            }
            if failed {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }

    async fn customers_with_waiting(&self) -> Result<Vec<CustomerId>, RepoError> {
        let db = self.inner.pool.get().await?;
        jobs::customers_with_waiting(&db).await
    }

    /// Matches until the customer has no free bot or no waiting job left.
    pub async fn match_customer(&self, customer: CustomerId) -> Result<usize, RepoError> {
        let batch = self.inner.settings.dispatcher.batch_size;
        let mut total = 0;
        loop {
            let mut db = self.inner.pool.get().await?;
            let tx = db.transaction().await?;
            let assigned = jobs::match_waiting(&tx, customer, batch).await?;
            tx.commit().await?;
            drop(db);
            let n = assigned.len();
            total += n;
            if n > 0 {
                tracing::debug!(%customer, jobs = n, "assigned");
                metrics::counter!("orq_jobs_assigned_total").increment(n as u64);
                for a in &assigned {
                    // Waiting time, creation to assignment.
                    let waited = (a.assigned_at - a.created_at).as_seconds_f64().max(0.0);
                    metrics::histogram!("orq_dispatch_latency_seconds").record(waited);
                }
                // Delivery runs beside the next round: waiting for publisher
                // confirms here would hold back every other assignment.
                let this = self.clone();
                tokio::spawn(async move {
                    join_all(assigned.into_iter().map(|a| this.deliver(customer, a))).await;
                });
            }
            // Loop until a round assigns nothing: a round that filled one
            // system's bots leaves the next round to the others' jobs.
            if n == 0 {
                return Ok(total);
            }
        }
    }

    /// Sends an assigned job to its bot; on failure the job waits again, and
    /// when the bot is to blame it is marked UNAVAILABLE until heard from.
    pub async fn deliver(&self, customer: CustomerId, a: Assigned) {
        let outcome = match a.delivery {
            Delivery::Agent => self.deliver_to_agent(customer, &a).await,
            Delivery::Http => self.deliver_over_http(customer, &a).await,
        };
        if let Err(failure) = outcome {
            let (reason, blame_bot) = match failure {
                Failure::Bot(r) => (r, true),
                Failure::Ours(r) => (r, false),
                Failure::Uncertain(r) => {
                    tracing::warn!(job = %a.job_id, bot = %a.bot_id, reason = %r, "delivery uncertain; left to the sweep");
                    return;
                }
            };
            tracing::warn!(job = %a.job_id, bot = %a.bot_id, %reason, "delivery failed");
            match self.hand_back(customer, &a, &reason, blame_bot).await {
                Ok(()) => self.wake(customer),
                Err(e) => {
                    tracing::warn!(error = %e, job = %a.job_id, "hand-back failed; the sweep will retry")
                }
            }
        }
    }

    async fn deliver_to_agent(&self, customer: CustomerId, a: &Assigned) -> Result<(), Failure> {
        let message = Assignment {
            id: Uuid::now_v7(),
            job_id: a.job_id,
            attempt: a.attempt,
            customer_id: customer,
            bot_id: a.bot_id,
            description: a.description.clone(),
            system: a.system.clone(),
            attachment: a.attachment.clone(),
            created_at: a.created_at,
            assigned_at: a.assigned_at,
            script: a.spec.clone(),
            rows_done: u32::try_from(a.rows_done).unwrap_or(0),
            failed_rows: a.failed_rows.clone(),
        };
        // A short broker outage delays the delivery rather than failing it.
        let session = tokio::time::timeout(Duration::from_secs(5), self.inner.broker.session())
            .await
            .map_err(|_| Failure::Ours("not connected to RabbitMQ".into()))?;
        match session
            .publish_json(&Topology::bot_key(a.bot_id), message.id, &message)
            .await
        {
            Ok(()) => Ok(()),
            Err(e @ BrokerError::Unroutable(_)) => Err(Failure::Bot(e.to_string())),
            // The message may have reached the queue: handing the job back
            // could run it twice. It stays ASSIGNED; the sweep sends it
            // again if the agent does not start it.
            Err(e) => Err(Failure::Uncertain(e.to_string())),
        }
    }

    /// The proof of concept's push: `POST http://<ip>:<port>/tasks` with the
    /// task as `GET /tasks/{id}` shows it.
    async fn deliver_over_http(&self, customer: CustomerId, a: &Assigned) -> Result<(), Failure> {
        let task = {
            let ours = |e: RepoError| Failure::Ours(e.to_string());
            let db = self
                .inner
                .pool
                .get()
                .await
                .map_err(RepoError::from)
                .map_err(ours)?;
            jobs::get(&db, customer, a.job_id).await.map_err(ours)?
        };
        // Checked again here: the list may have changed since the address
        // was set, or the row was written by hand.
        let ip = a
            .bot_address
            .trim()
            .parse::<std::net::IpAddr>()
            .map_err(|_| Failure::Bot(format!("{:?} is not an IP address", a.bot_address)))?;
        self.inner
            .bot_deny
            .check(ip)
            .map_err(|e| Failure::Bot(e.to_string()))?;
        let host = match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        let url = format!("http://{host}:{}/tasks", a.bot_port);
        let response = self
            .inner
            .http
            .post(&url)
            .json(&task)
            .send()
            .await
            .map_err(|e| Failure::Bot(format!("POST {url}: {e}")))?;
        if response.status().is_success() {
            Ok(())
        } else if response.status().is_redirection() {
            Err(Failure::Bot(format!(
                "POST {url}: HTTP {} (redirects are not followed)",
                response.status()
            )))
        } else {
            Err(Failure::Bot(format!(
                "POST {url}: HTTP {}",
                response.status()
            )))
        }
    }

    pub async fn hand_back(
        &self,
        customer: CustomerId,
        a: &Assigned,
        reason: &str,
        blame_bot: bool,
    ) -> Result<(), RepoError> {
        let mut db = self.inner.pool.get().await?;
        let tx = db.transaction().await?;
        let now = time::OffsetDateTime::now_utc();
        let applied = jobs::transition(
            &tx,
            customer,
            a.job_id,
            Actor::Bot {
                bot: a.bot_id,
                attempt: a.attempt,
            },
            JobEvent::DeliveryFailed,
            &Outcome::default(),
            Uuid::now_v7(),
            now,
        )
        .await;
        match applied {
            // The bot reported already (delivery did arrive) or the job moved on.
            Ok(jobs::Applied::Stale { .. }) | Err(RepoError::Conflict(_)) => return Ok(()),
            Ok(jobs::Applied::Done { .. }) => {}
            Err(e) => return Err(e),
        }
        jobs::append_events(
            &tx,
            &[EventRecord {
                id: Uuid::now_v7(),
                job_id: a.job_id,
                customer,
                kind: EventKind::Warning,
                description: format!("delivery to bot {} failed: {reason}", a.bot_id),
                from: None,
                to: None,
                bot: Some(a.bot_id),
                attempt: Some(a.attempt),
            }],
        )
        .await?;
        if blame_bot {
            bots::lose(&tx, a.bot_id, "a delivery to it failed").await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Why a delivery failed: the bot (unreachable, refused, no queue), this
/// side (broker or database unavailable, nothing sent), or unknown (sent,
/// never confirmed).
enum Failure {
    Bot(String),
    Ours(String),
    /// Sent, but not confirmed: the bot may have it.
    Uncertain(String),
}

/// Listens for wake-ups (`jobs::WAKE_CHANNEL`, PostgreSQL NOTIFY), each
/// naming a customer; back from an outage, wakes every customer with
/// waiting work.
pub async fn listen_wakeups(
    matcher: Matcher,
    database: DatabaseSettings,
    shutdown: CancellationToken,
) {
    let on = |heard: Heard<'_>| match heard {
        Heard::Notified(payload) => match payload.parse::<Uuid>() {
            Ok(id) => matcher.wake(CustomerId(id)),
            Err(_) => tracing::debug!(payload, "a wake-up that names no customer; ignored"),
        },
        Heard::Listening => matcher.wake_all(),
    };
    db::listen(database, jobs::WAKE_CHANNEL, on, shutdown).await
}

/// Consumes wake-ups from the intake queue into the matcher; each is acked
/// once a round that covers its customer has run. Wake-ups go through
/// PostgreSQL now (`listen_wakeups`); this drains what services of an
/// earlier version publish during a rolling upgrade.
pub async fn consume_wakeups(matcher: Matcher, broker: Broker, shutdown: CancellationToken) {
    let queue = broker::Queue {
        name: broker.topology().intake_queue(),
        prefetch: 512,
    };
    let matcher = &matcher;
    broker::consume(&broker, queue, &shutdown, move |delivery| async move {
        if let Some(wake) = broker::decode::<Wake>(&delivery, "wake-up").await {
            matcher.push(wake.customer_id, Some(delivery.acker));
        }
        ControlFlow::Continue(())
    })
    .await
}
