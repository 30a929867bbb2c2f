//! Test and benchmark harness: starts the real binaries against the real
//! PostgreSQL and RabbitMQ, each run with its own database and its own
//! exchange/queue prefix, and cleans both up.
//!
//! The binaries are taken from the cargo target directory this test binary
//! lives in (`deploy/test.sh` builds them first).
//!
//! * this file – `Env` (a database, a prefix, a customer, the processes
//!   started for it), the private servers tests may stop (`PrivatePg`,
//!   `PrivateRabbit`, `RabbitCluster`), polling and posting helpers.
//! * `db`      – `TestDb`: a migrated database alone, for repository tests.
//! * `api`     – `Api`: one customer's view of a running gateway, and the
//!   TheEye (scripts, tasks, jobs) and human-task (micro-tasks, workers)
//!   calls tests make through it, in process or end to end.

use anyhow::{Context, anyhow};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub use orq_shared;

pub mod api;
pub mod db;

pub use api::Api;
pub use db::TestDb;

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

/// Gateway settings with every rate limit off: load generators measure
/// the system, not the limiter (`[limits]`).
pub const NO_RATE_LIMITS: &[(&str, &str)] = &[
    ("ORQ_LIMITS__FINISH__PER_TOKEN", "0"),
    ("ORQ_LIMITS__FINISH__PER_ADDRESS", "0"),
    ("ORQ_LIMITS__CREATE__PER_TOKEN", "0"),
    ("ORQ_LIMITS__CREATE__PER_ADDRESS", "0"),
    ("ORQ_LIMITS__READ__PER_TOKEN", "0"),
    ("ORQ_LIMITS__READ__PER_ADDRESS", "0"),
];

/// A port free right now on 127.0.0.1, for a server that must be told its
/// port before it starts (a restarted gateway, RabbitMQ, the Python peers).
/// It is taken below the kernel's ephemeral range, so no outgoing
/// connection (of this or any test) can be given it between this check
/// and the server's bind; the gateway itself binds port 0 (`start_gateway`).
pub fn free_port() -> u16 {
    use rand::Rng;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000u16.min(ephemeral_start.saturating_sub(1));
    let mut rng = rand::rng();
    for _ in 0..200 {
        let port = rng.random_range(low..ephemeral_start.max(low + 1));
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Builds the workspace's binaries (once per test process) with the cargo
/// and profile running this test, so a test never starts stale code (`cargo
/// test -p orq-e2e` alone used to run whatever was in the target dir).
/// `ORQ_E2E_SKIP_BUILD=1` skips it (binaries built by other means).
fn ensure_built() -> anyhow::Result<()> {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let result = BUILT.get_or_init(|| {
        if std::env::var_os("ORQ_E2E_SKIP_BUILD").is_some() {
            return Ok(());
        }
        let dir = bin_dir();
        let Some(target) = dir.parent() else {
            return Err(format!("no target directory above {}", dir.display()));
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--workspace", "--bins", "--quiet"])
            .current_dir(repo_root())
            .env("CARGO_TARGET_DIR", target);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("building the binaries failed: {status}")),
            Err(e) => Err(format!("running cargo to build the binaries: {e}")),
        }
    });
    result.clone().map_err(anyhow::Error::msg)
}

/// A running binary, killed when dropped (or when its `Env` is cleaned up).
pub struct Proc {
    pub name: String,
    child: Arc<Mutex<Child>>,
    pub log: PathBuf,
}

/// Kills `child` unless it already exited, and reaps it. A child already
/// reaped is not signalled again, so a recycled pid is never hit.
fn stop(child: &Mutex<Child>) {
    let mut child = child
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !matches!(child.try_wait(), Ok(Some(_))) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Proc {
    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child().id()).unwrap_or(0)
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        stop(&self.child);
    }

    /// SIGTERM, then waits up to `bound` for the exit; true when it exited.
    pub fn terminate(&mut self, bound: Duration) -> bool {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        while start.elapsed() < bound {
            if self.exited() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child().try_wait(), Ok(Some(_)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        stop(&self.child);
    }
}

/// One isolated deployment: a database, a prefix, a customer with tokens.
pub struct Env {
    /// `postgres://user@host:port` of the server holding `db_name`.
    pub pg_base: String,
    pub amqp_url: String,
    pub db_name: String,
    pub db_url: String,
    pub prefix: String,
    pub dir: PathBuf,
    pub admin_token: String,
    pub bot_token: String,
    pub customer: String,
    /// `security.secret_key` of this deployment.
    pub secret_key: String,
    /// Extra `ORQ_*` variables given to every process.
    pub vars: Vec<(String, String)>,
    /// Every process started for it: stopped before its queues and
    /// database are removed, so none declares them again.
    children: Mutex<Vec<Arc<Mutex<Child>>>>,
    cleaned: bool,
}

impl Env {
    /// On the shared servers.
    pub async fn new(label: &str) -> anyhow::Result<Env> {
        Env::on(label, &pg_admin_url(), &amqp_url()).await
    }

    /// On the given servers (a private instance for tests that stop one).
    pub async fn on(label: &str, pg_base: &str, amqp: &str) -> anyhow::Result<Env> {
        ensure_built()?;
        let mut env = Env::bare_on(label, pg_base, amqp).await?;
        let created = env.admin(&["create-customer", &env.customer.clone()])?;
        env.admin_token = created["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        env.bot_token = env.token(&env.customer.clone(), "bot")?;
        Ok(env)
    }

    /// A database (empty: not even migrated) and a prefix of its own on the
    /// shared servers, and no customer: for services run in process, which
    /// migrate and make their own customers. Needs no binaries.
    pub async fn bare(label: &str) -> anyhow::Result<Env> {
        Env::bare_on(label, &pg_admin_url(), &amqp_url()).await
    }

    async fn bare_on(label: &str, pg_base: &str, amqp: &str) -> anyhow::Result<Env> {
        let short = Uuid::new_v4().simple().to_string()[..12].to_string();
        let db_name = format!("orq_t_{label}_{short}");
        let prefix = format!("orqt.{label}.{short}");
        create_database(pg_base, &db_name).await?;
        let dir = std::env::temp_dir().join(format!("orq-e2e-{label}-{short}"));
        std::fs::create_dir_all(&dir)?;
        Ok(Env {
            pg_base: pg_base.to_string(),
            amqp_url: amqp.to_string(),
            db_url: format!("{pg_base}/{db_name}"),
            db_name,
            prefix,
            dir,
            admin_token: String::new(),
            bot_token: String::new(),
            customer: format!("acme-{short}"),
            secret_key: Uuid::new_v4().simple().to_string().repeat(2),
            vars: Vec::new(),
            children: Mutex::new(Vec::new()),
            cleaned: false,
        })
    }

    /// Settings for a service run in process against this deployment (the
    /// defaults, then its database, broker, prefix and secret key).
    pub fn settings(&self) -> anyhow::Result<orq_shared::config::Settings> {
        let mut settings = orq_shared::config::Settings::load(None)?;
        settings.database.url = self.db_url.clone();
        settings.amqp.url = self.amqp_url.clone();
        settings.amqp.prefix = self.prefix.clone();
        settings.security.secret_key = self.secret_key.clone();
        Ok(settings)
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

    /// `GET url` as this deployment's admin, as JSON.
    pub async fn get_json(&self, url: &str) -> anyhow::Result<serde_json::Value> {
        Ok(self.client().get(url).send().await?.json().await?)
    }

    /// `POST url body` as this deployment's admin, which must answer 201;
    /// the id of what it created.
    pub async fn create(&self, url: &str, body: &serde_json::Value) -> anyhow::Result<String> {
        let response = self.client().post(url).json(body).send().await?;
        let status = response.status();
        let text = response.text().await?;
        anyhow::ensure!(status == 201, "POST {url}: {status} {text}");
        let created: serde_json::Value = serde_json::from_str(&text)?;
        created["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no id in {created}"))
    }

    /// A field worker's token for `email`, from `gateway admin`.
    pub fn worker_token(&self, email: &str) -> anyhow::Result<String> {
        let v = self.admin(&[
            "create-token",
            "--customer",
            &self.customer,
            "--role",
            "worker",
            "--name",
            email,
        ])?;
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
            .env("ORQ_AMQP__URL", &self.amqp_url)
            .env("ORQ_AMQP__PREFIX", &self.prefix)
            .env("ORQ_SECURITY__SECRET_KEY", &self.secret_key)
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
        let child = Arc::new(Mutex::new(child));
        self.children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(child.clone());
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// Starts a gateway on a port it picks itself (`127.0.0.1:0`, read back
    /// from its log) and waits until it is ready.
    pub async fn start_gateway(&self, extra: &[(&str, &str)]) -> anyhow::Result<(Proc, String)> {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cmd = self.gateway_command("127.0.0.1:0", extra);
        let mut proc = self.spawn(&format!("gateway-{n}"), cmd)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Some(addr) = listening_addr(&proc.log_text()) {
                break addr;
            }
            anyhow::ensure!(!proc.exited(), "gateway exited:\n{}", proc.log_text());
            anyhow::ensure!(
                Instant::now() < deadline,
                "gateway did not say where it listens:\n{}",
                proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let url = format!("http://{addr}");
        wait_ready(&format!("{url}/readyz"), &mut proc).await?;
        Ok((proc, url))
    }

    /// Starts a gateway on `port` and waits until it is ready: a gateway
    /// restarted after a kill keeps its clients' URL (its log goes on in
    /// the same file).
    pub async fn start_gateway_on(
        &self,
        port: u16,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<(Proc, String)> {
        let cmd = self.gateway_command(&format!("127.0.0.1:{port}"), extra);
        let mut proc = self.spawn(&format!("gateway-{port}"), cmd)?;
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("{url}/readyz"), &mut proc).await?;
        Ok((proc, url))
    }

    /// The gateway's command listening on `listen`, with `extra` settings;
    /// however quiet its log level, the line naming its address is logged.
    fn gateway_command(&self, listen: &str, extra: &[(&str, &str)]) -> Command {
        let mut cmd = self.command("gateway");
        cmd.env("ORQ_GATEWAY__LISTEN", listen);
        let mut level = "info".to_string();
        for (k, v) in extra {
            cmd.env(k, v);
            if *k == "ORQ_LOG__LEVEL" {
                level = v.to_string();
            }
        }
        cmd.env("ORQ_LOG__LEVEL", format!("{level},gateway::listening=info"));
        cmd
    }

    pub fn start_dispatcher(&self, name: &str, extra: &[(&str, &str)]) -> anyhow::Result<Proc> {
        let mut cmd = self.command("dispatcher");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        self.spawn(name, cmd)
    }

    /// Starts a timeout-reaper with `extra` environment (e.g.
    /// `REAPER_MATCHING_AGENTS`).
    pub fn start_reaper(&self, extra: &[(&str, &str)]) -> anyhow::Result<Proc> {
        let mut cmd = self.command("timeout-reaper");
        for (k, v) in extra {
            cmd.env(k, v);
        }
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

    /// Polls `GET {gateway}/tasks/{id}` (as admin) until `check` accepts the
    /// task, or fails after `within`.
    pub async fn task_until<T>(
        &self,
        gateway: &str,
        id: &str,
        within: Duration,
        what: &str,
        check: impl Fn(&serde_json::Value) -> Option<T>,
    ) -> anyhow::Result<T> {
        let client = self.client();
        let url = format!("{gateway}/tasks/{id}");
        let check = &check;
        eventually(within, &format!("task {id}: {what}"), || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let task: serde_json::Value = client.get(url).send().await?.json().await?;
                Ok(check(&task))
            }
        })
        .await
    }

    /// An HTTP client that sends the admin token.
    pub fn client(&self) -> reqwest::Client {
        client_with(&self.admin_token)
    }

    /// This deployment's customer, as its admin, on the gateway at `gw`.
    pub fn api(&self, gw: &str) -> Api {
        Api::new(gw, &self.customer, &self.admin_token)
    }

    pub async fn db(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Drops the database and deletes every queue and exchange of the prefix.
    /// Stops every process still running for this deployment.
    fn stop_processes(&self) {
        let children = std::mem::take(
            &mut *self
                .children
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for child in &children {
            stop(child);
        }
    }

    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.cleaned = true;
        self.stop_processes();
        let bots = bot_ids(&self.db_url).await;
        teardown_broker(&self.amqp_url, &self.prefix, &bots).await?;
        drop_database(&self.pg_base, &self.db_name).await?;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // A failed test: keep the logs for reading, remove the rest. Drop
        // cannot await, so the cleanup runs on a runtime of its own.
        eprintln!("test logs kept in {}", self.dir.display());
        self.stop_processes();
        let (pg_base, db_name, db_url, amqp, prefix) = (
            self.pg_base.clone(),
            self.db_name.clone(),
            self.db_url.clone(),
            self.amqp_url.clone(),
            self.prefix.clone(),
        );
        block_on_own_thread(async move {
            let bots = bot_ids(&db_url).await;
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                teardown_broker(&amqp, &prefix, &bots),
            )
            .await;
            let _ =
                tokio::time::timeout(Duration::from_secs(10), drop_database(&pg_base, &db_name))
                    .await;
        });
    }
}

/// Runs `work` to its end on a runtime of its own, on a thread of its own:
/// what a `Drop` that must await does (it may run inside a runtime).
pub(crate) fn block_on_own_thread(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let done = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(work);
        }
    });
    let _ = done.join();
}

/// The ids of every bot in a test database (their queues are the test's).
async fn bot_ids(db_url: &str) -> Vec<orq_shared::domain::BotId> {
    let Ok((client, conn)) = tokio_postgres::connect(db_url, tokio_postgres::NoTls).await else {
        return Vec::new();
    };
    tokio::spawn(conn);
    client
        .query("SELECT id FROM bots", &[])
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| orq_shared::domain::BotId(r.get(0)))
                .collect()
        })
        .unwrap_or_default()
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

/// The address in a gateway's `gateway listening addr=…` log line (its
/// log may be coloured).
fn listening_addr(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("gateway listening"))?;
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An ANSI sequence: ESC [ ... letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let addr = plain.split("addr=").nth(1)?.split_whitespace().next()?;
    Some(addr.to_string())
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

pub async fn create_database(pg_base: &str, name: &str) -> anyhow::Result<()> {
    let (client, conn) =
        tokio_postgres::connect(&format!("{pg_base}/postgres"), tokio_postgres::NoTls)
            .await
            .context("connecting to the shared PostgreSQL")?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await?;
    Ok(())
}

pub async fn drop_database(pg_base: &str, name: &str) -> anyhow::Result<()> {
    let (client, conn) =
        tokio_postgres::connect(&format!("{pg_base}/postgres"), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await?;
    Ok(())
}

pub async fn teardown_broker(
    amqp: &str,
    prefix: &str,
    bots: &[orq_shared::domain::BotId],
) -> anyhow::Result<()> {
    // `amqp` may list several nodes of a cluster: any live one will do.
    let mut conn = Err(anyhow!("no broker URL in {amqp:?}"));
    for url in orq_shared::config::split_urls(amqp) {
        conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .map_err(Into::into);
        if conn.is_ok() {
            break;
        }
    }
    let conn = conn?;
    let ch = conn.create_channel().await?;
    orq_shared::broker::Topology::new(prefix)
        .teardown(&ch, bots)
        .await?;
    let _ = conn.close(200, "cleanup".into()).await;
    Ok(())
}

/// Reads server-sent events from `response` until `stop` accepts one or
/// `within` passes; returns `(id, data)` pairs (events without a numeric
/// id or JSON data are skipped).
pub async fn read_sse(
    response: &mut reqwest::Response,
    within: Duration,
    stop: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<Vec<(i64, serde_json::Value)>> {
    let deadline = tokio::time::Instant::now() + within;
    let mut text = String::new();
    let mut out = Vec::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline, response.chunk()).await??;
        let Some(chunk) = chunk else {
            return Ok(out);
        };
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut id = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse::<i64>().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str::<serde_json::Value>(v.trim()).ok();
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                let done = stop(&data);
                out.push((id, data));
                if done {
                    return Ok(out);
                }
            }
        }
    }
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

/// A compose file duration (`stop_grace_period: 1m30s`; also `40s`,
/// `500ms`, `2h`): a number and a unit, repeated.
pub fn compose_duration(text: &str) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    anyhow::ensure!(!rest.is_empty(), "an empty duration");
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let number: u32 = rest[..digits]
            .parse()
            .with_context(|| format!("{text:?}: no number at {rest:?}"))?;
        rest = &rest[digits..];
        let unit = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let one = match &rest[..unit] {
            "h" => Duration::from_secs(3600),
            "m" => Duration::from_secs(60),
            "s" => Duration::from_secs(1),
            "ms" => Duration::from_millis(1),
            "us" => Duration::from_micros(1),
            other => anyhow::bail!("{text:?}: unknown unit {other:?}"),
        };
        total += one * number;
        rest = &rest[unit..];
    }
    Ok(total)
}

/// A CSV of `rows` rows (`row_id,payload`) whose first column names each
/// row: `t<task>r<row>`.
pub fn rows_csv(task: usize, rows: usize) -> String {
    let mut csv = String::from("row_id,payload\n");
    for r in 0..rows {
        csv.push_str(&format!("t{task}r{r},x\n"));
    }
    csv
}

/// Creates a CSV task (`POST /tasks`) of `system` with `csv` as its
/// attachment; the task as answered (201, or an error).
pub async fn create_task(
    client: &reqwest::Client,
    gw: &str,
    system: &str,
    csv: &str,
) -> anyhow::Result<serde_json::Value> {
    let body = serde_json::json!({"description": "e2e", "system": system,
                                  "attachment": orq_shared::attachment::encode(csv)});
    let r = client
        .post(format!("{gw}/tasks"))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(
        r.status() == 201,
        "create task: {} {}",
        r.status(),
        r.text().await?
    );
    Ok(r.json().await?)
}

/// Posts `body` under the `Idempotency-Key` `key` once: the status,
/// whether the answer says it is a replay (`idempotent-replayed: true`),
/// and the body.
pub async fn post_keyed(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, bool, serde_json::Value)> {
    let r = client
        .post(url)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await?;
    let status = r.status().as_u16();
    let replayed = r
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    Ok((status, replayed, r.json().await?))
}

/// Posts `body` under the `Idempotency-Key` `key` until it is answered
/// `201`, through refused connections, answers cut off by a gateway's death
/// and `503`s; returns the answer, whether it was a replay, and how many
/// attempts failed. Any other answer is an error.
pub async fn post_until_answered(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(serde_json::Value, bool, usize)> {
    let mut failures = 0;
    loop {
        let sent = client
            .post(url)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        if let Ok(r) = sent {
            match r.status().as_u16() {
                201 => {
                    let replayed = r.headers().contains_key("idempotent-replayed");
                    // A body cut off by the kill is retried like a refused
                    // connection.
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        return Ok((v, replayed, failures));
                    }
                }
                // A gateway starting while PostgreSQL is busy may say 503;
                // anything else is a bug.
                503 => {}
                other => anyhow::bail!("{key}: {other}"),
            }
        }
        failures += 1;
        anyhow::ensure!(failures < 3000, "{key}: never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `<file>.sh`, a shell automation that reads its row, appends
/// `line` (shell words: `$ORQ_IDEMPOTENCY_KEY $ORQ_ATTEMPT`, say) to `log`
/// and then runs `then` (`sleep 0.5`, say), and an agent configuration
/// `<file>.toml` whose system `system` runs it.
pub fn logging_agent(
    dir: &Path,
    file: &str,
    capacity: u16,
    system: &str,
    log: &Path,
    line: &str,
    then: &str,
) -> anyhow::Result<PathBuf> {
    let automation = dir.join(format!("{file}.sh"));
    std::fs::write(
        &automation,
        format!(
            "#!/bin/sh\ncat > /dev/null\necho \"{line}\" >> {}\n{then}\n",
            log.display()
        ),
    )?;
    let argv = ["sh", automation.to_str().unwrap_or_default()];
    agent_config(dir, &format!("{file}.toml"), capacity, &[(system, &argv)])
}

/// Reaper settings that match `agent_config`'s 1 s heartbeats (a 3 s
/// silence window), with a 200 ms tick.
pub const REAPER_MATCHING_AGENTS: &[(&str, &str)] = &[
    ("ORQ_REAPER__HEARTBEAT_INTERVAL_MS", "1000"),
    ("ORQ_REAPER__TICK_MS", "200"),
];

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

/// Runs a command as `user` when we are root (PostgreSQL refuses to run as
/// root; Debian's RabbitMQ scripts switch users themselves).
fn as_user(user: &str, program: &str) -> Command {
    if nix::unistd::Uid::effective().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", user, "--", program]);
        c
    } else {
        Command::new(program)
    }
}

fn run_ok(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn pg_bin(name: &str) -> PathBuf {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(base)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .last()
        .map(|v| v.join("bin").join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The Python that has the test peers (moto's S3 server, aiosmtpd):
/// `ORQ_TEST_PYTHON`, which `deploy/test.sh` points at a virtualenv it
/// fills, or `python3`.
pub fn test_python() -> String {
    std::env::var("ORQ_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Starts `python -m <module> <args>` as a test peer of `env`, and checks
/// it can be run at all with a message that says what to install.
pub fn python_peer(env: &Env, name: &str, module: &str, args: &[&str]) -> anyhow::Result<Proc> {
    let python = test_python();
    let probe = Command::new(&python)
        .args([
            "-c",
            &format!("import {}", module.split('.').next().unwrap_or(module)),
        ])
        .output()
        .with_context(|| format!("running {python}"))?;
    anyhow::ensure!(
        probe.status.success(),
        "{python} cannot import {module}: run the tests through deploy/test.sh (it installs \
         the Python test peers), or `pip install 'moto[server]' aiosmtpd`"
    );
    let mut cmd = Command::new(python);
    cmd.arg("-m").arg(module).args(args);
    env.spawn(name, cmd)
}

/// A private PostgreSQL server (initdb + pg_ctl on its own port), for tests
/// that stop the database. Never the shared one.
pub struct PrivatePg {
    pub dir: PathBuf,
    pub port: u16,
}

impl PrivatePg {
    pub fn start() -> anyhow::Result<PrivatePg> {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("orq-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        if nix::unistd::Uid::effective().is_root() {
            run_ok(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres").arg(&dir);
                    c
                },
                "chown",
            )?;
        }
        let data = dir.join("data");
        let mut init = as_user("postgres", &pg_bin("initdb").display().to_string());
        init.args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data);
        run_ok(init, "initdb")?;
        let pg = PrivatePg { dir, port };
        pg.up()?;
        Ok(pg)
    }

    pub fn base_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    pub fn up(&self) -> anyhow::Result<()> {
        let mut c = as_user("postgres", &pg_bin("pg_ctl").display().to_string());
        c.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.display()
            ))
            .arg("start");
        run_ok(c, "pg_ctl start")
    }

    pub fn down(&self) -> anyhow::Result<()> {
        let mut c = as_user("postgres", &pg_bin("pg_ctl").display().to_string());
        c.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"]);
        run_ok(c, "pg_ctl stop")
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let mut c = as_user("postgres", &pg_bin("pg_ctl").display().to_string());
        c.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = c.output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One private RabbitMQ node: its own node name, AMQP port, distribution
/// port and data directory (the recipe in `shared/recipes/rabbitmq-cluster.md`).
/// Never the shared broker. The pieces `PrivateRabbit` and `RabbitCluster`
/// both use.
pub struct RabbitNode {
    pub node: String,
    pub port: u16,
    pub dir: PathBuf,
    dist_port: u16,
    server: Option<Child>,
}

impl RabbitNode {
    /// Prepares the node's directory and configuration (nothing runs yet).
    fn new(node: String, dir: PathBuf) -> anyhow::Result<RabbitNode> {
        let port = free_port();
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("rabbit.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n"),
        )?;
        std::fs::write(dir.join("plugins"), "[].\n")?;
        // Debian's server script drops to the rabbitmq user when run as root.
        if nix::unistd::Uid::effective().is_root() {
            run_ok(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "rabbitmq:rabbitmq"]).arg(&dir);
                    c
                },
                "chown",
            )?;
        }
        Ok(RabbitNode {
            node,
            port,
            dir,
            dist_port: free_port(),
            server: None,
        })
    }

    /// Starts `rabbitmq-server` (again, after a kill: same name, ports and
    /// data) and waits until the node has booted.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if let Some(mut old) = self.server.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))?;
        let server = Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbit.conf"))
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("plugins"))
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_PID_FILE", self.dir.join("pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting a private rabbitmq-server")?;
        self.server = Some(server);
        self.await_startup()
    }

    /// Waits for the node to boot; `await_startup` fails at once until its
    /// Erlang VM answers.
    fn await_startup(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            match self.ctl(&["await_startup", "--timeout", "60"]) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat=5", self.port)
    }

    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        run_ok(self.ctl_command(args), &format!("rabbitmqctl {args:?}"))
    }

    /// `rabbitmqctl -n <node> ARGS`, its standard output.
    pub fn ctl_output(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .ctl_command(args)
            .output()
            .context("running rabbitmqctl")?;
        anyhow::ensure!(
            out.status.success(),
            "rabbitmqctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn ctl_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("rabbitmqctl");
        c.args(["-n", &self.node]).args(args);
        c
    }

    /// SIGKILLs the node's Erlang VM (`beam.smp`, from its pid file), as a
    /// crash or a power cut would, and waits until its port is closed.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        let text =
            std::fs::read_to_string(self.dir.join("pid")).context("reading the node's pid file")?;
        let pid: i32 = text.trim().parse().context("parsing the node's pid")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .context("killing the node")?;
        // The script that started it exits with it; reap it.
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            anyhow::ensure!(Instant::now() < deadline, "{} still listens", self.node);
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the node if it runs (Drop).
    fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = self.ctl_command(&["stop"]).output();
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.stop();
        // The server's own output (`<dir>.log`) stays for reading.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private RabbitMQ node, for tests that stop the broker.
pub struct PrivateRabbit {
    pub node: String,
    pub port: u16,
    inner: RabbitNode,
}

impl PrivateRabbit {
    pub fn start() -> anyhow::Result<PrivateRabbit> {
        let short = &Uuid::new_v4().simple().to_string()[..8];
        let mut inner = RabbitNode::new(
            format!("orqtest{short}@localhost"),
            std::env::temp_dir().join(format!("orq-rabbit-{short}")),
        )?;
        inner.start()?;
        Ok(PrivateRabbit {
            node: inner.node.clone(),
            port: inner.port,
            inner,
        })
    }

    pub fn url(&self) -> String {
        self.inner.url()
    }

    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        self.inner.ctl(args)
    }

    /// Stops the broker application: every connection drops, the port closes.
    pub fn stop_app(&self) -> anyhow::Result<()> {
        self.ctl(&["stop_app"])
    }

    pub fn start_app(&self) -> anyhow::Result<()> {
        self.ctl(&["start_app"])?;
        self.ctl(&["await_startup", "--timeout", "60"])
    }
}

/// Three private RabbitMQ nodes joined in one cluster (quorum queues
/// declared on it get three replicas), for tests that kill a node.
pub struct RabbitCluster {
    pub nodes: Vec<RabbitNode>,
    base: PathBuf,
}

impl RabbitCluster {
    pub fn start() -> anyhow::Result<RabbitCluster> {
        let short = &Uuid::new_v4().simple().to_string()[..8];
        let base = std::env::temp_dir().join(format!("orq-cluster-{short}"));
        std::fs::create_dir_all(&base)?;
        let mut cluster = RabbitCluster {
            nodes: Vec::new(),
            base,
        };
        for n in 1..=3 {
            let node = RabbitNode::new(
                format!("orqc{short}{n}@localhost"),
                cluster.base.join(format!("n{n}")),
            )?;
            cluster.nodes.push(node);
        }
        // Boot them side by side (each takes seconds), then wait for all.
        let booted: Vec<anyhow::Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = cluster
                .nodes
                .iter_mut()
                .map(|node| s.spawn(move || node.start()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("boot panicked"))))
                .collect()
        });
        for b in booted {
            b?;
        }
        let first = cluster.nodes[0].node.clone();
        for node in &cluster.nodes[1..] {
            node.ctl(&["stop_app"])?;
            node.ctl(&["join_cluster", &first])?;
            node.ctl(&["start_app"])?;
            node.ctl(&["await_startup", "--timeout", "60"])?;
        }
        let status = cluster.nodes[0].ctl_output(&["cluster_status", "--formatter", "json"])?;
        let status: serde_json::Value = serde_json::from_str(&status)?;
        let running = status["running_nodes"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(running == 3, "cluster not formed: {status}");
        Ok(cluster)
    }

    /// Every node's URL, comma-separated (the services' `amqp.url`).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(RabbitNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `n` (1, 2 or 3).
    pub fn node(&self, n: usize) -> &RabbitNode {
        &self.nodes[n - 1]
    }

    /// SIGKILLs node `n` (1, 2 or 3).
    pub fn kill9(&mut self, n: usize) -> anyhow::Result<()> {
        self.nodes[n - 1].kill9()
    }

    /// Starts node `n` again (same name, ports and data); it rejoins the
    /// cluster by itself. (`start()` is taken by the constructor.)
    pub fn start_node(&mut self, n: usize) -> anyhow::Result<()> {
        self.nodes[n - 1].start()
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        // Stop the other nodes first: the last one stopping does not wait
        // for peers that are gone.
        for node in self.nodes.iter_mut().rev() {
            node.stop();
        }
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn compose_durations_parse() {
        use super::compose_duration;
        use std::time::Duration;
        assert_eq!(compose_duration("40s").ok(), Some(Duration::from_secs(40)));
        assert_eq!(
            compose_duration("1m30s").ok(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            compose_duration("500ms").ok(),
            Some(Duration::from_millis(500))
        );
        assert!(compose_duration("40").is_err());
        assert!(compose_duration("").is_err());
        assert!(compose_duration("s").is_err());
    }
    #[test]
    fn the_gateways_address_is_read_from_a_plain_or_coloured_log() {
        let coloured = "\u{1b}[2m2026-11-30T17:05:41Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m gateway listening \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:34625\n";
        assert_eq!(
            super::listening_addr(coloured).as_deref(),
            Some("127.0.0.1:34625")
        );
        let plain = "x\n2026 INFO gateway: gateway listening addr=[::1]:80\n";
        assert_eq!(super::listening_addr(plain).as_deref(), Some("[::1]:80"));
        assert_eq!(super::listening_addr("starting\n"), None);
    }
}
