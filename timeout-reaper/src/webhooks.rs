//! Delivers webhooks from the outbox: forms deliveries (one pending per
//! endpoint and job, so a job's events arrive in order), claims the due ones
//! (`SKIP LOCKED`, held for the length of an attempt so no other reaper
//! sends them meanwhile), and POSTs each as a JSON array of events with the
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
use orq_shared::retry::{self, Retry, Schedule};
use orq_shared::secret::Sealer;
use orq_shared::webhook;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use uuid::Uuid;

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
    schedule: Schedule,
    /// Attempts in flight per endpoint, from this reaper.
    in_flight: Mutex<HashMap<Uuid, usize>>,
    /// Signing secrets, for a minute (a rotation takes effect within it).
    secrets: Mutex<HashMap<CustomerId, (String, Instant)>>,
    /// Woken when an attempt ends (a slot is free).
    done: Notify,
}

/// Most attempts in flight from one reaper, over all endpoints.
const MAX_IN_FLIGHT: usize = 256;

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
        let schedule = Schedule::from_ms(&settings.webhooks.retry_schedule_ms);
        Ok(Sender {
            inner: Arc::new(Inner {
                pool,
                settings,
                sealer,
                http,
                deny,
                schedule,
                in_flight: Mutex::new(HashMap::new()),
                secrets: Mutex::new(HashMap::new()),
                done: Notify::new(),
            }),
        })
    }

    /// Forms and sends until shutdown; attempts in flight then finish (they
    /// are bounded by the attempt timeout).
    pub async fn run(self, shutdown: CancellationToken) {
        let tick = Duration::from_millis(self.inner.settings.reaper.tick_ms.min(1000));
        let tracker = tokio_util::task::TaskTracker::new();
        loop {
            if let Err(e) = self.form_all().await {
                tracing::warn!(error = %e, "forming webhook deliveries failed; will retry");
            }
            match self.dispatch(&tracker).await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "claiming webhook deliveries failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = self.inner.done.notified() => {}
                _ = shutdown.cancelled() => break,
            }
        }
        tracker.close();
        tracker.wait().await;
    }

    /// Makes deliveries of what the outbox owes, a transaction per batch.
    pub async fn form_all(&self) -> Result<usize, RepoError> {
        let max = self.inner.settings.webhooks.max_events_per_delivery.max(1);
        let mut formed = 0;
        loop {
            let mut db = self.inner.pool.get().await?;
            let pairs = webhooks::formable(&db, 200).await?;
            if pairs.is_empty() {
                return Ok(formed);
            }
            let tx = db.transaction().await?;
            let mut made = 0;
            for (endpoint, job) in pairs {
                if webhooks::form(&tx, endpoint, job, max).await? {
                    made += 1;
                }
            }
            tx.commit().await?;
            if made == 0 {
                return Ok(formed);
            }
            formed += made;
        }
    }

    /// Claims due deliveries for endpoints with a free slot and starts
    /// their attempts; returns how many started.
    async fn dispatch(&self, tracker: &tokio_util::task::TaskTracker) -> Result<usize, RepoError> {
        let per_endpoint = self.inner.settings.webhooks.per_endpoint_concurrency.max(1);
        let (busy, total): (Vec<Uuid>, usize) = {
            let in_flight = self.inner.in_flight.lock().map_err(|_| poisoned())?;
            (
                in_flight
                    .iter()
                    .filter(|(_, n)| **n >= per_endpoint)
                    .map(|(e, _)| *e)
                    .collect(),
                in_flight.values().sum(),
            )
        };
        let room = MAX_IN_FLIGHT.saturating_sub(total);
        if room == 0 {
            return Ok(0);
        }
        let hold = Duration::from_millis(self.inner.settings.webhooks.timeout_ms)
            + Duration::from_secs(30);
        let db = self.inner.pool.get().await?;
        let claimed =
            webhooks::claim_due(&db, room as i64, per_endpoint as i64, &busy, hold).await?;
        let mut started = 0;
        let mut release = Vec::new();
        for due in claimed {
            let admitted = {
                let mut in_flight = self.inner.in_flight.lock().map_err(|_| poisoned())?;
                let n = in_flight.entry(due.endpoint_id).or_insert(0);
                if *n < per_endpoint {
                    *n += 1;
                    true
                } else {
                    false
                }
            };
            if !admitted {
                release.push(due.id);
                continue;
            }
            started += 1;
            let this = self.clone();
            tracker.spawn(async move {
                let endpoint = due.endpoint_id;
                if let Err(e) = this.attempt(due).await {
                    tracing::warn!(error = %e, "recording a webhook attempt failed; it will be retried");
                }
                if let Ok(mut in_flight) = this.inner.in_flight.lock()
                    && let Some(n) = in_flight.get_mut(&endpoint)
                {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        in_flight.remove(&endpoint);
                    }
                }
                this.inner.done.notify_one();
            });
        }
        if !release.is_empty() {
            webhooks::release(&db, &release).await?;
        }
        Ok(started)
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

    /// One attempt of one delivery, and its record.
    async fn attempt(&self, due: Due) -> Result<(), RepoError> {
        if !due.enabled {
            let db = self.inner.pool.get().await?;
            return webhooks::abandon(&db, due.id, "its endpoint is disabled").await;
        }
        let n = due.attempts + 1;
        let started = Instant::now();
        let attempted_at = time::OffsetDateTime::now_utc();
        let sent = self.post(&due).await;
        let duration_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        let mut outcome = AttemptOutcome {
            attempted_at,
            status_code: None,
            error: None,
            duration_ms,
            status: "DELIVERED",
            next_attempt_at: None,
        };
        let mut retry_after = None;
        let mut gone = false;
        match sent {
            Ok(response) => {
                let status = response.status();
                outcome.status_code = Some(i32::from(status.as_u16()));
                retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| webhook::parse_retry_after(v, attempted_at));
                if !status.is_success() {
                    gone = status == reqwest::StatusCode::GONE;
                    outcome.error = Some(format!("HTTP {status}"));
                }
            }
            Err(e) => outcome.error = Some(e),
        }
        if outcome.error.is_some() {
            if gone {
                outcome.status = "DEAD";
            } else {
                let nth = (n - due.schedule_from).max(1) as u32;
                match self
                    .inner
                    .schedule
                    .next_attempt(nth, retry_after, retry::jitter())
                {
                    Retry::In(wait) => {
                        outcome.status = "PENDING";
                        outcome.next_attempt_at = Some(attempted_at + wait);
                    }
                    Retry::Dead => outcome.status = "DEAD",
                }
            }
        }
        let mut db = self.inner.pool.get().await?;
        let tx = db.transaction().await?;
        if !webhooks::record_attempt(&tx, due.id, n, &outcome).await? {
            // Someone else recorded this attempt: theirs stands.
            return Ok(());
        }
        if gone {
            webhooks::disable_endpoint(
                &tx,
                None,
                due.endpoint_id,
                "the receiver answered 410 Gone",
            )
            .await?;
        }
        tx.commit().await?;
        let result = match outcome.status {
            "DELIVERED" => "delivered",
            "DEAD" => "dead",
            _ => "retry",
        };
        metrics::counter!("orq_webhook_attempts_total", "outcome" => result).increment(1);
        metrics::histogram!("orq_webhook_attempt_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(())
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

fn poisoned() -> RepoError {
    RepoError::Corrupt("a lock was poisoned".into())
}
