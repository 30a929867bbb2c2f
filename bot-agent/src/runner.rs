//! Runs a `system` job: decodes the CSV and runs the system's automation once
//! per row, the row as a JSON object on stdin, as argv (never through a
//! shell), in its own process group so a timeout kills everything it started.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use orq_shared::attachment;
use orq_shared::domain::JobId;
use orq_shared::messages::RowError;
use orq_shared::rows;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Runs nothing: measures orchestration without process start-up.
pub const BUILTIN_NOOP: &str = "builtin:noop";

/// Bytes of stderr kept for an error message.
const TAIL_BYTES: usize = 2048;

#[derive(Debug, Clone)]
pub struct Limits {
    pub row_timeout: Duration,
    pub kill_grace: Duration,
    /// The program that guards each run (`guard`: the agent's own binary),
    /// so no run outlives the agent; `None` runs the program directly.
    pub guard: Option<PathBuf>,
}

#[derive(Debug)]
pub enum JobOutcome {
    Complete {
        rows_total: u32,
    },
    Failed {
        error: String,
        failed_rows: Vec<RowError>,
        /// Rows finished (done or failed), earlier attempts' included.
        rows_done: u32,
    },
}

/// Where a job starts: after the rows earlier attempts reported done,
/// with the failures among them.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    pub rows_done: usize,
    pub failed_rows: Vec<RowError>,
}

/// Runs rows `resume.rows_done..` of the attachment with `argv`. After each
/// row but the last, `progress(done, total, failure)` is awaited before
/// the next row starts (the caller records the row as done there, so a
/// crash re-runs at most the row in flight). Every run gets `env` plus
/// `ORQ_ROW_NUMBER` and `ORQ_IDEMPOTENCY_KEY` (`rows::row_key`). `cancel`
/// stops the row running (its process group) and the rows after it.
#[allow(clippy::too_many_arguments)]
pub async fn run_job<F, Fut>(
    argv: &[String],
    attachment_b64: &str,
    job: JobId,
    resume: Resume,
    env: &[(String, String)],
    limits: &Limits,
    cancel: &CancellationToken,
    mut progress: F,
) -> JobOutcome
where
    F: FnMut(u32, u32, Option<RowError>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rows = match attachment::parse(attachment_b64) {
        Ok(rows) => rows,
        Err(e) => {
            return JobOutcome::Failed {
                error: e.to_string(),
                failed_rows: Vec::new(),
                rows_done: 0,
            };
        }
    };
    let total = u32::try_from(rows.len()).unwrap_or(u32::MAX);
    let start = resume.rows_done.min(rows.len());
    // Failures of earlier attempts count in the outcome; only those among
    // the rows done (a later row is run again).
    let mut failed: Vec<RowError> = resume
        .failed_rows
        .into_iter()
        .filter(|r| (r.row as usize) <= start)
        .collect();
    for (index, row) in rows.iter().enumerate().skip(start) {
        if cancel.is_cancelled() {
            return JobOutcome::Failed {
                error: "canceled".into(),
                failed_rows: failed,
                rows_done: u32::try_from(index).unwrap_or(u32::MAX),
            };
        }
        let number = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let input = serde_json::Value::Object(row.clone()).to_string();
        let mut row_env = env.to_vec();
        row_env.push(("ORQ_ROW_NUMBER".into(), number.to_string()));
        row_env.push(("ORQ_IDEMPOTENCY_KEY".into(), rows::row_key(job, number)));
        let failure = match run_row(argv, &input, &row_env, limits, cancel).await {
            Ok(()) => None,
            // Stopped by a cancel (the job canceled, or this attempt taken
            // back): the row is not done. No progress report claims it: a
            // taken-back attempt's late progress is kept, and the next
            // attempt would take the stopped row for a failed one and skip
            // it. The outcome (refused either way) names where it stopped.
            Err(error) if cancel.is_cancelled() => {
                failed.push(RowError { row: number, error });
                return JobOutcome::Failed {
                    error: "canceled".into(),
                    failed_rows: failed,
                    rows_done: u32::try_from(index).unwrap_or(u32::MAX),
                };
            }
            Err(error) => {
                let f = RowError { row: number, error };
                failed.push(f.clone());
                Some(f)
            }
        };
        if number < total {
            progress(number, total, failure).await;
        }
    }
    if failed.is_empty() {
        JobOutcome::Complete { rows_total: total }
    } else {
        JobOutcome::Failed {
            error: format!("{} of {} rows failed", failed.len(), total),
            failed_rows: failed,
            rows_done: total,
        }
    }
}

/// One run of the automation; `Err` carries why the row failed.
pub async fn run_row(
    argv: &[String],
    input: &str,
    env: &[(String, String)],
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("the system's command is empty".into());
    };
    if program == BUILTIN_NOOP {
        return Ok(());
    }
    let mut command = group_command(program, args, limits.guard.as_deref(), limits.kill_grace);
    let mut child = command
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let group = Group::of(&child);
    let pgid = group.0;
    // Writing stdin runs beside the wait: a program that never reads a large
    // row must not hold the runner past its timeout.
    let stdin = child.stdin.take();
    let line = format!("{input}\n");
    let feeder = tokio::spawn(async move {
        if let Some(mut stdin) = stdin {
            // A program that ignores its input may close stdin early: not an
            // error. One write: a reader sees the whole line at once.
            let _ = stdin.write_all(line.as_bytes()).await;
        }
    });
    let stderr = child.stderr.take();
    let mut tail = tokio::spawn(async move {
        match stderr {
            Some(s) => read_tail(s).await,
            None => String::new(),
        }
    });
    let waited = tokio::select! {
        waited = tokio::time::timeout(limits.row_timeout, child.wait()) => Some(waited),
        () = cancel.cancelled() => None,
    };
    feeder.abort();
    let status = match waited {
        Some(Ok(status)) => status.map_err(|e| format!("waiting for {program}: {e}"))?,
        None => {
            stop_group(&mut child, pgid, limits.kill_grace).await;
            tail.abort();
            return Err("canceled".into());
        }
        Some(Err(_)) => {
            stop_group(&mut child, pgid, limits.kill_grace).await;
            tail.abort();
            return Err(format!(
                "timed out after {} ms",
                limits.row_timeout.as_millis()
            ));
        }
    };
    // Whatever the row left running in its group goes with it; a background
    // child holding stderr open would otherwise hold the row too.
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let tail = match tokio::time::timeout(limits.kill_grace, &mut tail).await {
        Ok(text) => text.unwrap_or_default(),
        Err(_) => {
            tail.abort();
            String::new()
        }
    };
    if status.success() {
        Ok(())
    } else {
        let code = status.code().map_or_else(
            || "killed by a signal".to_string(),
            |c| format!("exit code {c}"),
        );
        Err(if tail.is_empty() {
            code
        } else {
            format!("{code}: {}", tail.trim())
        })
    }
}

/// Variables of the agent's own configuration that carry secrets (its bot
/// token, connection URLs with passwords): an automation or a script has
/// no business reading them.
const SECRET_VARS: &[&str] = &[
    "ORQ_AGENT__TOKEN",
    "ORQ_DATABASE__URL",
    "ORQ_AMQP__URL",
    "ORQ_SECURITY__SECRET_KEY",
];

/// Removes the agent's secrets from a child's environment.
pub fn scrub_env(command: &mut Command) {
    for var in SECRET_VARS {
        command.env_remove(var);
    }
}

/// A command for `program args` in a process group of its own, through
/// `guard` when there is one, without the agent's secrets in its
/// environment.
pub(crate) fn group_command(
    program: &str,
    args: &[String],
    guard: Option<&Path>,
    grace: Duration,
) -> Command {
    let mut command = match guard {
        Some(guard) => {
            let mut c = Command::new(guard);
            c.args(crate::guard::prefix(grace)).arg(program).args(args);
            c
        }
        None => {
            let mut c = Command::new(program);
            c.args(args);
            c
        }
    };
    scrub_env(&mut command);
    command.process_group(0).kill_on_drop(true);
    command
}

/// A run's process group; whatever is left of it is killed when the run
/// is dropped (its task aborted, the agent shutting down), not only when
/// it ends normally.
pub(crate) struct Group(pub Option<Pid>);

impl Group {
    pub fn of(child: &tokio::process::Child) -> Group {
        Group(
            child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .map(Pid::from_raw),
        )
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// SIGTERM to the whole group, then SIGKILL after the grace period.
pub(crate) async fn stop_group(
    child: &mut tokio::process::Child,
    pgid: Option<Pid>,
    grace: Duration,
) {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            let _ = killpg(pgid, Signal::SIGKILL);
            return;
        }
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let _ = child.kill().await;
}

async fn read_tail(mut reader: impl AsyncRead + Unpin) -> String {
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > TAIL_BYTES {
            tail.drain(..tail.len() - TAIL_BYTES);
        }
    }
    String::from_utf8_lossy(&tail).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            row_timeout: Duration::from_secs(10),
            kill_grace: Duration::from_millis(200),
            guard: None,
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn each_row_reaches_the_automation_on_stdin() {
        let dir = std::env::temp_dir().join(format!("orq-runner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let out = dir.join("rows.txt");
        let argv = sh(&format!("cat >> {}", out.display()));
        let csv = attachment::encode("name,age\nAna,30\nBo,41\n");
        let mut seen = Vec::new();
        let outcome = run_job(
            &argv,
            &csv,
            JobId::new(),
            Resume::default(),
            &[],
            &limits(),
            &CancellationToken::new(),
            |d, t, _| {
                seen.push((d, t));
                async {}
            },
        )
        .await;
        assert!(matches!(outcome, JobOutcome::Complete { rows_total: 2 }));
        assert_eq!(seen, vec![(1, 2)]);
        let text = std::fs::read_to_string(&out).expect("written");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines[0]["name"], "Ana");
        assert_eq!(lines[1]["age"], "41");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn failing_rows_are_reported_with_their_stderr() {
        let argv = sh("read row; case \"$row\" in *Bo*) echo bad row >&2; exit 3;; esac");
        let csv = attachment::encode("name\nAna\nBo\n");
        let outcome = run_job(
            &argv,
            &csv,
            JobId::new(),
            Resume::default(),
            &[],
            &limits(),
            &CancellationToken::new(),
            |_, _, _| async {},
        )
        .await;
        let JobOutcome::Failed { failed_rows, .. } = outcome else {
            panic!("expected failure");
        };
        assert_eq!(failed_rows.len(), 1);
        assert_eq!(failed_rows[0].row, 2);
        assert!(failed_rows[0].error.contains("exit code 3"));
        assert!(failed_rows[0].error.contains("bad row"));
    }

    #[tokio::test]
    async fn a_row_past_its_timeout_is_killed_with_its_children() {
        let limits = Limits {
            row_timeout: Duration::from_millis(300),
            kill_grace: Duration::from_millis(200),
            guard: None,
        };
        let marker = std::env::temp_dir().join(format!("orq-orphan-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        // A grandchild that would write the marker if it survived.
        let argv = sh(&format!("(sleep 1; touch {}) & sleep 30", marker.display()));
        let err = run_row(&argv, "{}", &[], &limits, &CancellationToken::new())
            .await
            .expect_err("times out");
        assert!(err.contains("timed out"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "the process group was not killed");
    }

    #[tokio::test]
    async fn a_program_that_never_reads_its_input_still_times_out() {
        let limits = Limits {
            row_timeout: Duration::from_millis(300),
            kill_grace: Duration::from_millis(200),
            guard: None,
        };
        // Far more than a pipe buffer, to a program that never reads stdin.
        let big = "x".repeat(1 << 20);
        let err = run_row(
            &sh("sleep 30"),
            &big,
            &[],
            &limits,
            &CancellationToken::new(),
        )
        .await
        .expect_err("times out");
        assert!(err.contains("timed out"), "{err}");
    }

    #[tokio::test]
    async fn a_background_child_does_not_hold_a_finished_row() {
        let started = std::time::Instant::now();
        // Exits at once, leaving a child that keeps stderr open for 30 s.
        run_row(
            &sh("cat > /dev/null; sleep 30 & exit 0"),
            "{}",
            &[],
            &limits(),
            &CancellationToken::new(),
        )
        .await
        .expect("the row succeeds");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the row waited for its background child"
        );
    }

    #[tokio::test]
    async fn cancel_stops_the_row_and_the_rest() {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.cancel();
        });
        let started = std::time::Instant::now();
        let csv = attachment::encode("n\n1\n2\n3\n");
        let outcome = run_job(
            &sh("sleep 30"),
            &csv,
            JobId::new(),
            Resume::default(),
            &[],
            &limits(),
            &cancel,
            |n, _, _| async move { panic!("no progress for a stopped row: {n}") },
        )
        .await;
        let JobOutcome::Failed {
            error,
            failed_rows,
            rows_done,
        } = outcome
        else {
            panic!("expected a canceled job");
        };
        assert_eq!(
            rows_done, 0,
            "row 1 was stopped, not done; rows 2-3 never ran"
        );
        assert_eq!(error, "canceled");
        assert_eq!(
            failed_rows.len(),
            1,
            "row 1 was stopped, rows 2-3 never ran"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn resumes_from_a_row() {
        let csv = attachment::encode("n\n1\n2\n3\n");
        let mut seen = Vec::new();
        let outcome = run_job(
            &[BUILTIN_NOOP.to_string()],
            &csv,
            JobId::new(),
            Resume {
                rows_done: 2,
                failed_rows: Vec::new(),
            },
            &[],
            &limits(),
            &CancellationToken::new(),
            |d, t, _| {
                seen.push((d, t));
                async {}
            },
        )
        .await;
        assert!(matches!(outcome, JobOutcome::Complete { rows_total: 3 }));
        assert!(
            seen.is_empty(),
            "only row 3 ran, and the last row reports no progress"
        );
    }

    #[tokio::test]
    async fn a_resumed_job_keeps_earlier_failures_and_gives_each_row_its_key() {
        let dir = std::env::temp_dir().join(format!("orq-runner-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let out = dir.join("keys.txt");
        let argv = sh(&format!(
            "echo \"$ORQ_ROW_NUMBER $ORQ_IDEMPOTENCY_KEY $ORQ_JOB_ID\" >> {}",
            out.display()
        ));
        let job = JobId::new();
        let csv = attachment::encode("n\n1\n2\n3\n4\n");
        let mut seen = Vec::new();
        let outcome = run_job(
            &argv,
            &csv,
            job,
            Resume {
                rows_done: 2,
                // Row 1 failed before; row 3's old failure is not "done":
                // row 3 runs again and its old error is dropped.
                failed_rows: vec![
                    RowError {
                        row: 1,
                        error: "exit code 3".into(),
                    },
                    RowError {
                        row: 3,
                        error: "timed out".into(),
                    },
                ],
            },
            &[("ORQ_JOB_ID".to_string(), job.to_string())],
            &limits(),
            &CancellationToken::new(),
            |d, t, f| {
                seen.push((d, t, f.is_some()));
                async {}
            },
        )
        .await;
        let JobOutcome::Failed {
            error,
            failed_rows,
            rows_done,
        } = outcome
        else {
            panic!("row 1 failed earlier: the job fails");
        };
        assert_eq!(rows_done, 4);
        assert_eq!(error, "1 of 4 rows failed");
        assert_eq!(
            failed_rows.iter().map(|r| r.row).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(seen, vec![(3, 4, false)]);
        let text = std::fs::read_to_string(&out).expect("written");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            vec![format!("3 {job}:3 {job}"), format!("4 {job}:4 {job}"),],
            "rows 1-2 were not run again; each run has its row's key"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
