//! Test and benchmark harness: starts the real binaries against the real
//! PostgreSQL and RabbitMQ, each run with its own database and its own
//! exchange/queue prefix, and cleans both up.
//!
//! The binaries are taken from the cargo target directory this test binary
//! lives in (`deploy/test.sh` builds them first).

use anyhow::{Context, anyhow};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub use orq_shared;

/// The shared servers, overridable for other machines.
pub fn pg_admin_url() -> String {
    std::env::var("ORQ_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn amqp_url() -> String {
    std::env::var("ORQ_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10".into())
}

/// The directory holding the workspace binaries next to this executable.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Test binaries live in target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A running binary, killed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(0)
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `bound` for the exit; true when it exited.
    pub fn terminate(&mut self, bound: Duration) -> bool {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        while start.elapsed() < bound {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One isolated deployment: a database, a prefix, a customer with tokens.
pub struct Env {
    pub db_name: String,
    pub db_url: String,
    pub prefix: String,
    pub dir: PathBuf,
    pub admin_token: String,
    pub bot_token: String,
    pub customer: String,
    /// Extra `ORQ_*` variables given to every process.
    pub vars: Vec<(String, String)>,
    cleaned: bool,
}

impl Env {
    pub async fn new(label: &str) -> anyhow::Result<Env> {
        let short = Uuid::new_v4().simple().to_string()[..12].to_string();
        let db_name = format!("orq_t_{label}_{short}");
        let prefix = format!("orqt.{label}.{short}");
        let (client, conn) = tokio_postgres::connect(
            &format!("{}/postgres", pg_admin_url()),
            tokio_postgres::NoTls,
        )
        .await
        .context("connecting to the shared PostgreSQL")?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE \"{db_name}\""))
            .await?;
        let dir = std::env::temp_dir().join(format!("orq-e2e-{label}-{short}"));
        std::fs::create_dir_all(&dir)?;
        let mut env = Env {
            db_url: format!("{}/{db_name}", pg_admin_url()),
            db_name,
            prefix,
            dir,
            admin_token: String::new(),
            bot_token: String::new(),
            customer: format!("acme-{short}"),
            vars: Vec::new(),
            cleaned: false,
        };
        let created = env.admin(&["create-customer", &env.customer.clone()])?;
        env.admin_token = created["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        env.bot_token = env.token(&env.customer.clone(), "bot")?;
        Ok(env)
    }

    /// Runs `gateway admin ARGS` and parses its JSON line.
    pub fn admin(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = self
            .command("gateway")
            .arg("admin")
            .args(args)
            .output()
            .context("running gateway admin")?;
        anyhow::ensure!(
            out.status.success(),
            "gateway admin {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    pub fn token(&self, customer: &str, role: &str) -> anyhow::Result<String> {
        let v = self.admin(&["create-token", "--customer", customer, "--role", role])?;
        v["access_token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no token in {v}"))
    }

    /// A command for a workspace binary with this deployment's settings.
    pub fn command(&self, binary: &str) -> Command {
        let mut cmd = Command::new(bin(binary));
        cmd.current_dir(repo_root())
            .env_remove("ORQ_CONFIG")
            .env("ORQ_DATABASE__URL", &self.db_url)
            .env("ORQ_AMQP__URL", amqp_url())
            .env("ORQ_AMQP__PREFIX", &self.prefix)
            .env("ORQ_LOG__LEVEL", "info")
            .env("RUST_BACKTRACE", "0");
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn spawn(&self, name: &str, mut cmd: Command) -> anyhow::Result<Proc> {
        let log = self.dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// Starts a gateway on a free port and waits until it is ready.
    pub async fn start_gateway(&self, extra: &[(&str, &str)]) -> anyhow::Result<(Proc, String)> {
        let port = free_port();
        let mut cmd = self.command("gateway");
        cmd.env("ORQ_GATEWAY__LISTEN", format!("127.0.0.1:{port}"));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut proc = self.spawn(&format!("gateway-{port}"), cmd)?;
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("{url}/readyz"), &mut proc).await?;
        Ok((proc, url))
    }

    pub fn start_dispatcher(&self, name: &str, extra: &[(&str, &str)]) -> anyhow::Result<Proc> {
        let mut cmd = self.command("dispatcher");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        self.spawn(name, cmd)
    }

    pub fn start_reaper(&self) -> anyhow::Result<Proc> {
        let cmd = self.command("timeout-reaper");
        self.spawn("timeout-reaper", cmd)
    }

    /// Starts an agent named `name` with `config` (a TOML file) and waits
    /// until its bot is registered.
    pub async fn start_agent(
        &self,
        gateway: &str,
        name: &str,
        config: &Path,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        let mut cmd = self.command("bot-agent");
        cmd.arg("--config")
            .arg(config)
            .env("ORQ_AGENT__TOKEN", &self.bot_token)
            .env("ORQ_AGENT__NAME", name)
            .env("ORQ_AGENT__GATEWAY_URL", gateway);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut proc = self.spawn(&format!("agent-{name}"), cmd)?;
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let bots: serde_json::Value = client
                .get(format!("{gateway}/bots?name={name}"))
                .send()
                .await?
                .json()
                .await?;
            // Registration declares the bot's queue: work sent from now on
            // waits for the agent even if it is not consuming yet.
            if bots.as_array().is_some_and(|b| !b.is_empty()) {
                return Ok(proc);
            }
            anyhow::ensure!(!proc.exited(), "agent {name} exited:\n{}", proc.log_text());
            anyhow::ensure!(
                Instant::now() < deadline,
                "agent {name} did not register:\n{}",
                proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An HTTP client that sends the admin token.
    pub fn client(&self) -> reqwest::Client {
        client_with(&self.admin_token)
    }

    pub async fn db(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Drops the database and deletes every queue and exchange of the prefix.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.cleaned = true;
        let bots: Vec<orq_shared::domain::BotId> = match self.db().await {
            Ok(db) => db
                .query("SELECT id FROM bots", &[])
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| orq_shared::domain::BotId(r.get(0)))
                        .collect()
                })
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        teardown_broker(&self.prefix, &bots).await?;
        drop_database(&self.db_name).await?;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // A failed test: keep the logs for reading, drop the database.
        eprintln!("test logs kept in {}", self.dir.display());
        let _ = Command::new("psql")
            .args([&pg_admin_url(), "-qc"])
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.db_name
            ))
            .output();
    }
}

pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

pub async fn wait_ready(url: &str, proc: &mut Proc) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(url).await
            && r.status().is_success()
        {
            return Ok(());
        }
        anyhow::ensure!(!proc.exited(), "{} exited:\n{}", proc.name, proc.log_text());
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} not ready:\n{}",
            proc.name,
            proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn drop_database(name: &str) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(
        &format!("{}/postgres", pg_admin_url()),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await?;
    Ok(())
}

pub async fn teardown_broker(
    prefix: &str,
    bots: &[orq_shared::domain::BotId],
) -> anyhow::Result<()> {
    let conn =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    orq_shared::broker::Topology::new(prefix)
        .teardown(&ch, bots)
        .await?;
    let _ = conn.close(200, "cleanup".into()).await;
    Ok(())
}

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes an agent configuration whose systems are given as (name, argv).
pub fn agent_config(
    dir: &Path,
    file: &str,
    capacity: u16,
    systems: &[(&str, &[&str])],
) -> anyhow::Result<PathBuf> {
    let mut text = format!(
        "[agent]\ncapacity = {capacity}\nheartbeat_interval_ms = 1000\n\n[agent.systems]\n"
    );
    for (name, argv) in systems {
        let list: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
        text.push_str(&format!("{name:?} = [{}]\n", list.join(", ")));
    }
    let path = dir.join(file);
    std::fs::write(&path, text)?;
    Ok(path)
}
