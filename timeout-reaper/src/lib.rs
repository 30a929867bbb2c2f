//! # timeout-reaper
//!
//! Expires leases whose deadline passed, batch by batch, each batch one
//! transaction whose rows are claimed with `SKIP LOCKED` (so any number of
//! reapers split the work and none expires a lease twice):
//!
//! * a lost agent becomes UNAVAILABLE and the jobs it holds go back to
//!   WAITING — or FAIL once they have had `max_attempts` attempts — to be
//!   matched again (a late report from the lost attempt is refused by its
//!   attempt number). Lost means, on evidence only (`vigil`): gone from
//!   RabbitMQ for `absence_ms` (its connection closed: seconds after a
//!   SIGKILL), or silent for `missed_heartbeats` heartbeats while the
//!   reaper's own canaries travelled the heartbeats' path;
//! * a running job past its lease (its timeout plus `lease::SLACK`)
//!   that its bot never reported on becomes TIMEOUT;
//! * a human task past its deadline: a reservation, or a micro-task
//!   execution (three hours by default), goes back to NEW for someone
//!   else; a user task whose timeout passed is submitted as it stands
//!   with `is_continue = true`; a user task's timers (`events`) fire an
//!   event on it while it is open.
//!
//! Every change goes through the jobs' one transition path (history,
//! triggers), and the dispatchers are woken for requeued work.
//!
//! Beside it, `webhooks` delivers the outbox and `notify` tells field
//! workers their finish was processed (e-mail, SMS, push), both through
//! `outbound`, the one claim/send/retry loop. Every `retention.interval_ms`
//! it prunes what is kept only for a while (`retention`).
//!
//! * `vigil`    – silence and absence of agents, judged only while the
//!   reaper can see (pure).
//! * `outbound` – claim due messages, send, record or retry (`Outbound`).
//! * `retention` – pruning old deliveries, notifications, feed places and
//!   idempotency keys, in batches.
//! * `webhooks` – webhook deliveries from the outbox.
//! * `notify`   – e-mail, SMS and push notifications to field workers.

pub mod notify;
pub mod outbound;
pub mod retention;
pub mod vigil;
pub mod webhooks;

use orq_shared::CancellationToken;
use orq_shared::broker::Broker;
use orq_shared::config::Settings;
use orq_shared::domain::{BotId, CustomerId, JobEvent};
use orq_shared::lease::{self, TakenBack};
use orq_shared::repo::jobs::{self, Actor, Change, EventKind, Expired, Outcome};
use orq_shared::repo::{RepoError, bots, human};
use orq_shared::service::Service;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;
use uuid::Uuid;

use crate::vigil::{Absences, Sight};

pub struct App {
    settings: Settings,
    sender: webhooks::Sender,
    notifier: notify::Notifier,
    /// The database (which also wakes the dispatchers when jobs wait
    /// again), and the broker that carries the canaries and tells which
    /// agents are connected.
    service: Service,
    /// This reaper's canaries' id.
    id: Uuid,
    /// What this reaper can see (links up, canaries back): silence is no
    /// evidence while it is blind.
    sight: Mutex<Sight>,
    /// Agents RabbitMQ showed connected at the last look: their silence
    /// must last twice the window to count (a reconnected agent's reports
    /// can be refused for seconds while a queue's new leader is elected,
    /// seen in the cluster test, though its canaries and connection are fine).
    present: Mutex<Vec<BotId>>,
}

/// Why an agent was declared lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evidence {
    /// No heartbeat for a silence window.
    Silence,
    /// Gone from RabbitMQ.
    Absence,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reaped {
    pub silent_bots: usize,
    pub requeued: usize,
    pub failed: usize,
    pub timed_out: usize,
    /// Human tasks whose deadline passed, and user-task timers fired.
    pub human: usize,
}

impl Reaped {
    pub fn total(&self) -> usize {
        self.silent_bots + self.requeued + self.failed + self.timed_out + self.human
    }
}

impl App {
    pub async fn build(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<App> {
        let service = Service::start(&settings, "timeout-reaper", shutdown).await?;
        let pool = service.pool().clone();
        let sender = webhooks::Sender::new(pool.clone(), std::sync::Arc::new(settings.clone()))?;
        let notifier = notify::Notifier::new(pool, &settings.notify)?;
        Ok(App {
            sender,
            notifier,
            settings,
            service,
            id: Uuid::now_v7(),
            sight: Mutex::new(Sight::default()),
            present: Mutex::new(Vec::new()),
        })
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let s = &self.service;
        s.serve_ops(&self.settings.ops.listen);
        s.spawn(sample_gauges(
            s.pool().clone(),
            s.broker().clone(),
            s.shutdown().clone(),
        ));
        s.spawn(self.sender.clone().run(s.shutdown().clone()));
        s.spawn(self.notifier.clone().run(s.shutdown().clone()));
        self.expire_until_stopped().await;
        s.stopped().await;
        Ok(())
    }

    async fn expire_until_stopped(&self) {
        if let Ok(db) = self.service.pool().get().await {
            let _ = orq_shared::repo::canaries::prune(&db).await;
        }
        tokio::join!(self.reap_until_stopped(), self.watch_presence());
    }

    /// The silence window: `missed_heartbeats` heartbeat intervals.
    fn window(&self) -> Duration {
        let r = &self.settings.reaper;
        Duration::from_millis(r.heartbeat_interval_ms * u64::from(r.missed_heartbeats))
    }

    /// The window, and the grace after an outage (agents reconnect with the
    /// same backoff as this reaper).
    fn rules(&self) -> vigil::Rules {
        let ms = |v: u64| time::Duration::milliseconds(i64::try_from(v).unwrap_or(i64::MAX));
        vigil::Rules::new(
            time::Duration::try_from(self.window()).unwrap_or_default(),
            ms(self.settings.amqp.reconnect_max_ms),
            ms(self.settings.reaper.heartbeat_interval_ms),
        )
    }

    fn see_broker(&self) {
        let generation = self
            .service
            .broker()
            .current()
            .filter(|_| self.service.broker().is_connected())
            .map(|s| s.generation());
        if let Ok(mut sight) = self.sight.lock() {
            sight.broker(time::OffsetDateTime::now_utc(), generation);
        }
    }

    fn see_database(&self, ok: bool) {
        if let Ok(mut sight) = self.sight.lock() {
            sight.database(time::OffsetDateTime::now_utc(), ok);
        }
    }

    /// Sends a canary along the heartbeats' path (agent's broker ->
    /// dispatcher -> PostgreSQL); `silent_bots` reads it back.
    async fn send_canary(&self) {
        let report = orq_shared::messages::BotReport {
            id: Uuid::now_v7(),
            bot_id: BotId(Uuid::nil()),
            customer_id: CustomerId(Uuid::nil()),
            at: time::OffsetDateTime::now_utc(),
            body: orq_shared::messages::ReportBody::Canary {
                reaper_id: self.id,
                sent_at: time::OffsetDateTime::now_utc(),
            },
        };
        let sent = tokio::time::timeout(
            Duration::from_secs(1),
            self.service
                .broker()
                .publish_json(orq_shared::broker::KEY_REPORTS, report.id, &report),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!("canary not sent");
        }
    }

    async fn reap_until_stopped(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.settings.reaper.tick_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_prune = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.service.shutdown().cancelled() => return,
            }
            self.see_broker();
            self.send_canary().await;
            if tokio::time::Instant::now() >= next_prune {
                next_prune = tokio::time::Instant::now()
                    + Duration::from_millis(self.settings.retention.interval_ms.max(1000));
                match self.prune(time::OffsetDateTime::now_utc()).await {
                    Ok(p) if p.total() > 0 => {
                        for kind in retention::Kind::ALL {
                            metrics::counter!("orq_pruned_total", "kind" => kind.name())
                                .increment(p.of(kind));
                        }
                        tracing::info!(pruned = ?p, "old rows pruned");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pruning failed; will retry"),
                }
            }
            // Batch after batch until a pass finds nothing more to expire.
            loop {
                let outcome = self.reap_once(time::OffsetDateTime::now_utc()).await;
                self.see_database(outcome.is_ok());
                match outcome {
                    Ok(r) if r.total() > 0 => {
                        for (kind, n) in [
                            ("silent_bot", r.silent_bots),
                            ("requeued", r.requeued),
                            ("failed", r.failed),
                            ("timed_out", r.timed_out),
                            ("human", r.human),
                        ] {
                            metrics::counter!("orq_leases_expired_total", "kind" => kind)
                                .increment(n as u64);
                        }
                        tracing::info!(
                            silent_bots = r.silent_bots,
                            requeued = r.requeued,
                            failed = r.failed,
                            timed_out = r.timed_out,
                            human = r.human,
                            "leases expired"
                        );
                        if self.service.shutdown().is_cancelled() {
                            return;
                        }
                    }
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "reaping failed; will retry");
                        break;
                    }
                }
            }
        }
    }

    /// Prunes what is older than its retention as of `now` (`retention`):
    /// the loop passes the wall clock, a test any time it likes.
    pub async fn prune(&self, now: time::OffsetDateTime) -> Result<retention::Pruned, RepoError> {
        let db = self.service.pool().get().await?;
        let shutdown = self.service.shutdown();
        retention::prune(&db, &self.settings, now, || shutdown.is_cancelled()).await
    }

    /// One batch of each rule, each in its own transaction, as of `now`
    /// (the loop passes the wall clock; a test passes any time it likes and
    /// sees what the rules do then).
    pub async fn reap_once(&self, now: time::OffsetDateTime) -> Result<Reaped, RepoError> {
        let mut reaped = Reaped::default();
        let mut wake: HashSet<CustomerId> = HashSet::new();
        self.silent_bots(now, &mut reaped, &mut wake).await?;
        self.job_timeouts(now, &mut reaped, &mut wake).await?;
        self.human_deadlines(now, &mut reaped).await?;
        self.wake(wake).await;
        Ok(reaped)
    }

    /// Wakes the dispatchers for customers whose work waits again.
    async fn wake(&self, customers: HashSet<CustomerId>) {
        let customers: Vec<CustomerId> = customers.into_iter().collect();
        let notified = async {
            let db = self.service.pool().get().await?;
            jobs::wake(&db, &customers).await
        };
        // A lost wake-up costs the dispatchers' sweep interval.
        if let Err(e) = notified.await {
            tracing::warn!(error = %e, customers = customers.len(), "wake-up not sent");
        }
    }

    /// Silent agents: UNAVAILABLE, and their jobs taken back — judged only
    /// while the reaper can see (`vigil::Sight::silence_cutoff`).
    async fn silent_bots(
        &self,
        now: time::OffsetDateTime,
        reaped: &mut Reaped,
        wake: &mut HashSet<CustomerId>,
    ) -> Result<(), RepoError> {
        let window = self.window();
        let tick = Duration::from_millis(self.settings.reaper.tick_ms);
        let stall = (tick * 3).max(Duration::from_secs(2));
        let mut db = self.service.pool().get().await?;
        let tx = db.transaction().await?;
        let back = orq_shared::repo::canaries::back(&tx, self.id).await?;
        let cutoff = match self.sight.lock() {
            Ok(mut sight) => {
                sight.canary(
                    now,
                    back,
                    time::Duration::try_from(stall).unwrap_or_default(),
                );
                sight.silence_cutoff(now, self.rules())
            }
            Err(_) => return Ok(()),
        };
        let before = match cutoff {
            Ok(before) => {
                metrics::gauge!("orq_reaper_blind").set(0.0);
                before
            }
            Err(why) => {
                metrics::gauge!("orq_reaper_blind").set(1.0);
                tracing::debug!(reason = why.as_str(), "not judging silence");
                return Ok(());
            }
        };
        let present = self.present.lock().map(|p| p.clone()).unwrap_or_default();
        let silent_for = time::Duration::try_from(window).unwrap_or_default();
        let lost: Vec<BotId> = bots::expire_silent(
            &tx,
            before,
            &present,
            before - silent_for,
            self.settings.reaper.batch_size,
        )
        .await?;
        let held = self
            .take_back(&tx, &lost, Evidence::Silence, reaped, wake)
            .await?;
        tx.commit().await?;
        record_lag(
            "silent_bot",
            held.iter()
                .map(|h| h.due.map(|beat| lease::of_agent(beat, silent_for))),
        );
        Ok(())
    }

    /// Takes back the jobs of agents just marked lost (in the caller's
    /// transaction): WAITING again, or FAILED after their last attempt.
    async fn take_back(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        lost: &[BotId],
        evidence: Evidence,
        reaped: &mut Reaped,
        wake: &mut HashSet<CustomerId>,
    ) -> Result<Vec<Expired>, RepoError> {
        if lost.is_empty() {
            return Ok(Vec::new());
        }
        let r = &self.settings.reaper;
        let held = jobs::held_by(tx, lost).await?;
        let why = match evidence {
            Evidence::Silence => "went silent",
            Evidence::Absence => "left RabbitMQ (its connection closed)",
        };
        let changes: Vec<Change> = held
            .iter()
            .map(|h| {
                let verdict = lease::taken_back(h.attempt, h.max_attempts, r.max_attempts);
                let note = match verdict {
                    TakenBack::Retry { attempt, of } => format!(
                        "bot {} {why}; the job waits for another bot (attempt {attempt} of {of})",
                        bot_name(h),
                    ),
                    TakenBack::Fail { attempts } => format!(
                        "bot {} {why}; the job had {attempts} attempts and fails",
                        bot_name(h),
                    ),
                };
                let retry = verdict.retries();
                change(h, JobEvent::BotLost { retry }, EventKind::Warning, note)
            })
            .collect();
        let results = jobs::apply_changes(tx, &changes).await?;
        let kind = match evidence {
            Evidence::Silence => "silence",
            Evidence::Absence => "absence",
        };
        metrics::counter!("orq_bots_lost_total", "evidence" => kind).increment(lost.len() as u64);
        tracing::info!(bots = lost.len(), evidence = kind, "agents lost");
        reaped.silent_bots += lost.len();
        for (h, result) in held.iter().zip(results) {
            if let jobs::ChangeResult::Done { to, .. } = result {
                if to == orq_shared::domain::JobStatus::Waiting {
                    reaped.requeued += 1;
                    wake.insert(h.customer);
                } else {
                    reaped.failed += 1;
                }
            }
        }
        Ok(held)
    }

    /// Watches which agents are connected to RabbitMQ; one seen connected
    /// and then absent for `absence_ms` is lost at once, without waiting
    /// for its heartbeats to fall silent.
    async fn watch_presence(&self) {
        let r = &self.settings.reaper;
        let absence = time::Duration::milliseconds(i64::try_from(r.absence_ms).unwrap_or(i64::MAX));
        let rules = self.rules();
        let mut tick = tokio::time::interval(Duration::from_millis(r.presence_interval_ms.max(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut absences = Absences::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.service.shutdown().cancelled() => return,
            }
            self.see_broker();
            let counts = self
                .sight
                .lock()
                .map(|s| s.absence_counts(time::OffsetDateTime::now_utc(), rules))
                .unwrap_or(Err(vigil::Blind::BrokerDown));
            let Some(session) = self.service.broker().current().filter(|_| counts.is_ok()) else {
                absences.clear();
                if let Ok(mut p) = self.present.lock() {
                    p.clear();
                }
                continue;
            };
            let watched = match self.service.pool().get().await {
                Ok(db) => bots::watched_agents(&db).await,
                Err(e) => Err(e.into()),
            };
            let watched = match watched {
                Ok(w) => w,
                Err(e) => {
                    tracing::debug!(error = %e, "agents not watched this round");
                    continue;
                }
            };
            absences.retain(&watched.iter().copied().collect());
            let looks = match session.presence(&watched).await {
                Ok(looks) => looks,
                Err(e) => {
                    tracing::debug!(error = %e, "presence unknown this round");
                    continue;
                }
            };
            let now = time::OffsetDateTime::now_utc();
            if let Ok(mut p) = self.present.lock() {
                *p = looks
                    .iter()
                    .filter(|(_, here)| *here)
                    .map(|(b, _)| *b)
                    .collect();
            }
            for (bot, present) in looks {
                absences.observe(bot, present, now);
            }
            let lost = absences.lost(now, absence);
            if lost.is_empty() {
                continue;
            }
            match self.take_back_absent(&lost).await {
                Ok(()) => lost.iter().for_each(|b| absences.forget(*b)),
                Err(e) => tracing::warn!(error = %e, "absent agents not taken back; will retry"),
            }
        }
    }

    async fn take_back_absent(&self, lost: &[BotId]) -> Result<(), RepoError> {
        let mut reaped = Reaped::default();
        let mut wake = HashSet::new();
        let mut db = self.service.pool().get().await?;
        let tx = db.transaction().await?;
        let marked = bots::expire_absent(&tx, lost).await?;
        let held = self
            .take_back(&tx, &marked, Evidence::Absence, &mut reaped, &mut wake)
            .await?;
        tx.commit().await?;
        let absence = time::Duration::milliseconds(
            i64::try_from(self.settings.reaper.absence_ms).unwrap_or(i64::MAX),
        );
        // Measured from when the agent was judged lost minus the absence
        // bound: when its connection went.
        let gone = time::OffsetDateTime::now_utc() - absence;
        record_lag("absent_bot", held.iter().map(|_| Some(gone)));
        self.wake(wake).await;
        Ok(())
    }

    /// Human tasks past their deadline (`human::expire_due`).
    async fn human_deadlines(
        &self,
        now: time::OffsetDateTime,
        reaped: &mut Reaped,
    ) -> Result<(), RepoError> {
        let mut db = self.service.pool().get().await?;
        let tx = db.transaction().await?;
        let batch = self.settings.reaper.batch_size;
        let expired = human::expire_due(&tx, now, batch).await?;
        let fired = human::fire_timers(&tx, now, batch).await?;
        tx.commit().await?;
        record_lag("human", expired.iter().map(|e| e.deadline));
        reaped.human += expired.len() + fired;
        Ok(())
    }

    /// Running jobs past their lease, and jobs a legacy HTTP bot has been
    /// silent on for `http_silence_ms`: TIMEOUT. Their customers are woken:
    /// a freed slot can take waiting work, and a trigger may have queued a
    /// run.
    async fn job_timeouts(
        &self,
        now: time::OffsetDateTime,
        reaped: &mut Reaped,
        wake: &mut HashSet<CustomerId>,
    ) -> Result<(), RepoError> {
        let mut db = self.service.pool().get().await?;
        let tx = db.transaction().await?;
        let batch = self.settings.reaper.batch_size;
        let silence = Duration::from_millis(self.settings.reaper.http_silence_ms);
        let mut expired: Vec<(Expired, String)> = jobs::claim_expired_leases(&tx, now, batch)
            .await?
            .into_iter()
            .map(|e| {
                let why = format!(
                    "no outcome from bot {} by the job's deadline (its timeout plus {} s)",
                    bot_name(&e),
                    lease::SLACK.whole_seconds()
                );
                (e, why)
            })
            .collect();
        let silence_for = time::Duration::try_from(silence).unwrap_or_default();
        for mut e in jobs::claim_silent_http_jobs(&tx, now - silence, batch).await? {
            e.due = e.due.map(|report| lease::of_http_bot(report, silence_for));
            let why = format!(
                "HTTP bot {} reported nothing on the job for {} s",
                bot_name(&e),
                silence.as_secs()
            );
            expired.push((e, why));
        }
        if expired.is_empty() {
            return Ok(());
        }
        let changes: Vec<Change> = expired
            .iter()
            .map(|(e, why)| change(e, JobEvent::TimedOut, EventKind::Error, why.clone()))
            .collect();
        let results = jobs::apply_changes(&tx, &changes).await?;
        tx.commit().await?;
        for ((e, _), result) in expired.iter().zip(results) {
            if matches!(result, jobs::ChangeResult::Done { .. }) {
                record_lag("job", [e.due]);
                reaped.timed_out += 1;
                wake.insert(e.customer);
            }
        }
        Ok(())
    }
}

/// Every 15 s: work by state and the intake queues' depths, as gauges
/// (one reaper's view serves the whole deployment).
async fn sample_gauges(pool: deadpool_postgres::Pool, broker: Broker, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if let Ok(db) = pool.get().await {
            match orq_shared::repo::jobs::count_by_status(&db).await {
                Ok(counts) => {
                    for (kind, status, n) in counts {
                        metrics::gauge!("orq_work_by_status", "kind" => kind, "status" => status)
                            .set(n as f64);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "work by status not sampled"),
            }
        }
        if let Some(session) = broker.current() {
            let t = broker.topology();
            for queue in [
                t.intake_queue(),
                t.reports_queue(),
                t.finish_queue(),
                t.dead_letter_queue(),
            ] {
                if let Ok(depth) = session.queue_depth(&queue).await {
                    metrics::gauge!("orq_queue_depth", "queue" => queue).set(f64::from(depth));
                }
            }
        }
    }
}

/// How late each lease was expired: from its end to now. The rule's own
/// aim is p99 under a second (`orq-bench --reaper` measures it end to end).
fn record_lag(kind: &'static str, due: impl IntoIterator<Item = Option<time::OffsetDateTime>>) {
    let now = time::OffsetDateTime::now_utc();
    for due in due.into_iter().flatten() {
        let lag = (now - due).as_seconds_f64().max(0.0);
        metrics::histogram!("orq_expiry_lag_seconds", "kind" => kind).record(lag);
    }
}

fn bot_name(e: &Expired) -> String {
    e.bot.map_or_else(|| "-".to_string(), |b| b.to_string())
}

/// The change that ends a lease, fenced to the attempt that held it.
fn change(e: &Expired, event: JobEvent, kind: EventKind, note: String) -> Change {
    let id = Uuid::now_v7();
    Change {
        customer: e.customer,
        job: e.job,
        actor: match e.bot {
            Some(bot) => Actor::Bot {
                bot,
                attempt: e.attempt,
            },
            None => Actor::System,
        },
        event,
        outcome: Outcome {
            error: (kind == EventKind::Error).then(|| note.clone()),
            ..Outcome::default()
        },
        event_id: id,
        at: time::OffsetDateTime::now_utc(),
        notes: vec![(kind, note)],
    }
}
