//! Runs a `system` job: decodes the CSV and runs the system's automation once
//! per row, the row as a JSON object on stdin, as argv (never through a
//! shell), in its own process group so a timeout kills everything it started.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use orq_shared::attachment;
use orq_shared::messages::RowError;
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
}

#[derive(Debug)]
pub enum JobOutcome {
    Complete {
        rows_total: u32,
    },
    Failed {
        error: String,
        failed_rows: Vec<RowError>,
    },
}

/// Runs rows `start..` of the attachment with `argv`, calling `progress(done,
/// total)` after each row. `cancel` stops the row running (its process
/// group) and the rows after it.
pub async fn run_job<F, Fut>(
    argv: &[String],
    attachment_b64: &str,
    start: usize,
    env: &[(String, String)],
    limits: &Limits,
    cancel: &CancellationToken,
    mut progress: F,
) -> JobOutcome
where
    F: FnMut(u32, u32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rows = match attachment::parse(attachment_b64) {
        Ok(rows) => rows,
        Err(e) => {
            return JobOutcome::Failed {
                error: e.to_string(),
                failed_rows: Vec::new(),
            };
        }
    };
    let total = u32::try_from(rows.len()).unwrap_or(u32::MAX);
    let mut failed = Vec::new();
    for (index, row) in rows.iter().enumerate().skip(start) {
        if cancel.is_cancelled() {
            return JobOutcome::Failed {
                error: "canceled".into(),
                failed_rows: failed,
            };
        }
        let number = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let input = serde_json::Value::Object(row.clone()).to_string();
        let mut row_env = env.to_vec();
        row_env.push(("ORQ_ROW_NUMBER".into(), number.to_string()));
        if let Err(error) = run_row(argv, &input, &row_env, limits, cancel).await {
            failed.push(RowError { row: number, error });
        }
        if number < total {
            progress(number, total).await;
        }
    }
    if failed.is_empty() {
        JobOutcome::Complete { rows_total: total }
    } else {
        JobOutcome::Failed {
            error: format!("{} of {} rows failed", failed.len(), total),
            failed_rows: failed,
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
    let mut command = Command::new(program);
    scrub_env(&mut command);
    let mut child = command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
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
            0,
            &[],
            &limits(),
            &CancellationToken::new(),
            |d, t| {
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
            0,
            &[],
            &limits(),
            &CancellationToken::new(),
            |_, _| async {},
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
            0,
            &[],
            &limits(),
            &cancel,
            |_, _| async {},
        )
        .await;
        let JobOutcome::Failed { error, failed_rows } = outcome else {
            panic!("expected a canceled job");
        };
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
            2,
            &[],
            &limits(),
            &CancellationToken::new(),
            |d, t| {
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
}
