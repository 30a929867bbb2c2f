//! Runs a script job: the script is fetched from the gateway by id, checked
//! against the job's checksum and cached under it with the exec bit; it
//! runs through the task's `run_as` as argv (never a shell), with the
//! task's environment, in its own process group. At its timeout (or when
//! the job is canceled) the group gets SIGTERM, then SIGKILL after a grace
//! period. Stdout is read line by line for marker lines:
//!
//! * `::percent::40` — the job is 40 % done (a PERCENT_CHANGE event);
//! * `::step::Downloading files` — the job's current step (a STEP_CHANGE).
//!
//! As in TheEye, when the last other stdout line is a JSON object with a
//! `state` (`success`/`failure`), that state decides the outcome over the
//! exit code, and its `output` becomes the job's output.

use base64::Engine;
use nix::sys::signal::{Signal, killpg};
use orq_shared::domain::JobStatus;
use orq_shared::messages::ScriptSpec;
use orq_shared::task_def::RunAs;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::runner::{Group, group_command, stop_group};

/// Longest stdout line looked at for markers and the last-line JSON; the
/// rest of a longer line is dropped from that view (not from the tail).
const MAX_LINE: usize = 65_536;

/// What a running script tells its caller, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptEvent {
    /// The process started (it exists; the job is RUNNING from now).
    Started,
    Marker(Marker),
}

/// A marker line of a script's stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    Percent(u8),
    Step(String),
}

/// Reads a marker from one stdout line.
pub fn parse_marker(line: &str) -> Option<Marker> {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(rest) = line.strip_prefix("::percent::") {
        let n: f64 = rest.trim().trim_end_matches('%').trim().parse().ok()?;
        if !(0.0..=100.0).contains(&n) {
            return None;
        }
        return Some(Marker::Percent(n.floor() as u8));
    }
    let step = line.strip_prefix("::step::")?.trim();
    (!step.is_empty()).then(|| Marker::Step(step.chars().take(500).collect()))
}

/// What a script's last stdout line says, when it is a JSON object with a
/// `state`: (success, output).
pub fn parse_last_line(line: &str) -> Option<(bool, Option<Value>)> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(line.trim()) else {
        return None;
    };
    let success = match map.get("state")?.as_str()?.to_ascii_lowercase().as_str() {
        "success" | "ok" | "complete" | "completed" => true,
        "failure" | "failed" | "error" => false,
        _ => return None,
    };
    Some((success, map.get("output").cloned()))
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScriptResult {
    pub status: JobStatus,
    pub exit_code: Option<i32>,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub stdout: String,
    pub stderr: String,
}

impl ScriptResult {
    fn failed(error: String) -> ScriptResult {
        ScriptResult {
            status: JobStatus::Failed,
            exit_code: None,
            output: None,
            error: Some(error),
            stdout: String::new(),
            stderr: String::new(),
        }
    }
}

/// Where scripts come from and are cached.
pub struct ScriptCache {
    pub dir: PathBuf,
    pub http: reqwest::Client,
    pub gateway_url: String,
    pub token: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ScriptCache {
    /// The script's path on this machine, fetched when not cached.
    pub async fn path_for(&self, spec: &ScriptSpec) -> Result<PathBuf, String> {
        let checksum = spec.checksum.to_ascii_lowercase();
        let well_formed = checksum.len() == 64 && checksum.bytes().all(|b| b.is_ascii_hexdigit());
        let plain_name = !spec.filename.is_empty()
            && !spec.filename.contains('/')
            && spec.filename != "."
            && spec.filename != "..";
        if !well_formed || !plain_name {
            return Err("the job's script reference is malformed".into());
        }
        let dir = self.dir.join(&checksum);
        let path = dir.join(&spec.filename);
        if let Ok(bytes) = tokio::fs::read(&path).await
            && sha256_hex(&bytes) == checksum
        {
            return Ok(path);
        }
        let url = format!(
            "{}/agent/scripts/{}",
            self.gateway_url.trim_end_matches('/'),
            spec.script_id
        );
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("fetching the script: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("fetching the script: HTTP {}", response.status()));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("reading the script: {e}"))?;
        let content = body["content_base64"]
            .as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .ok_or("the gateway sent no script content")?;
        if sha256_hex(&content) != checksum {
            return Err(
                "the script changed since this job was created (checksum mismatch); run the task again"
                    .into(),
            );
        }
        write_executable(&dir, &path, &content)
            .await
            .map_err(|e| format!("caching the script in {}: {e}", dir.display()))?;
        Ok(path)
    }
}

/// Writes to a temporary name and renames: a concurrent run of the same
/// script never sees half a file.
async fn write_executable(dir: &Path, path: &Path, content: &[u8]) -> std::io::Result<()> {
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .await?;
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    tokio::fs::write(&tmp, content).await?;
    tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).await?;
    tokio::fs::rename(&tmp, path).await
}

#[derive(Debug, Clone)]
pub struct RunLimits {
    pub timeout: Duration,
    pub kill_grace: Duration,
    pub tail_bytes: usize,
    /// As `runner::Limits::guard`.
    pub guard: Option<PathBuf>,
}

/// Runs `script` per `spec`; `on_event` is called once the process has
/// started and then for each marker line, in order, before the result is
/// returned.
pub async fn run<F, Fut>(
    script: &Path,
    spec: &ScriptSpec,
    extra_env: &[(String, String)],
    limits: &RunLimits,
    cancel: &CancellationToken,
    mut on_event: F,
) -> ScriptResult
where
    F: FnMut(ScriptEvent) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let argv = match RunAs::parse(&spec.run_as) {
        Ok(r) => r.argv(&script.display().to_string(), &spec.args),
        Err(e) => return ScriptResult::failed(format!("run_as: {e}")),
    };
    let Some((program, args)) = argv.split_first() else {
        return ScriptResult::failed("run_as is empty".into());
    };
    if cancel.is_cancelled() {
        return ScriptResult::failed("canceled before it started".into());
    }
    let mut command = group_command(program, args, limits.guard.as_deref(), limits.kill_grace);
    let env: BTreeMap<&str, &str> = spec
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .collect();
    let spawned = command
        .envs(env)
        .current_dir(script.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return ScriptResult::failed(format!("cannot start {program}: {e}")),
    };
    let group = Group::of(&child);
    let pgid = group.0;
    on_event(ScriptEvent::Started).await;
    let (markers_tx, mut markers) = mpsc::unbounded_channel();
    let stdout = child.stdout.take();
    let mut out_reader = tokio::spawn(read_stdout(stdout, limits.tail_bytes, markers_tx));
    let stderr = child.stderr.take();
    let tail_bytes = limits.tail_bytes;
    let mut err_reader = tokio::spawn(async move {
        match stderr {
            Some(s) => read_tail(s, tail_bytes).await,
            None => String::new(),
        }
    });
    let deadline = tokio::time::sleep(limits.timeout);
    tokio::pin!(deadline);
    let mut markers_open = true;
    // Why the run was stopped, if it was.
    let mut stopped: Option<JobStatus> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.ok(),
            () = &mut deadline, if stopped.is_none() => {
                stopped = Some(JobStatus::Timeout);
                stop_group(&mut child, pgid, limits.kill_grace).await;
            }
            () = cancel.cancelled(), if stopped.is_none() => {
                stopped = Some(JobStatus::Canceled);
                stop_group(&mut child, pgid, limits.kill_grace).await;
            }
            m = markers.recv(), if markers_open => match m {
                Some(m) => on_event(ScriptEvent::Marker(m)).await,
                None => markers_open = false,
            },
        }
    };
    // Whatever the script left running in its group goes with it.
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let (stdout, last_line) = match tokio::time::timeout(limits.kill_grace, &mut out_reader).await {
        Ok(Ok(v)) => v,
        _ => {
            out_reader.abort();
            (String::new(), None)
        }
    };
    while let Ok(m) = markers.try_recv() {
        on_event(ScriptEvent::Marker(m)).await;
    }
    let stderr = match tokio::time::timeout(limits.kill_grace, &mut err_reader).await {
        Ok(Ok(text)) => text,
        _ => {
            err_reader.abort();
            String::new()
        }
    };
    let exit_code = status.and_then(|s| s.code());
    let mut result = ScriptResult {
        status: JobStatus::Complete,
        exit_code,
        output: None,
        error: None,
        stdout,
        stderr,
    };
    match stopped {
        Some(JobStatus::Timeout) => {
            result.status = JobStatus::Timeout;
            result.error = Some(format!(
                "timed out after {} s; the process group was stopped",
                limits.timeout.as_secs()
            ));
            return result;
        }
        Some(_) => {
            result.status = JobStatus::Failed;
            result.error = Some("canceled; the process group was stopped".into());
            return result;
        }
        None => {}
    }
    if let Some((success, output)) = last_line.as_deref().and_then(parse_last_line) {
        result.output = output;
        if !success {
            result.status = JobStatus::Failed;
            result.error = Some("the script reported state failure".into());
        }
        return result;
    }
    if exit_code != Some(0) {
        result.status = JobStatus::Failed;
        let why = exit_code.map_or_else(
            || "killed by a signal".to_string(),
            |c| format!("exit code {c}"),
        );
        let last_err = result
            .stderr
            .trim()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        result.error = Some(if last_err.is_empty() {
            why
        } else {
            format!("{why}: {last_err}")
        });
    }
    result
}

/// Reads stdout: keeps the tail, sends marker lines, remembers the last
/// other non-empty line.
async fn read_stdout(
    stdout: Option<tokio::process::ChildStdout>,
    tail_bytes: usize,
    markers: mpsc::UnboundedSender<Marker>,
) -> (String, Option<String>) {
    let Some(mut stdout) = stdout else {
        return (String::new(), None);
    };
    let mut tail: Vec<u8> = Vec::new();
    let mut line: Vec<u8> = Vec::new();
    let mut last: Option<String> = None;
    let mut buf = [0u8; 8192];
    let take_line = |line: &mut Vec<u8>, last: &mut Option<String>| {
        let text = String::from_utf8_lossy(line).into_owned();
        line.clear();
        match parse_marker(&text) {
            Some(m) => {
                let _ = markers.send(m);
            }
            None if !text.trim().is_empty() => *last = Some(text),
            None => {}
        }
    };
    while let Ok(n) = stdout.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > tail_bytes {
            tail.drain(..tail.len() - tail_bytes);
        }
        for &b in &buf[..n] {
            if b == b'\n' {
                take_line(&mut line, &mut last);
            } else if line.len() < MAX_LINE {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        take_line(&mut line, &mut last);
    }
    (String::from_utf8_lossy(&tail).into_owned(), last)
}

async fn read_tail(mut reader: impl AsyncRead + Unpin, tail_bytes: usize) -> String {
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > tail_bytes {
            tail.drain(..tail.len() - tail_bytes);
        }
    }
    String::from_utf8_lossy(&tail).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers() {
        assert_eq!(parse_marker("::percent::40"), Some(Marker::Percent(40)));
        assert_eq!(
            parse_marker("::percent:: 12.7%\r"),
            Some(Marker::Percent(12))
        );
        assert_eq!(parse_marker("::percent::140"), None);
        assert_eq!(parse_marker("::percent::x"), None);
        assert_eq!(
            parse_marker("::step:: Downloading files "),
            Some(Marker::Step("Downloading files".into()))
        );
        assert_eq!(parse_marker("::step::"), None);
        assert_eq!(parse_marker("percent 40"), None);
    }

    #[test]
    fn last_line_json() {
        assert_eq!(
            parse_last_line(r#"{"state":"success","output":["a",1]}"#),
            Some((true, Some(serde_json::json!(["a", 1]))))
        );
        assert_eq!(
            parse_last_line(r#"{"state":"failure"}"#),
            Some((false, None))
        );
        assert_eq!(parse_last_line(r#"{"output":1}"#), None);
        assert_eq!(parse_last_line("done"), None);
        assert_eq!(parse_last_line(r#"{"state":"maybe"}"#), None);
    }

    fn spec(run_as: &str, args: &[&str], timeout_secs: u32) -> ScriptSpec {
        ScriptSpec {
            script_id: orq_shared::domain::ScriptId::new(),
            checksum: String::new(),
            filename: "s.sh".into(),
            run_as: run_as.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: BTreeMap::from([("GREETING".to_string(), "hola".to_string())]),
            timeout_secs,
        }
    }

    fn limits(timeout: Duration) -> RunLimits {
        RunLimits {
            timeout,
            kill_grace: Duration::from_millis(300),
            tail_bytes: 1024,
            guard: None,
        }
    }

    fn script(body: &str) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("s.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        (dir, path)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!("orq-script-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&p).expect("temp dir");
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[tokio::test]
    async fn arguments_env_markers_and_last_line() {
        let (_d, path) = script(
            r#"echo "::step::starting"; echo "::percent::50"; echo "$GREETING $1|$2" >&2; echo '{"state":"success","output":["'"$1"'"]}'"#,
        );
        let mut seen = Vec::new();
        let r = run(
            &path,
            &spec("%script%", &["a b", "$(x)"], 10),
            &[],
            &limits(Duration::from_secs(10)),
            &CancellationToken::new(),
            |e| {
                seen.push(e);
                async {}
            },
        )
        .await;
        assert_eq!(r.status, JobStatus::Complete, "{r:?}");
        assert_eq!(r.output, Some(serde_json::json!(["a b"])));
        assert_eq!(r.stderr.trim(), "hola a b|$(x)");
        assert_eq!(
            seen,
            vec![
                ScriptEvent::Started,
                ScriptEvent::Marker(Marker::Step("starting".into())),
                ScriptEvent::Marker(Marker::Percent(50))
            ]
        );
    }

    #[tokio::test]
    async fn exit_code_and_failure_state() {
        let (_d, path) = script("echo oops >&2; exit 4");
        let r = run(
            &path,
            &spec("sh %script%", &[], 10),
            &[],
            &limits(Duration::from_secs(10)),
            &CancellationToken::new(),
            |_| async {},
        )
        .await;
        assert_eq!(r.status, JobStatus::Failed);
        assert_eq!(r.exit_code, Some(4));
        assert_eq!(r.error.as_deref(), Some("exit code 4: oops"));
        let (_d, path) = script(r#"echo '{"state":"failure","output":"no"}'"#);
        let r = run(
            &path,
            &spec("%script%", &[], 10),
            &[],
            &limits(Duration::from_secs(10)),
            &CancellationToken::new(),
            |_| async {},
        )
        .await;
        assert_eq!(r.status, JobStatus::Failed);
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(r.output, Some(serde_json::json!("no")));
    }

    #[tokio::test]
    async fn a_script_ignoring_sigterm_is_killed_with_its_group() {
        let marker = std::env::temp_dir().join(format!("orq-survivor-{}", uuid::Uuid::new_v4()));
        let (_d, path) = script(&format!(
            "trap '' TERM; (trap '' TERM; sleep 2; touch {}) & while true; do sleep 0.1; done",
            marker.display()
        ));
        let started = std::time::Instant::now();
        let r = run(
            &path,
            &spec("%script%", &[], 1),
            &[],
            &limits(Duration::from_millis(500)),
            &CancellationToken::new(),
            |_| async {},
        )
        .await;
        assert_eq!(r.status, JobStatus::Timeout);
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "a process of the group survived");
    }

    #[tokio::test]
    async fn cancel_stops_the_run() {
        let (_d, path) = script("sleep 30");
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.cancel();
        });
        let r = run(
            &path,
            &spec("%script%", &[], 60),
            &[],
            &limits(Duration::from_secs(60)),
            &cancel,
            |_| async {},
        )
        .await;
        assert_eq!(r.status, JobStatus::Failed);
        assert!(r.error.unwrap_or_default().contains("canceled"));
    }
}
