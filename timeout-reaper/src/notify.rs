//! Sends the notifications the dispatchers queued (a worker's finish was
//! processed): e-mail over SMTP, SMS and push through HTTP providers,
//! through the one outbound loop (`outbound`): claimed, sent, recorded; a
//! failure is retried on `notify.retry_schedule_ms` (with jitter) and,
//! after the last attempt, the notification is DEAD. This runs
//! beside the processing it reports on, so a failing sender never holds it
//! up.

use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use orq_shared::CancellationToken;
use orq_shared::config::NotifySettings;
use orq_shared::repo::RepoError;
use orq_shared::repo::notifications::{self, Due};
use orq_shared::retry::Schedule;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use crate::outbound::{self, Done, Outbound, Pace, Sent, Verdict};

/// Notifications sent at once by one reaper.
const CONCURRENCY: usize = 16;

#[derive(Clone)]
pub struct Notifier {
    pool: deadpool_postgres::Pool,
    settings: Arc<NotifySettings>,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Option<Mailbox>,
    http: reqwest::Client,
}

impl Notifier {
    pub fn new(
        pool: deadpool_postgres::Pool,
        settings: &NotifySettings,
    ) -> anyhow::Result<Notifier> {
        let timeout = Duration::from_millis(settings.timeout_ms);
        let smtp = if settings.smtp_url.is_empty() {
            None
        } else {
            Some(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(&settings.smtp_url)
                    .map_err(|e| anyhow::anyhow!("notify.smtp_url: {e}"))?
                    .timeout(Some(timeout))
                    .build(),
            )
        };
        let from = if smtp.is_some() {
            Some(
                settings
                    .mail_from
                    .parse::<Mailbox>()
                    .map_err(|e| anyhow::anyhow!("notify.mail_from: {e}"))?,
            )
        } else {
            None
        };
        Ok(Notifier {
            pool,
            settings: Arc::new(settings.clone()),
            smtp,
            from,
            http: reqwest::Client::builder().timeout(timeout).build()?,
        })
    }

    /// Sends until shutdown (`outbound::run`).
    pub async fn run(self, shutdown: CancellationToken) {
        let pace = Pace {
            in_flight: CONCURRENCY,
            per_lane: CONCURRENCY,
            // Claimed only to be sent at once (no lanes, nothing given back).
            prefetch: 0,
            fresh_for: Duration::from_millis(self.settings.timeout_ms),
            idle: Duration::from_millis(500),
            schedule: Schedule::from_ms(&self.settings.retry_schedule_ms),
            wake: None,
        };
        outbound::run(Arc::new(self), pace, shutdown).await
    }

    async fn deliver(&self, d: &Due) -> Result<(), String> {
        match d.channel.as_str() {
            "email" => self.email(d).await,
            "sms" => {
                let body = serde_json::json!({ "to": d.recipient, "text": d.body });
                self.post(&self.settings.sms_url, &self.settings.sms_token, &body)
                    .await
            }
            "push" => {
                let body = serde_json::json!({
                    "to": d.recipient,
                    "title": d.subject,
                    "body": d.body,
                    "data": { "task_id": d.task_id },
                });
                self.post(&self.settings.push_url, &self.settings.push_token, &body)
                    .await
            }
            other => Err(format!("unknown channel {other:?}")),
        }
    }

    async fn email(&self, d: &Due) -> Result<(), String> {
        let (Some(smtp), Some(from)) = (&self.smtp, &self.from) else {
            return Err("no SMTP server is configured (notify.smtp_url)".into());
        };
        let to: Mailbox = d
            .recipient
            .parse()
            .map_err(|e| format!("recipient {:?}: {e}", d.recipient))?;
        let message = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(&d.subject)
            .body(d.body.clone())
            .map_err(|e| e.to_string())?;
        smtp.send(message)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn post(&self, url: &str, token: &str, body: &serde_json::Value) -> Result<(), String> {
        if url.is_empty() {
            return Err("no provider is configured for this channel".into());
        }
        let mut request = self.http.post(url).json(body);
        if !token.is_empty() {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("the provider answered {}", response.status()))
        }
    }
}

impl Outbound for Notifier {
    type Item = Due;
    type Report = ();
    const NAME: &'static str = "notifications";

    async fn claim(&self, limit: usize, _: usize, _: &[Uuid]) -> Result<Vec<Due>, RepoError> {
        // Held for two attempt timeouts: an attempt takes one at most.
        let hold = Duration::from_millis(self.settings.timeout_ms) * 2;
        let db = self.pool.get().await?;
        notifications::claim_due(&db, i64::try_from(limit).unwrap_or(i64::MAX), hold).await
    }

    /// Nothing to give back: notifications have no lanes, so every one
    /// claimed is attempted.
    async fn release(&self, _: Vec<Due>) -> Result<(), RepoError> {
        Ok(())
    }

    fn lane(_: &Due) -> Option<Uuid> {
        None
    }

    fn attempt(d: &Due) -> u32 {
        u32::try_from(d.attempts + 1).unwrap_or(u32::MAX)
    }

    async fn send(&self, d: &Due) -> (Sent, ()) {
        let sent = match self.deliver(d).await {
            Ok(()) => Sent::Delivered,
            Err(error) => Sent::Failed {
                error,
                retry_after: None,
            },
        };
        (sent, ())
    }

    async fn record(&self, done: &[Done<Due, ()>]) -> Result<(), RepoError> {
        let db = self.pool.get().await?;
        for Done {
            item: d,
            sent,
            verdict,
            ..
        } in done
        {
            let error = sent.error().unwrap_or_default().to_string();
            let (recorded, result) = match verdict {
                Verdict::Delivered => (Ok(()), "sent"),
                Verdict::RetryIn(wait) => (
                    Err((error, Some(time::OffsetDateTime::now_utc() + *wait))),
                    "retry",
                ),
                Verdict::Dead => (Err((error, None)), "dead"),
            };
            if let Err((error, retry_at)) = &recorded {
                tracing::warn!(notification = %d.id, channel = %d.channel, %error, ?retry_at, "notification not sent");
            }
            notifications::record(&db, d.id, recorded).await?;
            metrics::counter!("orq_notifications_total", "channel" => d.channel.clone(), "outcome" => result)
                .increment(1);
        }
        Ok(())
    }
}
