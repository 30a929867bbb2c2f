//! # bot-agent
//!
//! Runs on a bot machine: registers with the gateway, heartbeats, consumes
//! its own queue (RabbitMQ prefetch = capacity + prefetch: at most capacity
//! run at once, the rest wait unstarted), runs each job's automation and
//! reports RUNNING, progress and the outcome over RabbitMQ.
//!
//! * `runner` – runs a system's automation once per CSV row.
//! * `script` – runs a task's script (fetched, cached, timed, cancelable).
//! * `guard`  – `bot-agent __guard`: the parent of every automation process,
//!   so none outlives its agent.
//! * `outbox` – reports on their way to RabbitMQ: in order, in batches,
//!   never dropped.
//! * `Agent`  – registration, the consumer, heartbeats and reports.

pub mod guard;
pub mod outbox;
pub mod runner;
pub mod script;

use anyhow::Context;
use lapin::options::BasicAckOptions;
use orq_shared::CancellationToken;
use orq_shared::broker::{self, Broker, KEY_REPORTS};
use orq_shared::config::Settings;
use orq_shared::domain::{BotId, CustomerId, JobId, JobStatus};
use orq_shared::messages::{Assignment, BotReport, ReportBody};
use serde::Deserialize;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::outbox::{Outbox, Receipt};
use crate::runner::{JobOutcome, Limits};
use crate::script::{Marker, RunLimits, ScriptCache, ScriptEvent};
use orq_shared::messages::{Control, ScriptSpec};

/// What the gateway answered to registration.
#[derive(Debug, Clone, Deserialize)]
pub struct Identity {
    pub id: BotId,
    pub customer_id: CustomerId,
    pub name: String,
}

/// The local fate of an attempt, to drop duplicates of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    Running,
    Finished,
}

#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    identity: Identity,
    broker: Broker,
    /// Where its reports go (all but heartbeats).
    outbox: Outbox,
    /// Stops the broker supervisor, after running jobs had their chance to
    /// report.
    broker_stop: CancellationToken,
    http: reqwest::Client,
    limits: Limits,
    attempts: Mutex<HashMap<(JobId, i32), Local>>,
    running: std::sync::atomic::AtomicU32,
    /// Its running slots (`capacity`): an assignment beyond them (one of
    /// its `prefetch`) waits here, unstarted.
    slots: tokio::sync::Semaphore,
    /// Whether its bot is drained (a `Control::Drain`): what waits for a
    /// slot then goes back unstarted.
    draining: tokio::sync::watch::Sender<bool>,
    scripts: ScriptCache,
    /// Jobs running here, to stop one when it is canceled, and cancels that
    /// came before their job (one lock: a cancel is never lost between the
    /// two).
    cancels: Mutex<Cancels>,
}

/// An assignment older than this is checked against the job before it runs.
const RECHECK_AFTER: Duration = Duration::from_secs(5);

/// A prefetched assignment that waited longer than this for a slot is
/// checked against the job before it runs (shorter than the reaper's
/// absence bound, so one taken back meanwhile is never started).
const SLOT_WAIT_RECHECK: Duration = Duration::from_secs(1);

impl Agent {
    /// Registers (retrying while the gateway is unreachable) and connects.
    pub async fn build(
        mut settings: Settings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Agent> {
        if settings.agent.name.trim().is_empty() {
            settings.agent.name = hostname();
        }
        anyhow::ensure!(
            !settings.agent.token.is_empty(),
            "agent.token (ORQ_AGENT__TOKEN) is required: a token of role bot"
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let identity = tokio::select! {
            r = register(&http, &settings) => r?,
            _ = shutdown.cancelled() => anyhow::bail!("shut down before registering"),
        };
        tracing::info!(bot = %identity.id, name = %identity.name, "registered");
        // The agent's own queue is declared at every (re)connect. The broker
        // outlives the shutdown signal: jobs still running must report.
        let broker_stop = CancellationToken::new();
        let broker = Broker::start_with_bots(
            &settings.amqp,
            &format!("bot-agent {}", identity.name),
            &[identity.id],
            broker_stop.clone(),
        );
        // Runs go through this very binary as their guard (`guard`).
        let guard = match std::env::current_exe() {
            Ok(exe) => Some(exe),
            Err(e) => {
                tracing::warn!(error = %e, "cannot find the agent's binary: runs are not guarded and may outlive it");
                None
            }
        };
        let limits = Limits {
            row_timeout: Duration::from_millis(settings.agent.row_timeout_ms),
            kill_grace: Duration::from_millis(settings.agent.kill_grace_ms),
            guard,
        };
        let script_dir = if settings.agent.script_dir.trim().is_empty() {
            std::env::temp_dir()
                .join("orq-scripts")
                .join(identity.id.to_string())
        } else {
            std::path::PathBuf::from(&settings.agent.script_dir)
        };
        // Absolute (scripts run in their own directory) and private: no
        // other local user may swap a cached script.
        let script_dir = std::path::absolute(&script_dir)?;
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&script_dir)
                .with_context(|| format!("creating the script cache {}", script_dir.display()))?;
        }
        let scripts = ScriptCache {
            dir: script_dir,
            http: http.clone(),
            gateway_url: settings.agent.gateway_url.clone(),
            token: settings.agent.token.clone(),
        };
        let slots = settings.agent.capacity.max(1);
        let outbox = Outbox::start(
            broker.clone(),
            Duration::from_millis(settings.agent.report_linger_ms),
        );
        Ok(Agent {
            inner: Arc::new(Inner {
                settings,
                identity,
                broker,
                outbox,
                broker_stop,
                http,
                limits,
                attempts: Mutex::new(HashMap::new()),
                running: std::sync::atomic::AtomicU32::new(0),
                slots: tokio::sync::Semaphore::new(usize::from(slots)),
                draining: tokio::sync::watch::Sender::new(false),
                scripts,
                cancels: Mutex::new(Cancels::default()),
            }),
        })
    }

    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// Consumes and heartbeats until shutdown; then stops taking work, lets
    /// running jobs finish and report for up to `shutdown_grace_ms`, and
    /// closes its connection. A job still running then is not acked: RabbitMQ
    /// hands it back, and the agent that gets it resumes after the last row
    /// reported done.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let heartbeat = tokio::spawn(self.clone().heartbeats(shutdown.clone()));
        // Controls and presence last as long as the broker connection: a
        // stopping agent is still there (and cancelable) while its running
        // jobs finish.
        let controls = tokio::spawn(self.clone().controls(self.inner.broker_stop.clone()));
        // Ready while connected to RabbitMQ (an agent has no database).
        let ops = tokio::spawn(orq_shared::ops::serve(
            self.inner.settings.ops.listen.clone(),
            orq_shared::ops::Checks {
                pool: None,
                broker: Some(self.inner.broker.clone()),
            },
            shutdown.clone(),
        ));
        let tracker = tokio_util::task::TaskTracker::new();
        self.consume(&tracker, shutdown).await;
        tracker.close();
        let grace = Duration::from_millis(self.inner.settings.agent.shutdown_grace_ms);
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                jobs = tracker.len(),
                "jobs still running at shutdown; RabbitMQ will hand them back"
            );
        }
        self.inner.broker_stop.cancel();
        let _ = heartbeat.await;
        let _ = controls.await;
        let _ = ops.await;
        Ok(())
    }

    async fn consume(&self, tracker: &tokio_util::task::TaskTracker, shutdown: CancellationToken) {
        let queue = broker::Queue {
            name: self
                .inner
                .broker
                .topology()
                .bot_queue(self.inner.identity.id),
            // Its capacity plus the assignments it may hold unstarted.
            prefetch: self
                .inner
                .settings
                .agent
                .capacity
                .max(1)
                .saturating_add(self.inner.settings.agent.prefetch()),
        };
        let stop = &shutdown;
        broker::consume(
            &self.inner.broker,
            queue,
            stop,
            move |delivery| async move {
                let Some(assignment) = broker::decode::<Assignment>(&delivery, "assignment").await
                else {
                    return ControlFlow::Continue(());
                };
                let agent = self.clone();
                let shutdown = stop.clone();
                tracker.spawn(async move {
                    // Acked only once the outcome is reported (or the
                    // assignment was found to be a duplicate or stale); one
                    // left unanswered at shutdown is handed back by RabbitMQ.
                    if agent
                        .handle(assignment, delivery.redelivered, &shutdown)
                        .await
                    {
                        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    }
                });
                ControlFlow::Continue(())
            },
        )
        .await
    }

    /// Runs an assignment unless it is a duplicate or stale; false when
    /// the agent stopped before it could tell (the assignment is not to be
    /// acknowledged).
    async fn handle(&self, a: Assignment, redelivered: bool, shutdown: &CancellationToken) -> bool {
        let key = (a.job_id, a.attempt);
        {
            let Ok(mut seen) = self.inner.attempts.lock() else {
                return false;
            };
            if seen.contains_key(&key) {
                tracing::info!(job = %a.job_id, attempt = a.attempt, "duplicate assignment dropped");
                return true;
            }
            seen.insert(key, Local::Running);
        }
        // A slot to run it in. One beyond the agent's capacity (prefetched)
        // waits here, unstarted; if the agent stops first, it goes back at
        // once rather than wait for this agent to come back.
        let mut drained = self.inner.draining.subscribe();
        let session = self.inner.broker.current().map(|s| s.generation());
        let waiting_since = std::time::Instant::now();
        let given_back = tokio::select! {
            biased;
            slot = self.inner.slots.acquire() => match slot {
                Ok(slot) => Ok(slot),
                Err(_) => return false,
            },
            _ = shutdown.cancelled() => Err("the agent is stopping"),
            _ = drained.wait_for(|d| *d) => Err("its bot was drained"),
        };
        let _slot = match given_back {
            Ok(slot) => slot,
            Err(reason) => {
                tracing::info!(job = %a.job_id, attempt = a.attempt, reason, "giving back an assignment not started");
                self.report(ReportBody::Released {
                    job_id: a.job_id,
                    attempt: a.attempt,
                    reason: reason.into(),
                    stopping: shutdown.is_cancelled(),
                })
                .confirmed()
                .await;
                self.finish(key);
                return true;
            }
        };
        // Checked once it has a slot: a prefetched one may have waited.
        let age = (time::OffsetDateTime::now_utc() - a.assigned_at).unsigned_abs();
        // The assignment says where the job stands (rows done by earlier
        // attempts, on any agent); an old or redelivered one is checked
        // against the job, which may have moved on since.
        let mut resume = runner::Resume {
            rows_done: a.rows_done as usize,
            failed_rows: a.failed_rows.clone(),
        };
        // A prefetched one that waited long for its slot, or across a
        // reconnection, may have been taken back meanwhile (its agent
        // judged lost while cut off): it is checked before it starts, so
        // it never runs beside its next attempt.
        let waited = waiting_since.elapsed() > SLOT_WAIT_RECHECK
            || self.inner.broker.current().map(|s| s.generation()) != session;
        if redelivered || age > RECHECK_AFTER || waited {
            match self.check(&a, shutdown).await {
                Check::Stale => {
                    tracing::info!(job = %a.job_id, attempt = a.attempt, "assignment no longer ours; skipped");
                    self.finish(key);
                    return true;
                }
                Check::Unknown => {
                    if let Ok(mut seen) = self.inner.attempts.lock() {
                        seen.remove(&key);
                    }
                    return false;
                }
                Check::Resume(now) if now.rows_done > resume.rows_done => resume = now,
                Check::Resume(_) => {}
                Check::StartedBefore => {
                    tracing::warn!(job = %a.job_id, attempt = a.attempt, "a script of this job was started before this agent restarted; not running it again");
                    self.report(ReportBody::Finished {
                            job_id: a.job_id,
                            attempt: a.attempt,
                            status: JobStatus::Failed,
                            exit_code: None,
                            output: None,
                            error: Some(
                                "the agent restarted while the script ran; its outcome is unknown and it is not run twice"
                                    .into(),
                            ),
                            stdout: String::new(),
                            stderr: String::new(),
                        })
                        .confirmed()
                        .await;
                    self.finish(key);
                    return true;
                }
            }
        }
        tracing::debug!(
            job = %a.job_id,
            attempt = a.attempt,
            redelivered,
            age_ms = age.as_millis(),
            from_row = resume.rows_done + 1,
            "running"
        );
        self.inner
            .running
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.run(&a, resume).await;
        self.inner
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.finish(key);
        true
    }

    fn finish(&self, key: (JobId, i32)) {
        if let Ok(mut seen) = self.inner.attempts.lock() {
            seen.insert(key, Local::Finished);
            // Bound the memory: forget the oldest finished attempts.
            if seen.len() > 10_000 {
                seen.retain(|_, v| *v == Local::Running);
            }
        }
    }

    /// Runs a job while it can be canceled by a control message.
    async fn run(&self, a: &Assignment, resume: runner::Resume) {
        let key = (a.job_id, a.attempt);
        let cancel = CancellationToken::new();
        if let Ok(mut c) = self.inner.cancels.lock() {
            c.start(key, cancel.clone());
        }
        match &a.script {
            Some(spec) => self.run_script(a, spec, &cancel).await,
            None => self.run_rows(a, resume, &cancel).await,
        }
        if let Ok(mut c) = self.inner.cancels.lock() {
            c.running.remove(&key);
        }
    }

    /// Runs a CSV job's rows after those done (`resume`). Each row's
    /// progress is confirmed by RabbitMQ before the next row starts: the
    /// agent that gets the job after a crash resumes after it. The last
    /// row's goes with the outcome (in order, in the same batch when they
    /// are close), which is confirmed before the job is done here.
    async fn run_rows(&self, a: &Assignment, resume: runner::Resume, cancel: &CancellationToken) {
        let job = a.job_id;
        let attempt = a.attempt;
        let _ = self.report(ReportBody::Running {
            job_id: job,
            attempt,
        });
        let Some(argv) = self.inner.settings.agent.systems.get(&a.system) else {
            self.report(ReportBody::Failed {
                job_id: job,
                attempt,
                error: format!("this bot has no automation for system {:?}", a.system),
                failed_rows: Vec::new(),
                rows_done: None,
            })
            .confirmed()
            .await;
            return;
        };
        let mut env = self.run_env(a);
        env.push(("ORQ_SYSTEM".to_string(), a.system.clone()));
        let outcome = runner::run_job(
            argv,
            &a.attachment,
            job,
            resume,
            &env,
            &self.inner.limits,
            cancel,
            |done, total, failure| {
                let percent =
                    u8::try_from(u64::from(done) * 100 / u64::from(total.max(1))).unwrap_or(100);
                let receipt = self.report(ReportBody::Progress {
                    job_id: job,
                    attempt,
                    percent,
                    rows_done: done,
                    rows_total: total,
                    failed_rows: failure.into_iter().collect(),
                });
                async move {
                    if done < total {
                        receipt.confirmed().await;
                    }
                }
            },
        )
        .await;
        let body = match outcome {
            JobOutcome::Complete { rows_total } => ReportBody::Complete {
                job_id: job,
                attempt,
                rows_total,
            },
            JobOutcome::Failed {
                error,
                failed_rows,
                rows_done,
            } => ReportBody::Failed {
                job_id: job,
                attempt,
                error,
                failed_rows,
                rows_done: Some(rows_done),
            },
        };
        self.report(body).confirmed().await;
    }

    /// Runs a script job and reports its markers and outcome.
    async fn run_script(&self, a: &Assignment, spec: &ScriptSpec, cancel: &CancellationToken) {
        let (job, attempt) = (a.job_id, a.attempt);
        let result = match self.inner.scripts.path_for(spec).await {
            Err(error) => script::ScriptResult {
                status: JobStatus::Failed,
                exit_code: None,
                output: None,
                error: Some(error),
                stdout: String::new(),
                stderr: String::new(),
            },
            Ok(path) => {
                // A script is one unit: its key is the job's.
                let mut env = self.run_env(a);
                env.push(("ORQ_IDEMPOTENCY_KEY".to_string(), job.to_string()));
                let limits = RunLimits {
                    timeout: Duration::from_secs(u64::from(spec.timeout_secs.max(1))),
                    kill_grace: self.inner.limits.kill_grace,
                    tail_bytes: self.inner.settings.agent.output_tail_bytes.max(256),
                    guard: self.inner.limits.guard.clone(),
                };
                // RUNNING once the process exists: its timestamp is the
                // process start, not the download before it.
                script::run(&path, spec, &env, &limits, cancel, |e| async move {
                    let body = match e {
                        ScriptEvent::Started => ReportBody::Running {
                            job_id: job,
                            attempt,
                        },
                        ScriptEvent::Marker(Marker::Percent(percent)) => ReportBody::Percent {
                            job_id: job,
                            attempt,
                            percent,
                        },
                        ScriptEvent::Marker(Marker::Step(step)) => ReportBody::Step {
                            job_id: job,
                            attempt,
                            step,
                        },
                    };
                    let _ = self.report(body);
                })
                .await
            }
        };
        self.report(ReportBody::Finished {
            job_id: job,
            attempt,
            status: result.status,
            exit_code: result.exit_code,
            output: result.output,
            error: result.error,
            stdout: result.stdout,
            stderr: result.stderr,
        })
        .confirmed()
        .await;
    }

    /// Holds this agent's presence queue and consumes its control messages
    /// (cancel a job, drain or resume the bot), on every connection, until
    /// `stop`.
    async fn controls(self, stop: CancellationToken) {
        let control = broker::AgentControl(self.inner.identity.id);
        let this = &self;
        broker::consume(
            &self.inner.broker,
            control,
            &stop,
            move |delivery| async move {
                match serde_json::from_slice::<Control>(&delivery.data) {
                    Ok(Control::Cancel {
                        job_id, attempt, ..
                    }) => {
                        tracing::info!(job = %job_id, attempt, "job canceled; stopping it");
                        if let Ok(mut c) = this.inner.cancels.lock() {
                            c.cancel((job_id, attempt));
                        }
                    }
                    Ok(Control::Drain { draining, .. }) => {
                        tracing::info!(draining, "the bot's draining changed");
                        this.inner.draining.send_replace(draining);
                    }
                    Err(e) => tracing::warn!(error = %e, "malformed control message ignored"),
                }
                ControlFlow::Continue(())
            },
        )
        .await
    }

    /// What every run of a job finds in its environment, whichever agent
    /// runs it (rows add `ORQ_ROW_NUMBER` and `ORQ_IDEMPOTENCY_KEY`).
    fn run_env(&self, a: &Assignment) -> Vec<(String, String)> {
        vec![
            ("ORQ_JOB_ID".to_string(), a.job_id.to_string()),
            ("ORQ_ATTEMPT".to_string(), a.attempt.to_string()),
            ("ORQ_BOT_ID".to_string(), self.inner.identity.id.to_string()),
            ("ORQ_BOT_NAME".to_string(), self.inner.identity.name.clone()),
        ]
    }

    fn new_report(&self, body: ReportBody) -> BotReport {
        BotReport::new(
            self.inner.identity.id,
            self.inner.identity.customer_id,
            body,
        )
    }

    /// Queues a report after this agent's earlier ones (`outbox`).
    fn report(&self, body: ReportBody) -> Receipt {
        self.inner.outbox.send(&self.new_report(body))
    }

    async fn heartbeats(self, shutdown: CancellationToken) {
        let every = Duration::from_millis(self.inner.settings.agent.heartbeat_interval_ms);
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let report = self.new_report(ReportBody::Heartbeat {
                running: self
                    .inner
                    .running
                    .load(std::sync::atomic::Ordering::Relaxed),
                capacity: u32::from(self.inner.settings.agent.capacity),
            });
            // A missed heartbeat is fine; the next one follows.
            if let Err(e) = self
                .inner
                .broker
                .publish_json(KEY_REPORTS, report.id, &report)
                .await
            {
                tracing::debug!(error = %e, "heartbeat not sent");
            }
        }
    }

    /// Asks the gateway whether an old or redelivered assignment is still
    /// this bot's, and from which row to resume. It waits for an answer
    /// (retrying while the gateway is unreachable or failing, until
    /// `shutdown`): run blind, the assignment's own resume position may be
    /// behind rows done since, and the job may have moved to another agent.
    async fn check(&self, a: &Assignment, shutdown: &CancellationToken) -> Check {
        let mut wait = Duration::from_millis(200);
        loop {
            match self.job_state(a).await {
                Ok(check) => return check,
                Err(e) => {
                    tracing::warn!(job = %a.job_id, error = %e, "cannot check an old assignment with the gateway; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return Check::Unknown,
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// One look at the job through the gateway.
    async fn job_state(&self, a: &Assignment) -> Result<Check, String> {
        #[derive(Deserialize)]
        struct TaskState {
            status: JobStatus,
            attempt: i32,
            bot_id: Option<BotId>,
            rows_done: i32,
            result: Option<serde_json::Value>,
        }
        let url = format!(
            "{}/tasks/{}",
            self.inner.settings.agent.gateway_url.trim_end_matches('/'),
            a.job_id
        );
        let response = self
            .inner
            .http
            .get(&url)
            .bearer_auth(&self.inner.settings.agent.token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Check::Stale);
        }
        if !status.is_success() {
            return Err(format!("the gateway answered {status}"));
        }
        let s = response
            .json::<TaskState>()
            .await
            .map_err(|e| e.to_string())?;
        Ok(match s {
            s if s.status == JobStatus::Running
                && a.script.is_some()
                && s.attempt == a.attempt
                && s.bot_id == Some(self.inner.identity.id) =>
            {
                Check::StartedBefore
            }
            s if s.status.is_active()
                && s.attempt == a.attempt
                && s.bot_id == Some(self.inner.identity.id) =>
            {
                Check::Resume(runner::Resume {
                    rows_done: usize::try_from(s.rows_done).unwrap_or(0),
                    failed_rows: orq_shared::rows::failed_rows_of(s.result.as_ref()),
                })
            }
            _ => Check::Stale,
        })
    }
}

/// Cancel tokens of the jobs running here, and cancels of jobs not (yet)
/// running here (bounded: the oldest are forgotten).
#[derive(Default)]
struct Cancels {
    running: HashMap<(JobId, i32), CancellationToken>,
    early: std::collections::VecDeque<(JobId, i32)>,
}

impl Cancels {
    const EARLY_MAX: usize = 1000;

    fn start(&mut self, key: (JobId, i32), token: CancellationToken) {
        if self.early.contains(&key) {
            token.cancel();
        }
        self.running.insert(key, token);
    }

    fn cancel(&mut self, key: (JobId, i32)) {
        match self.running.get(&key) {
            Some(token) => token.cancel(),
            None => {
                if self.early.len() >= Self::EARLY_MAX {
                    self.early.pop_front();
                }
                self.early.push_back(key);
            }
        }
    }
}

enum Check {
    Stale,
    /// Still ours: where the job stands now.
    Resume(runner::Resume),
    /// The agent is stopping before the gateway answered.
    Unknown,
    /// Still ours, and a script of it was already started here by an agent
    /// that stopped: it may still be running, and a script is not resumable.
    StartedBefore,
}

async fn register(http: &reqwest::Client, settings: &Settings) -> anyhow::Result<Identity> {
    let url = format!(
        "{}/agent/register",
        settings.agent.gateway_url.trim_end_matches('/')
    );
    let body = serde_json::json!({
        "name": settings.agent.name,
        "ip_address": settings.agent.ip_address,
        "capacity": settings.agent.capacity,
        "prefetch": settings.agent.prefetch(),
        "systems": settings.agent.systems.keys().collect::<Vec<_>>(),
        "tags": settings.agent.tags,
    });
    let mut wait = Duration::from_millis(200);
    loop {
        let outcome = http
            .post(&url)
            .bearer_auth(&settings.agent.token)
            .json(&body)
            .send()
            .await;
        match outcome {
            Ok(r) if r.status().is_success() => {
                return r
                    .json::<Identity>()
                    .await
                    .context("reading the registration");
            }
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                anyhow::bail!("registration refused ({status}): {text}");
            }
            Ok(r) => tracing::warn!(status = %r.status(), "registration failed; retrying"),
            Err(e) => tracing::warn!(error = %e, "gateway unreachable; retrying"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("bot-{}", std::process::id()))
}
