//! Delivers webhooks from the outbox, through the one outbound loop
//! (`outbound`): forms deliveries (one pending per endpoint and job, so a
//! job's events arrive in order), claims the due ones (`SKIP LOCKED`, held
//! for the length of an attempt so no other reaper sends them meanwhile),
//! and POSTs each as a JSON array of events with the
//! `user`/`password` headers of seed 004 and Standard Webhooks headers
//! (`webhook-id`, stable across attempts; `webhook-timestamp`;
//! `webhook-signature`). 2xx delivers; `410 Gone` disables the endpoint;
//! anything else is retried on the configured schedule (jitter, at least
//! `Retry-After`) until the last attempt, then the delivery is DEAD. The
//! schedule lives in PostgreSQL: a restarted reaper picks it up.
//!
//! One slow endpoint never delays others: attempts to one endpoint are
//! bounded (`per_endpoint_concurrency`), every endpoint has its own.

use anyhow::Context;
use orq_shared::CancellationToken;
use orq_shared::config::Settings;
use orq_shared::deny::DenyList;
use orq_shared::domain::CustomerId;
use orq_shared::repo::RepoError;
use orq_shared::repo::webhooks::{self, AttemptOutcome, Due};
use orq_shared::retry::Schedule;
use orq_shared::secret::Sealer;
use orq_shared::webhook;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::outbound::{self, Done, Outbound, Pace, Sent, Verdict};

/// Resolves host names, leaving out addresses in denied networks: a host
/// that resolves only to those cannot be reached (SSRF, DNS rebinding).
struct DenyResolver {
    deny: Arc<DenyList>,
}

impl reqwest::dns::Resolve for DenyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let deny = self.deny.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| deny.check(a.ip()).is_ok())
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no address webhooks may go to").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[derive(Clone)]
pub struct Sender {
    inner: Arc<Inner>,
}

struct Inner {
    pool: deadpool_postgres::Pool,
    settings: Arc<Settings>,
    sealer: Sealer,
    http: reqwest::Client,
    deny: Arc<DenyList>,
    /// Signing secrets, for a minute (a rotation takes effect within it).
    secrets: Mutex<HashMap<CustomerId, (String, Instant)>>,
    /// Where forming goes on (`form_some`).
    form_cursor: Mutex<Option<(Uuid, orq_shared::domain::JobId)>>,
}

/// Most attempts in flight from one reaper, over all endpoints.
const MAX_IN_FLIGHT: usize = 256;

/// Deliveries an endpoint may have claimed and ready, per attempt it may
/// have in flight: a freed slot starts the next at once.
const PREFETCH_PER_SLOT: usize = 16;

/// How long a claim outlasts the attempt's timeout.
const CLAIM_SLACK: Duration = Duration::from_secs(30);

/// Pages of pairs formed per look.
const FORM_PAGES: usize = 4;

/// Most (endpoint, job) pairs formed into deliveries in one transaction
/// (each holds an advisory lock until its commit: PostgreSQL's lock table
/// is shared by the whole server).
const FORM_BATCH: i64 = 200;

impl Sender {
    pub fn new(pool: deadpool_postgres::Pool, settings: Arc<Settings>) -> anyhow::Result<Sender> {
        let sealer = Sealer::from_config(&settings.security.secret_key)?;
        let deny = Arc::new(
            DenyList::parse("webhooks.deny_networks", &settings.webhooks.deny_networks)
                .map_err(anyhow::Error::msg)?,
        );
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.webhooks.timeout_ms))
            // A redirect could lead anywhere, denied networks included; a
            // proxy from the environment would resolve names past the check.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(DenyResolver { deny: deny.clone() }))
            .user_agent("Orquestra-Webhooks/1");
        if !settings.webhooks.ca_file.trim().is_empty() {
            let pem = std::fs::read(settings.webhooks.ca_file.trim()).with_context(|| {
                format!("reading webhooks.ca_file {}", settings.webhooks.ca_file)
            })?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http.build()?;
        Ok(Sender {
            inner: Arc::new(Inner {
                pool,
                settings,
                sealer,
                http,
                deny,
                secrets: Mutex::new(HashMap::new()),
                form_cursor: Mutex::new(None),
            }),
        })
    }

    /// Forms and sends until shutdown (`outbound::run`).
    pub async fn run(self, shutdown: CancellationToken) {
        let w = &self.inner.settings.webhooks;
        // Events added to the outbox wake the loop at once.
        let wake = Arc::new(tokio::sync::Notify::new());
        let per_lane = w.per_endpoint_concurrency.max(1);
        let pace = Pace {
            in_flight: MAX_IN_FLIGHT,
            per_lane,
            prefetch: (per_lane * PREFETCH_PER_SLOT).min(MAX_IN_FLIGHT),
            // A claim holds `CLAIM_SLACK` beyond the attempt's timeout: a
            // delivery waits at most two thirds of that before it starts.
            fresh_for: CLAIM_SLACK * 2 / 3,
            idle: Duration::from_millis(self.inner.settings.reaper.tick_ms.min(1000)),
            schedule: Schedule::from_ms(&w.retry_schedule_ms),
            wake: Some(wake.clone()),
        };
        let listener = tokio::spawn(orq_shared::db::listen(
            self.inner.settings.database.clone(),
            webhooks::OUTBOX_CHANNEL,
            move |_| wake.notify_one(),
            shutdown.clone(),
        ));
        outbound::run(Arc::new(self), pace, shutdown).await;
        let _ = listener.await;
    }

    /// Makes deliveries of what the outbox owes, a transaction per page of
    /// pairs (a fixed number of statements each), at most `pages` pages,
    /// going on from where the last call stopped and starting over at the
    /// end (so pairs a pending delivery blocks, however many, never keep
    /// others waiting for more than a round); returns whether more may be
    /// owed now.
    pub async fn form_some(&self, pages: usize) -> Result<bool, RepoError> {
        let max = self.inner.settings.webhooks.max_events_per_delivery.max(1);
        let mut formed = 0;
        let mut after = self.inner.form_cursor.lock().map(|c| *c).unwrap_or(None);
        let mut wrapped = false;
        for _ in 0..pages {
            let mut db = self.inner.pool.get().await?;
            let page = webhooks::formable(&db, after, FORM_BATCH).await?;
            if !page.pairs.is_empty() {
                let tx = db.transaction().await?;
                formed += webhooks::form(&tx, &page.pairs, max).await?;
                tx.commit().await?;
            }
            after = page.next;
            if after.is_none() {
                wrapped = true;
                break;
            }
        }
        if let Ok(mut cursor) = self.inner.form_cursor.lock() {
            *cursor = after;
        }
        // More to look at now only when this call made some and stopped
        // short of the end: pages of blocked pairs alone wait for the next
        // look, rather than spin.
        Ok(formed > 0 && !wrapped)
    }

    fn signing_secret_cached(&self, customer: CustomerId) -> Option<String> {
        let secrets = self.inner.secrets.lock().ok()?;
        secrets
            .get(&customer)
            .filter(|(_, at)| at.elapsed() < Duration::from_secs(60))
            .map(|(s, _)| s.clone())
    }

    async fn signing_secret(&self, customer: CustomerId) -> Result<String, RepoError> {
        if let Some(secret) = self.signing_secret_cached(customer) {
            return Ok(secret);
        }
        let db = self.inner.pool.get().await?;
        let secret = webhooks::signing_secret(&db, customer, &self.inner.sealer).await?;
        if let Ok(mut secrets) = self.inner.secrets.lock() {
            secrets.insert(customer, (secret.clone(), Instant::now()));
        }
        Ok(secret)
    }

    /// The POST itself; `Err` when no response came.
    async fn post(&self, due: &Due) -> Result<reqwest::Response, String> {
        let url = webhook::check_url(&due.url, &self.inner.deny).map_err(|e| e.to_string())?;
        let secret = self
            .signing_secret(due.customer)
            .await
            .map_err(|e| format!("signing secret: {e}"))?;
        let body = serde_json::to_vec(&due.body).map_err(|e| e.to_string())?;
        let id = due.id.to_string();
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = webhook::sign(&secret, &id, timestamp, &body)
            .ok_or("the signing secret is malformed")?;
        let mut request = self
            .inner
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature);
        if let Some(user) = &due.user {
            request = request.header("user", user);
        }
        if let Some(sealed) = &due.password_sealed {
            let password = self
                .inner
                .sealer
                .open(sealed, due.endpoint_id.as_bytes())
                .map_err(|e| e.to_string())?;
            request = request.header("password", password);
        }
        request.body(body).send().await.map_err(|e| {
            // The error's chain says why (refused, timed out, denied address).
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        })
    }
}

/// What an attempt learnt beside its verdict.
pub struct Report {
    attempted_at: time::OffsetDateTime,
    duration_ms: i32,
    status_code: Option<i32>,
}

impl Outbound for Sender {
    type Item = Due;
    type Report = Report;
    const NAME: &'static str = "webhook deliveries";

    /// A few pages per look, so sending starts while a large outbox is
    /// still being formed.
    async fn prepare(&self) -> Result<bool, RepoError> {
        self.form_some(FORM_PAGES).await
    }

    /// Deliveries to a disabled endpoint end here, without an attempt.
    async fn claim(
        &self,
        limit: usize,
        per_endpoint: usize,
        busy: &[Uuid],
    ) -> Result<Vec<Due>, RepoError> {
        let hold = Duration::from_millis(self.inner.settings.webhooks.timeout_ms) + CLAIM_SLACK;
        let db = self.inner.pool.get().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let per_endpoint = i64::try_from(per_endpoint).unwrap_or(i64::MAX);
        let claimed = webhooks::claim_due(&db, limit, per_endpoint, busy, hold).await?;
        let mut due = Vec::with_capacity(claimed.len());
        for d in claimed {
            if d.enabled {
                due.push(d);
            } else if let Err(e) = webhooks::abandon(&db, d.id, "its endpoint is disabled").await {
                tracing::warn!(error = %e, delivery = %d.id, "abandoning a delivery failed; it will be retried");
            }
        }
        Ok(due)
    }

    async fn next_due(&self, busy: &[Uuid]) -> Result<Option<Duration>, RepoError> {
        let db = self.inner.pool.get().await?;
        webhooks::next_due(&db, busy).await
    }

    async fn release(&self, items: Vec<Due>) -> Result<(), RepoError> {
        let ids: Vec<Uuid> = items.iter().map(|d| d.id).collect();
        let db = self.inner.pool.get().await?;
        webhooks::release(&db, &ids).await
    }

    fn lane(due: &Due) -> Option<Uuid> {
        Some(due.endpoint_id)
    }

    /// Counted from the last redelivery.
    fn attempt(due: &Due) -> u32 {
        u32::try_from((due.attempts + 1 - due.schedule_from).max(1)).unwrap_or(1)
    }

    async fn send(&self, due: &Due) -> (Sent, Report) {
        let started = Instant::now();
        let attempted_at = time::OffsetDateTime::now_utc();
        let response = self.post(due).await;
        let mut report = Report {
            attempted_at,
            duration_ms: i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX),
            status_code: None,
        };
        let sent = match response {
            Ok(response) => {
                let status = response.status();
                report.status_code = Some(i32::from(status.as_u16()));
                if status.is_success() {
                    Sent::Delivered
                } else if status == reqwest::StatusCode::GONE {
                    Sent::Refused {
                        error: format!("HTTP {status}"),
                    }
                } else {
                    Sent::Failed {
                        error: format!("HTTP {status}"),
                        retry_after: response
                            .headers()
                            .get(reqwest::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| webhook::parse_retry_after(v, attempted_at)),
                    }
                }
            }
            Err(error) => Sent::Failed {
                error,
                retry_after: None,
            },
        };
        (sent, report)
    }

    /// Records a batch in one transaction; `410 Gone` also disables the
    /// endpoint.
    async fn record(&self, done: &[Done<Due, Report>]) -> Result<(), RepoError> {
        let outcomes: Vec<AttemptOutcome> = done
            .iter()
            .map(|d| {
                let (status, next_attempt_at) = match d.verdict {
                    Verdict::Delivered => ("DELIVERED", None),
                    Verdict::RetryIn(wait) => ("PENDING", Some(d.report.attempted_at + wait)),
                    Verdict::Dead => ("DEAD", None),
                };
                AttemptOutcome {
                    attempted_at: d.report.attempted_at,
                    status_code: d.report.status_code,
                    error: d.sent.error().map(str::to_string),
                    duration_ms: d.report.duration_ms,
                    status,
                    next_attempt_at,
                }
            })
            .collect();
        let attempts: Vec<(Uuid, i32, &AttemptOutcome)> = done
            .iter()
            .zip(&outcomes)
            .map(|(d, o)| (d.item.id, d.item.attempts + 1, o))
            .collect();
        let mut db = self.inner.pool.get().await?;
        let tx = db.transaction().await?;
        // Those not recorded moved on meanwhile: someone else recorded
        // that attempt, and theirs stands.
        let recorded = webhooks::record_attempts(&tx, &attempts).await?;
        for d in done {
            if matches!(d.sent, Sent::Refused { .. }) && recorded.contains(&d.item.id) {
                webhooks::disable_endpoint(
                    &tx,
                    None,
                    d.item.endpoint_id,
                    "the receiver answered 410 Gone",
                )
                .await?;
            }
        }
        tx.commit().await?;
        for d in done {
            let result = match d.verdict {
                Verdict::Delivered => "delivered",
                Verdict::RetryIn(_) => "retry",
                Verdict::Dead => "dead",
            };
            metrics::counter!("orq_webhook_attempts_total", "outcome" => result).increment(1);
            metrics::histogram!("orq_webhook_attempt_duration_seconds")
                .record(f64::from(d.report.duration_ms.max(0)) / 1000.0);
        }
        Ok(())
    }
}
