//! Layered configuration: built-in defaults < an optional TOML file < `ORQ_`
//! environment variables (`ORQ_DATABASE__URL`, `ORQ_AMQP__PREFIX`, ...; a double
//! underscore separates sections). Every service reads the same structure and
//! uses the sections it needs, so one file can configure a whole deployment.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub log: LogSettings,
    pub gateway: GatewaySettings,
    pub dispatcher: DispatcherSettings,
    pub agent: AgentSettings,
    pub reaper: ReaperSettings,
    pub retention: RetentionSettings,
    pub security: SecuritySettings,
    pub limits: LimitSettings,
    pub webhooks: WebhookSettings,
    pub human: HumanSettings,
    pub storage: StorageSettings,
    pub notify: NotifySettings,
    pub ops: OpsSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct OpsSettings {
    /// Where the dispatcher, the timeout-reaper and the bot-agent serve
    /// `/metrics`, `/healthz` and `/readyz` (e.g. `0.0.0.0:9100`); empty:
    /// nowhere. The gateway serves them on its API port.
    pub listen: String,
}

/// How field workers are told their finish was processed. A channel whose
/// sender is not configured is not used.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NotifySettings {
    /// `smtp://[user:password@]host:port` (plain; `?tls=required` for
    /// STARTTLS) or `smtps://...` (TLS); empty: no e-mail.
    pub smtp_url: String,
    pub mail_from: String,
    /// An HTTP endpoint taking `POST {to, text}` (JSON); empty: no SMS.
    pub sms_url: String,
    /// Sent as `Authorization: Bearer` to the SMS endpoint.
    pub sms_token: String,
    /// An HTTP endpoint taking `POST {to, title, body, data}`; empty: no push.
    pub push_url: String,
    pub push_token: String,
    /// Waits between attempts; after the last, the notification is DEAD.
    pub retry_schedule_ms: Vec<u64>,
    /// Timeout of one attempt.
    pub timeout_ms: u64,
}

/// Where micro-task photos go: the local filesystem served by the gateway
/// (the default), or an S3-compatible bucket the app uploads to directly.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StorageSettings {
    pub kind: StorageKind,
    /// `local`: the directory photos are written to.
    pub local_dir: String,
    /// `local`: the gateway's address as the apps reach it, the base of
    /// upload and photo URLs; empty: `http://` + the address the gateway is
    /// bound to (`gateway.listen`, with the port the system gave for port 0).
    pub public_url: String,
    /// How long an upload URL is valid.
    pub url_ttl_secs: u64,
    pub photo_max_bytes: u64,
    pub photo_content_types: Vec<String>,
    pub s3_bucket: String,
    /// An S3-compatible endpoint (MinIO, moto, ...); empty: AWS.
    pub s3_endpoint: String,
    pub s3_region: String,
    pub s3_access_key_id: String,
    pub s3_secret_access_key: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HumanSettings {
    /// How long a worker's reservation of a micro-task holds before the
    /// task goes back to NEW for someone else.
    pub reservation_ms: u64,
    /// How long a started micro-task execution may take (the seed's three
    /// hours) before the task goes back to NEW.
    pub execution_ms: u64,
    /// The timeout of a user task opened without one, so no activity stays
    /// open forever because nobody answers it (0: none).
    pub user_task_timeout_ms: u64,
    /// Most micro-tasks one worker may hold (RESERVED or EXECUTING) at once.
    pub max_reservations: i64,
    /// Most finish submissions the dispatcher applies in one transaction.
    pub finish_batch: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WebhookSettings {
    /// Timeout of one delivery attempt.
    pub timeout_ms: u64,
    /// Waits between attempts: attempt 1 is immediate, attempt n+1 follows
    /// attempt n by the n-th wait (±20 % jitter, at least what `Retry-After`
    /// asks); after the last, the delivery is DEAD. The default is Svix's:
    /// 8 attempts over about 27 hours.
    pub retry_schedule_ms: Vec<u64>,
    /// Networks webhooks may not be sent to (SSRF): checked on callback
    /// URLs and on every address a host name resolves to.
    pub deny_networks: Vec<String>,
    /// Attempts in flight to one endpoint from one reaper.
    pub per_endpoint_concurrency: usize,
    /// Most events one delivery carries.
    pub max_events_per_delivery: i64,
    /// A PEM file of extra root certificates to trust for https receivers
    /// (beside the system's), e.g. a private CA; empty: none.
    pub ca_file: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SecuritySettings {
    /// 32 bytes (64 hex characters or base64) that seal task secret keys at
    /// rest. The gateway refuses to start without it; keep it with the
    /// database's backups, since sealed secrets cannot be shown without it.
    pub secret_key: String,
    /// Networks a legacy HTTP bot's delivery address (`ip_address`) may not
    /// be in (SSRF): checked when an admin sets it and before every
    /// delivery. Loopback and private networks stay allowed by default,
    /// because legacy bots often run beside the gateway or on its LAN.
    pub bot_deny_networks: Vec<String>,
}

/// Request rates on the public edge, by route class. Each copy of the
/// gateway counts on its own.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LimitSettings {
    /// `POST /micro_task/{id}/finish`, the mobile apps' finishes.
    pub finish: RouteLimit,
    /// Every other write: POST, PUT, PATCH, DELETE.
    pub create: RouteLimit,
    /// GET and HEAD.
    pub read: RouteLimit,
    /// Client addresses the per-address limits do not count (by default
    /// loopback: the agents beside the gateway, a reverse proxy on the
    /// same host, for which every client has the proxy's address).
    pub address_exempt: Vec<String>,
}

/// Requests per minute (0: no limit), each with bursts of up to `burst`
/// requests at once.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
pub struct RouteLimit {
    /// Per access token (or task secret key, or worker token).
    pub per_token: u32,
    /// Per client address, whatever token it sends.
    pub per_address: u32,
    /// The burst a key may spend at once, as a multiple of one second's
    /// worth of its rate (at least 1 request).
    pub burst_seconds: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DatabaseSettings {
    /// libpq-style URL, e.g. `postgres://postgres@127.0.0.1:5432/orquestra`.
    pub url: String,
    pub pool_size: usize,
    /// How long a caller waits for a free pooled connection before failing;
    /// deadpool waits forever without it.
    pub wait_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub statement_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AmqpSettings {
    /// One broker URL, or several separated by commas (the nodes of a
    /// cluster): the connection supervisor tries them in turn.
    pub url: String,
    /// Prefix of every exchange and queue name: lets several deployments (or
    /// test runs) share one broker without seeing each other's messages.
    pub prefix: String,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
}

impl AmqpSettings {
    /// The broker URLs `url` lists, in the order given.
    pub fn urls(&self) -> Vec<String> {
        split_urls(&self.url)
    }
}

/// Splits a comma-separated list of URLs, trimming spaces and dropping
/// empty items. A comma inside a URL (a password) must be percent-encoded,
/// as the AMQP URI spec asks anyway.
pub fn split_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// How logs are written: lines for a person, or one JSON object per line
/// (containers). Anything else is refused when the configuration loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// Where micro-task photos are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// A directory of the gateway's (`local_dir`), URLs signed by the gateway.
    Local,
    /// An S3 (or S3-compatible) bucket, with presigned URLs.
    S3,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LogSettings {
    pub format: LogFormat,
    /// An `EnvFilter` directive, overridden by `RUST_LOG` when set.
    pub level: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct GatewaySettings {
    pub listen: String,
    /// Largest accepted request body; a base64 CSV attachment must fit in it.
    pub body_limit_bytes: usize,
    pub request_timeout_ms: u64,
    /// A request's headers must arrive within this, counted from when the
    /// connection is ready for a request: it also closes idle keep-alive
    /// connections (slow-header clients, "slowloris").
    pub header_read_timeout_ms: u64,
    /// Most connections open at once; one more is answered `503` and
    /// closed. Keep it under the process's open-file limit.
    pub max_connections: usize,
    /// On SIGTERM, how long requests in flight get to finish before the
    /// connections still open are closed.
    pub shutdown_grace_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DispatcherSettings {
    /// The periodic sweep that catches work whose wake-up message was lost.
    pub sweep_interval_ms: u64,
    /// An ASSIGNED job that no bot acknowledged within this time is re-sent.
    pub assign_timeout_ms: u64,
    /// Timeout of the POST to a legacy HTTP bot's `/tasks`.
    pub http_delivery_timeout_ms: u64,
    /// Most jobs claimed by one matching transaction.
    pub batch_size: i64,
    /// Most reports applied in one transaction.
    pub report_batch: usize,
    /// How often waiting jobs are checked for ones no registered bot could
    /// ever take (flagged with a WARNING event and `waiting_reason`, cleared
    /// when a bot could take them again). 0: never.
    pub stranded_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AgentSettings {
    /// Base URL of the gateway, used to register.
    pub gateway_url: String,
    /// Bot credential (a token of role `bot`).
    pub token: String,
    /// The bot's name; defaults to the host name.
    pub name: String,
    pub ip_address: String,
    pub capacity: u16,
    /// Assignments it may hold beyond `capacity`, unstarted (RabbitMQ's
    /// prefetch on its queue is `capacity + prefetch`), so a freed slot
    /// starts the next job without waiting for the report -> match ->
    /// assign round trip. The matcher fills idle bots first (most free
    /// slots), so a job waits on a busy agent only while every bot that
    /// could take it is busy. What an agent holds unstarted when it stops
    /// goes back at once (`Released`). Unset: equal to `capacity`.
    #[serde(default)]
    pub prefetch: Option<u16>,
    pub tags: Vec<String>,
    pub heartbeat_interval_ms: u64,
    /// Reports (RUNNING, progress, outcomes) go to RabbitMQ in batches: a
    /// batch leaves once its first report has waited this long, or at once
    /// when the batch before it is still being confirmed (then everything
    /// queued meanwhile goes in the next). A job that finishes within the
    /// window sends RUNNING, its progress and its outcome in one message;
    /// each keeps its own id and timestamp, so the history shows them all.
    /// 0: a report waits only for the batch before it.
    pub report_linger_ms: u64,
    /// How long one automation run for one CSV row may take.
    pub row_timeout_ms: u64,
    /// SIGTERM -> SIGKILL grace period.
    pub kill_grace_ms: u64,
    /// How long a stopping agent waits for its running jobs.
    pub shutdown_grace_ms: u64,
    /// `system` name -> argv of the automation run once per CSV row (the row
    /// arrives as a JSON object on stdin). `builtin:noop` runs nothing.
    pub systems: BTreeMap<String, Vec<String>>,
    /// Where fetched scripts are cached (by checksum); empty: a directory
    /// under the system's temporary directory.
    pub script_dir: String,
    /// Bytes of a script's stdout and of its stderr kept for the job.
    pub output_tail_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ReaperSettings {
    pub tick_ms: u64,
    /// A bot silent for this many heartbeat intervals is UNAVAILABLE.
    pub missed_heartbeats: u32,
    pub heartbeat_interval_ms: u64,
    /// A job whose bot is lost goes back to WAITING while it has had fewer
    /// attempts than this; then it FAILS.
    pub max_attempts: i32,
    /// Most leases expired in one transaction.
    pub batch_size: i64,
    /// A job RUNNING on a legacy HTTP bot that has reported nothing for
    /// this long times out (such bots do not heartbeat).
    pub http_silence_ms: u64,
    /// An agent seen connected to RabbitMQ and then gone from it (its
    /// presence queue) for this long is lost: its jobs wait again.
    pub absence_ms: u64,
    /// How often the reaper asks RabbitMQ which agents are connected.
    pub presence_interval_ms: u64,
    /// Idempotency keys are kept at least this long (24 h by default), then
    /// pruned; a key used again after that creates anew.
    pub idempotency_retention_ms: u64,
}

/// What the timeout-reaper prunes, and when. An age of 0 keeps forever.
/// Job history (jobs and their events) is not pruned: it goes when the
/// customer deletes the job.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RetentionSettings {
    /// How often the reaper prunes.
    pub interval_ms: u64,
    /// Most rows one statement deletes (each its own short transaction).
    pub batch_size: i64,
    /// Webhook deliveries DELIVERED this long ago go, with their attempts
    /// and outbox rows.
    pub delivered_ms: u64,
    /// Webhook deliveries DEAD this long ago go: until then they can be
    /// redelivered.
    pub dead_ms: u64,
    /// Notifications sent, or given up on, this long ago.
    pub notifications_ms: u64,
    /// Places in the live feed given this long ago: a reader resuming
    /// from an older `Last-Event-ID` resumes at the oldest place kept.
    pub feed_ms: u64,
}

const DEFAULTS: &str = r#"
[database]
url = "postgres://postgres@127.0.0.1:5432/orquestra"
pool_size = 16
wait_timeout_ms = 5000
connect_timeout_ms = 5000
statement_timeout_ms = 30000

[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10&connection_timeout=5000"
prefix = "orq"
reconnect_min_ms = 100
reconnect_max_ms = 5000

[log]
format = "human"
level = "info"

[gateway]
listen = "127.0.0.1:8080"
body_limit_bytes = 10485760
request_timeout_ms = 30000
header_read_timeout_ms = 10000
max_connections = 768
shutdown_grace_ms = 5000

[dispatcher]
sweep_interval_ms = 10000
assign_timeout_ms = 60000
http_delivery_timeout_ms = 10000
batch_size = 256
report_batch = 256
stranded_interval_ms = 1000

[agent]
gateway_url = "http://127.0.0.1:8080"
token = ""
name = ""
ip_address = "127.0.0.1"
capacity = 1
tags = []
heartbeat_interval_ms = 4000
report_linger_ms = 2
row_timeout_ms = 60000
kill_grace_ms = 5000
shutdown_grace_ms = 30000
script_dir = ""
output_tail_bytes = 65536

[agent.systems]

[reaper]
tick_ms = 1000
missed_heartbeats = 3
heartbeat_interval_ms = 4000
max_attempts = 3
batch_size = 500
http_silence_ms = 3600000
absence_ms = 2000
presence_interval_ms = 250
idempotency_retention_ms = 86400000

[retention]
interval_ms = 60000
batch_size = 1000
delivered_ms = 604800000
dead_ms = 2592000000
notifications_ms = 604800000
feed_ms = 604800000

[security]
secret_key = ""
bot_deny_networks = ["0.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "192.0.0.0/24",
                     "224.0.0.0/3", "::/128", "fe80::/10", "fd00:ec2::254/128", "ff00::/8"]

[limits]
address_exempt = ["127.0.0.0/8", "::1/128"]

[limits.finish]
per_token = 6000
per_address = 12000
burst_seconds = 10

[limits.create]
per_token = 300000
per_address = 300000
burst_seconds = 2

[limits.read]
per_token = 60000
per_address = 120000
burst_seconds = 2

[webhooks]
timeout_ms = 15000
retry_schedule_ms = [5000, 300000, 1800000, 7200000, 18000000, 36000000, 36000000]
deny_networks = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
                 "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/3",
                 "::/128", "::1/128", "64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "fc00::/7",
                 "fe80::/10", "ff00::/8"]
per_endpoint_concurrency = 4
max_events_per_delivery = 100
ca_file = ""

[storage]
kind = "local"
local_dir = "data/photos"
public_url = ""
url_ttl_secs = 900
photo_max_bytes = 10485760
photo_content_types = ["image/jpeg", "image/png", "image/webp", "image/heic"]
s3_bucket = ""
s3_endpoint = ""
s3_region = "us-east-1"
s3_access_key_id = ""
s3_secret_access_key = ""

[ops]
listen = ""

[notify]
smtp_url = ""
mail_from = "Orquestra <no-reply@orquestra.invalid>"
sms_url = ""
sms_token = ""
push_url = ""
push_token = ""
retry_schedule_ms = [5000, 30000, 120000, 600000, 1800000, 3600000]
timeout_ms = 15000

[human]
reservation_ms = 1800000
execution_ms = 10800000
user_task_timeout_ms = 604800000
max_reservations = 5
finish_batch = 128
"#;

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(#[from] config::ConfigError);

impl AgentSettings {
    /// Assignments it holds beyond its capacity: `prefetch`, or its
    /// capacity when unset.
    pub fn prefetch(&self) -> u16 {
        self.prefetch.unwrap_or(self.capacity)
    }
}

impl Settings {
    /// Loads defaults, then `file` (or `$ORQ_CONFIG`) when given, then `ORQ_*`.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("ORQ_CONFIG").map(Into::into));
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let settings = builder
            .add_source(
                config::Environment::with_prefix("ORQ")
                    .prefix_separator("_")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("agent.tags")
                    .with_list_parse_key("webhooks.deny_networks")
                    .with_list_parse_key("security.bot_deny_networks")
                    .with_list_parse_key("limits.address_exempt")
                    .with_list_parse_key("webhooks.retry_schedule_ms")
                    .with_list_parse_key("storage.photo_content_types")
                    .with_list_parse_key("notify.retry_schedule_ms")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()?;
        Ok(settings)
    }

    /// The configuration as JSON with secrets replaced, for `--print-config`.
    pub fn redacted_json(&self) -> String {
        let mut copy = self.clone();
        copy.database.url = redact_url(&copy.database.url);
        copy.amqp.url = split_urls(&copy.amqp.url)
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(",");
        if !copy.agent.token.is_empty() {
            copy.agent.token = "<redacted>".into();
        }
        if !copy.security.secret_key.is_empty() {
            copy.security.secret_key = "<redacted>".into();
        }
        copy.notify.smtp_url = redact_url(&copy.notify.smtp_url);
        for token in [&mut copy.notify.sms_token, &mut copy.notify.push_token] {
            if !token.is_empty() {
                *token = "<redacted>".into();
            }
        }
        if !copy.storage.s3_secret_access_key.is_empty() {
            copy.storage.s3_secret_access_key = "<redacted>".into();
        }
        serde_json::to_string_pretty(&copy).unwrap_or_default()
    }
}

/// The command-line options every binary shares.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// A TOML configuration file (defaults < file < ORQ_* environment).
    #[arg(long, env = "ORQ_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Print the effective configuration, secrets redacted, and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl ConfigArgs {
    /// Loads the settings and starts logging; `None` when `--print-config`
    /// printed them and the program should exit.
    pub fn load(&self) -> Result<Option<Settings>, ConfigError> {
        let settings = Settings::load(self.config.as_deref())?;
        if self.print_config {
            println!("{}", settings.redacted_json());
            return Ok(None);
        }
        crate::telemetry::init(&settings.log);
        Ok(Some(settings))
    }
}

/// Hides the password of `scheme://user:password@host/...`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_string(),
    }
}

/// Every configuration key as it is spelled in the environment
/// (`ORQ_SECTION__KEY`), for checks that compose files only use real keys.
pub fn env_keys() -> Vec<String> {
    let defaults: Result<Settings, _> = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize());
    let Ok(value) = defaults.map(|d| serde_json::to_value(d).unwrap_or_default()) else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    for (section, body) in value.as_object().into_iter().flatten() {
        for field in body.as_object().into_iter().flat_map(|o| o.keys()) {
            keys.push(format!(
                "ORQ_{}__{}",
                section.to_uppercase(),
                field.to_uppercase()
            ));
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_env_overrides_them() {
        // Environment is process-global; use a key no other test reads.
        let s = Settings::load(None).expect("defaults parse");
        assert_eq!(s.dispatcher.sweep_interval_ms, 10_000);
        assert_eq!(s.gateway.listen, "127.0.0.1:8080");
        assert!(env_keys().contains(&"ORQ_DATABASE__URL".to_string()));
        assert!(env_keys().contains(&"ORQ_AGENT__SYSTEMS".to_string()));
    }

    #[test]
    fn kinds_are_enums_and_an_unknown_one_is_refused_at_load() {
        let dir = std::env::temp_dir().join(format!("orq-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "[log]\nformat = \"json\"\n[storage]\nkind = \"s3\"\n",
        )
        .expect("write");
        let s = Settings::load(Some(&good)).expect("loads");
        assert_eq!(
            (s.log.format, s.storage.kind),
            (LogFormat::Json, StorageKind::S3)
        );
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[storage]\nkind = \"ftp\"\n").expect("write");
        let e = Settings::load(Some(&bad)).expect_err("refused").to_string();
        assert!(e.contains("ftp") && e.contains("kind"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_agent_prefetches_its_capacity_unless_told_otherwise() {
        let dir = std::env::temp_dir().join(format!("orq-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let unset = dir.join("unset.toml");
        std::fs::write(&unset, "[agent]\ncapacity = 8\n").expect("write");
        let s = Settings::load(Some(&unset)).expect("loads");
        assert_eq!(s.agent.prefetch(), 8);
        let none = dir.join("none.toml");
        std::fs::write(&none, "[agent]\ncapacity = 8\nprefetch = 0\n").expect("write");
        let s = Settings::load(Some(&none)).expect("loads");
        assert_eq!(s.agent.prefetch(), 0);
        assert!(env_keys().contains(&"ORQ_AGENT__PREFETCH".to_string()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("amqp://guest:secret@localhost:5672/%2f"),
            "amqp://guest:<redacted>@localhost:5672/%2f"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn one_broker_url_is_a_list_of_one() {
        let one = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10&connection_timeout=5000";
        assert_eq!(split_urls(one), vec![one.to_string()]);
    }

    #[test]
    fn several_broker_urls_are_split_on_commas_and_trimmed() {
        assert_eq!(
            split_urls("amqp://a:1@n1:5672/%2f, amqp://a:1@n2:5672/%2f,,amqp://n3/ "),
            vec![
                "amqp://a:1@n1:5672/%2f".to_string(),
                "amqp://a:1@n2:5672/%2f".to_string(),
                "amqp://n3/".to_string(),
            ]
        );
        assert!(split_urls(" , ").is_empty());
    }

    #[test]
    fn every_broker_url_has_its_password_redacted() {
        let mut s = Settings::load(None).expect("defaults parse");
        s.amqp.url = "amqp://u:s3cret@n1:5672/%2f,amqp://v:t0p@n2:5673/%2f".into();
        let json: serde_json::Value =
            serde_json::from_str(&s.redacted_json()).expect("redacted JSON");
        assert_eq!(
            json["amqp"]["url"],
            "amqp://u:<redacted>@n1:5672/%2f,amqp://v:<redacted>@n2:5673/%2f"
        );
    }
}
