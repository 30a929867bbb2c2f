//! Sends the notifications the dispatchers queued (a worker's finish was
//! processed): e-mail over SMTP, SMS and push through HTTP providers. Each
//! is claimed (`SKIP LOCKED`, held for the length of an attempt), sent, and
//! recorded; a failure is retried on `notify.retry_schedule_ms` (with
//! jitter) and, after the last attempt, the notification is DEAD. This runs
//! beside the processing it reports on, so a failing sender never holds it
//! up.

use futures::StreamExt;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use orq_shared::CancellationToken;
use orq_shared::config::NotifySettings;
use orq_shared::repo::RepoError;
use orq_shared::repo::notifications::{self, Due};
use orq_shared::retry::{self, Retry, Schedule};
use std::sync::Arc;
use std::time::Duration;

/// Notifications sent at once by one reaper.
const CONCURRENCY: usize = 16;

#[derive(Clone)]
pub struct Notifier {
    pool: deadpool_postgres::Pool,
    settings: Arc<NotifySettings>,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Option<Mailbox>,
    http: reqwest::Client,
    schedule: Schedule,
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
            schedule: Schedule::from_ms(&settings.retry_schedule_ms),
        })
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            loop {
                match self.send_due().await {
                    Ok(0) => break,
                    Ok(_) if shutdown.is_cancelled() => return,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "sending notifications failed; will retry");
                        break;
                    }
                }
            }
        }
    }

    /// Claims and sends one batch; returns how many it tried.
    pub async fn send_due(&self) -> Result<usize, RepoError> {
        let hold = Duration::from_millis(self.settings.timeout_ms) * 2;
        let due = {
            let db = self.pool.get().await?;
            // As many as are sent at once: each claim is held for two
            // attempt timeouts, and a batch takes about one.
            notifications::claim_due(&db, CONCURRENCY as i64, hold).await?
        };
        let n = due.len();
        let results: Vec<_> = futures::stream::iter(due)
            .map(|d| async move {
                let outcome = self.send(&d).await;
                (d, outcome)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let db = self.pool.get().await?;
        for (d, outcome) in results {
            let recorded = match outcome {
                Ok(()) => Ok(()),
                Err(error) => {
                    let attempts = u32::try_from(d.attempts + 1).unwrap_or(u32::MAX);
                    let retry_at = match self.schedule.next_attempt(attempts, None, retry::jitter())
                    {
                        Retry::In(wait) => Some(time::OffsetDateTime::now_utc() + wait),
                        Retry::Dead => None,
                    };
                    tracing::warn!(notification = %d.id, channel = %d.channel, %error, ?retry_at, "notification not sent");
                    Err((error, retry_at))
                }
            };
            let result = match &recorded {
                Ok(()) => "sent",
                Err((_, Some(_))) => "retry",
                Err((_, None)) => "dead",
            };
            metrics::counter!("orq_notifications_total", "channel" => d.channel.clone(), "outcome" => result)
                .increment(1);
            notifications::record(&db, d.id, recorded).await?;
        }
        Ok(n)
    }

    async fn send(&self, d: &Due) -> Result<(), String> {
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
