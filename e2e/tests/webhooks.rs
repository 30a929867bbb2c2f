//! Webhooks end to end: jobs run by the real services report to a real local
//! HTTP receiver through the reaper's outbox. Address checks are in
//! process (`gateway/tests/api/webhooks.rs`).

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use orq_e2e::{Env, Proc, agent_config, eventually, read_sse};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Settings that let webhooks reach the loopback receiver, with a short
/// retry schedule.
const FAST: &[(&str, &str)] = &[
    ("ORQ_WEBHOOKS__DENY_NETWORKS", ""),
    (
        "ORQ_WEBHOOKS__RETRY_SCHEDULE_MS",
        "300,300,600,1000,2000,5000,10000",
    ),
    ("ORQ_REAPER__TICK_MS", "100"),
];

#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    raw: Vec<u8>,
    body: Value,
}

/// A local webhook receiver: records every request and answers `answer`.
#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    answer: Arc<AtomicU16>,
    port: u16,
    server: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Receiver {
    async fn start() -> anyhow::Result<Receiver> {
        let r = Receiver {
            got: Arc::default(),
            answer: Arc::new(AtomicU16::new(200)),
            port: 0,
            server: Arc::default(),
        };
        r.up(0).await
    }

    /// Serves on `port` (0: any); returns the receiver with its port.
    async fn up(mut self, port: u16) -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        self.port = listener.local_addr()?.port();
        let (got, answer) = (self.got.clone(), self.answer.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (got, answer) = (got.clone(), answer.clone());
                async move {
                    let headers = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                        .collect();
                    let parsed = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    if let Ok(mut g) = got.lock() {
                        g.push(Received {
                            headers,
                            raw: body.to_vec(),
                            body: parsed,
                        });
                    }
                    StatusCode::from_u16(answer.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK)
                }
            }),
        );
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        if let Ok(mut s) = self.server.lock() {
            *s = Some(handle);
        }
        Ok(self)
    }

    /// Stops listening (new connections are refused; a connection kept
    /// alive meanwhile is answered 503).
    fn down(&self) {
        self.answer.store(503, Ordering::SeqCst);
        if let Ok(mut s) = self.server.lock()
            && let Some(h) = s.take()
        {
            h.abort();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

struct Stack {
    env: Env,
    gw: String,
    procs: Vec<Proc>,
}

impl Stack {
    async fn start(label: &str) -> anyhow::Result<Stack> {
        let env = Env::new(label).await?;
        let (gateway, gw) = env.start_gateway(FAST).await?;
        let mut procs = vec![gateway, env.start_dispatcher("dispatcher", &[])?];
        procs.push(reaper(&env, "reaper")?);
        let config = agent_config(&env.dir, "agent.toml", 4, &[])?;
        procs.push(env.start_agent(&gw, "bot", &config, &[]).await?);
        Ok(Stack { env, gw, procs })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}{path}", self.gw, self.env.customer)
    }

    async fn task(&self, script: &str) -> anyhow::Result<String> {
        let admin = self.env.client();
        let s: Value = admin
            .post(self.url("/script"))
            .json(&json!({"name": "s", "filename": "s.sh", "content": format!("#!/bin/sh\n{script}\n")}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let t: Value = admin
            .post(self.url("/task"))
            .json(&json!({"name": "t", "script_id": s["id"]}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(t["id"].as_str().unwrap_or_default().to_string())
    }

    async fn run(&self, task: &str, body: Value) -> anyhow::Result<String> {
        let r = self
            .env
            .client()
            .post(self.url(&format!("/task/{task}/job")))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(r.status() == 201, "run: {} {}", r.status(), r.text().await?);
        Ok(r.json::<Value>().await?["id"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .env
            .client()
            .get(format!("{}{path}", self.gw))
            .send()
            .await?
            .json()
            .await?)
    }

    async fn job_status(&self, job: &str) -> anyhow::Result<String> {
        let j = self
            .get(&format!("/{}/job/{job}", self.env.customer))
            .await?;
        Ok(j["status"].as_str().unwrap_or_default().to_string())
    }

    /// Every stored event of `job`, in order: (id, type).
    async fn events(&self, job: &str) -> anyhow::Result<Vec<(String, String)>> {
        let v = self
            .get(&format!("/{}/job/{job}/events", self.env.customer))
            .await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["id"].as_str().unwrap_or_default().to_string(),
                    e["type"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    async fn finish(self) -> anyhow::Result<()> {
        drop(self.procs);
        self.env.cleanup().await
    }
}

fn reaper(env: &Env, name: &str) -> anyhow::Result<Proc> {
    let mut cmd = env.command("timeout-reaper");
    for (k, v) in FAST {
        cmd.env(k, v);
    }
    env.spawn(name, cmd)
}

/// The events a receiver got, deduplicated by `webhook-id` (as a receiver
/// following Standard Webhooks does), in arrival order.
fn deduplicated(received: &[Received]) -> Vec<Value> {
    let mut seen = HashSet::new();
    received
        .iter()
        .filter(|r| seen.insert(r.headers.get("webhook-id").cloned().unwrap_or_default()))
        .flat_map(|r| r.body.as_array().cloned().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_jobs_events_arrive_in_order_signed_with_the_seeds_shape() -> anyhow::Result<()> {
    let s = Stack::start("hooks").await?;
    let receiver = Receiver::start().await?;
    let task = s
        .task("echo '::step::fetching'; echo '::percent::60'; echo done")
        .await?;
    let job = s
        .run(&task, json!({"callback": {"url": receiver.url(), "user": "nome_usuario", "password": "senha"}}))
        .await?;
    eventually(Duration::from_secs(30), "COMPLETE", || async {
        Ok((s.job_status(&job).await? == "COMPLETE").then_some(()))
    })
    .await?;
    let stored = s.events(&job).await?;
    let got = eventually(Duration::from_secs(30), "every event delivered", || async {
        let got = deduplicated(&receiver.received());
        Ok((got.len() == stored.len()).then_some(got))
    })
    .await?;
    // In order, each once, in the seed's shape.
    let ids: Vec<String> = got
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect();
    let stored_ids: Vec<String> = stored.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, stored_ids);
    let statuses: Vec<&str> = got
        .iter()
        .filter(|e| e["type"] == "STATUS_CHANGE")
        .filter_map(|e| e["description"].as_str())
        .collect();
    assert_eq!(statuses, vec!["WAITING", "ASSIGNED", "RUNNING", "COMPLETE"]);
    assert!(
        got.iter()
            .any(|e| e["type"] == "STEP_CHANGE" && e["description"] == "fetching")
    );
    assert!(
        got.iter()
            .any(|e| e["type"] == "PERCENT_CHANGE" && e["description"] == "60")
    );
    // As in the seed's SOLVED: the final status, then PERCENT_CHANGE 100.
    let tail: Vec<(&str, &str)> = got[got.len().saturating_sub(2)..]
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default(),
                e["description"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        tail,
        vec![("STATUS_CHANGE", "COMPLETE"), ("PERCENT_CHANGE", "100")]
    );
    let mut last = 0;
    for e in &got {
        assert_eq!(e["jobId"], job.as_str());
        let at = e["createdAt"].as_i64().unwrap_or_default();
        assert!(
            at > 1_600_000_000_000 && at >= last,
            "createdAt in epoch ms, in order: {e}"
        );
        last = at;
        let keys: HashSet<&str> = e
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            keys,
            HashSet::from(["id", "jobId", "type", "description", "createdAt"])
        );
    }
    // Headers: the callback's user and password, and a signature that
    // verifies with the customer's secret.
    let secret = s.get("/webhooks/secret").await?["secret"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for r in receiver.received() {
        assert_eq!(
            r.headers.get("user").map(String::as_str),
            Some("nome_usuario")
        );
        assert_eq!(r.headers.get("password").map(String::as_str), Some("senha"));
        let id = r.headers.get("webhook-id").cloned().unwrap_or_default();
        let ts: i64 = r
            .headers
            .get("webhook-timestamp")
            .and_then(|t| t.parse().ok())
            .unwrap_or_default();
        let expected = orq_e2e::orq_shared::webhook::sign(&secret, &id, ts, &r.raw);
        assert_eq!(r.headers.get("webhook-signature"), expected.as_ref());
        let wrong = orq_e2e::orq_shared::webhook::sign(&secret, &id, ts + 1, &r.raw);
        assert_ne!(r.headers.get("webhook-signature"), wrong.as_ref());
    }
    // The deliveries are listed, DELIVERED, and never show the password.
    let deliveries = s.get(&format!("/webhooks/deliveries?job_id={job}")).await?;
    let list = deliveries.as_array().cloned().unwrap_or_default();
    assert!(
        !list.is_empty() && list.iter().all(|d| d["status"] == "DELIVERED"),
        "{deliveries}"
    );
    assert!(!deliveries.to_string().contains("senha"));
    s.finish().await
}

#[tokio::test]
async fn a_receiver_down_then_up_gets_every_event_once() -> anyhow::Result<()> {
    let s = Stack::start("hookdown").await?;
    let receiver = Receiver::start().await?;
    let r = s
        .env
        .client()
        .post(format!("{}/webhooks/subscriptions", s.gw))
        .json(&json!({"url": receiver.url()}))
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let port = receiver.port;
    receiver.down();
    let task = s.task("echo '::percent::50'").await?;
    let mut jobs = Vec::new();
    for _ in 0..5 {
        jobs.push(s.run(&task, json!({})).await?);
    }
    for job in &jobs {
        eventually(Duration::from_secs(30), "COMPLETE", || async {
            Ok((s.job_status(job).await? == "COMPLETE").then_some(()))
        })
        .await?;
    }
    // The receiver is down: attempts fail and are scheduled again.
    eventually(Duration::from_secs(30), "failed attempts", || async {
        let pending = s.get("/webhooks/deliveries?status=PENDING").await?;
        let retried = pending
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["attempts"].as_i64().unwrap_or(0) >= 2 && d["last_error"].is_string())
            .count();
        Ok((retried >= 5).then_some(()))
    })
    .await?;
    let detail = {
        let pending = s.get("/webhooks/deliveries?status=PENDING").await?;
        let id = pending[0]["id"].as_str().unwrap_or_default().to_string();
        s.get(&format!("/webhooks/deliveries/{id}")).await?
    };
    assert!(
        detail["attempt_log"]
            .as_array()
            .is_some_and(|a| a.len() >= 2),
        "{detail}"
    );
    // Back up on the same port.
    receiver.answer.store(200, Ordering::SeqCst);
    let receiver = receiver.clone().up(port).await?;
    let mut expected: Vec<String> = Vec::new();
    for job in &jobs {
        expected.extend(s.events(job).await?.into_iter().map(|(id, _)| id));
    }
    let got = eventually(
        Duration::from_secs(60),
        "every event after the outage",
        || async {
            let got = deduplicated(&receiver.received());
            Ok((got.len() >= expected.len()).then_some(got))
        },
    )
    .await?;
    let got_ids: Vec<String> = got
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect();
    let unique: HashSet<&String> = got_ids.iter().collect();
    assert_eq!(
        unique.len(),
        got_ids.len(),
        "no event twice after deduplication by webhook-id"
    );
    assert_eq!(unique, expected.iter().collect::<HashSet<_>>());
    // Per job, in order.
    for job in &jobs {
        let of_job: Vec<String> = got
            .iter()
            .filter(|e| e["jobId"] == job.as_str())
            .map(|e| e["id"].as_str().unwrap_or_default().to_string())
            .collect();
        let stored: Vec<String> = s.events(job).await?.into_iter().map(|(id, _)| id).collect();
        assert_eq!(of_job, stored);
    }
    s.finish().await
}

#[tokio::test]
async fn gone_disables_the_subscription() -> anyhow::Result<()> {
    let s = Stack::start("hookgone").await?;
    let receiver = Receiver::start().await?;
    receiver.answer.store(410, Ordering::SeqCst);
    let sub: Value = s
        .env
        .client()
        .post(format!("{}/webhooks/subscriptions", s.gw))
        .json(&json!({"url": receiver.url(), "user": "u", "password": "p"}))
        .send()
        .await?
        .json()
        .await?;
    assert!(sub.get("password").is_none() && sub["has_password"] == true);
    let task = s.task("true").await?;
    let job = s.run(&task, json!({})).await?;
    eventually(
        Duration::from_secs(30),
        "the subscription disabled",
        || async {
            let subs = s.get("/webhooks/subscriptions").await?;
            Ok((subs[0]["enabled"] == false).then_some(()))
        },
    )
    .await?;
    let subs = s.get("/webhooks/subscriptions").await?;
    assert!(
        subs[0]["disabled_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("410")
    );
    eventually(Duration::from_secs(30), "COMPLETE", || async {
        Ok((s.job_status(&job).await? == "COMPLETE").then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = receiver.received().len();
    assert_eq!(calls, 1, "after its 410, nothing more is sent there");
    let dead = s.get("/webhooks/deliveries?status=DEAD").await?;
    assert!(dead.as_array().is_some_and(|d| !d.is_empty()), "{dead}");
    s.finish().await
}

#[tokio::test]
async fn a_restarted_reaper_resumes_the_schedule_and_dead_ones_can_be_redelivered()
-> anyhow::Result<()> {
    let mut s = Stack::start("hookresume").await?;
    let receiver = Receiver::start().await?;
    receiver.answer.store(500, Ordering::SeqCst);
    let task = s.task("true").await?;
    let job = s
        .run(&task, json!({"callback": {"url": receiver.url()}}))
        .await?;
    // Some attempts fail; then the reaper stops mid-schedule, between two
    // attempts. (Killed during an attempt, it would hold that delivery's
    // claim until the claim runs out, 45 s by default: another case.)
    let db = s.env.db().await?;
    eventually(
        Duration::from_secs(30),
        "two failed attempts, none in flight",
        || async {
            let between: bool = db
                .query_one(
                    "SELECT count(*) > 0 FROM webhook_deliveries
                  WHERE attempts >= 2 AND status = 'PENDING' AND claimed_until IS NULL
                    AND next_attempt_at > now() + interval '100 milliseconds'",
                    &[],
                )
                .await?
                .get(0);
            Ok((receiver.received().len() >= 2 && between).then_some(()))
        },
    )
    .await?;
    let reaper_index = 2;
    s.procs[reaper_index].kill9();
    let first = s.get(&format!("/webhooks/deliveries?job_id={job}")).await?;
    let first_id = first[0]["id"].as_str().unwrap_or_default().to_string();
    let attempts_before = first[0]["attempts"].as_i64().unwrap_or_default();
    receiver.answer.store(200, Ordering::SeqCst);
    s.procs.push(reaper(&s.env, "reaper-2")?);
    let done = eventually(
        Duration::from_secs(30),
        "delivered by the new reaper",
        || async {
            let d = s.get(&format!("/webhooks/deliveries/{first_id}")).await?;
            Ok((d["status"] == "DELIVERED").then_some(d))
        },
    )
    .await?;
    assert!(
        done["attempts"].as_i64().unwrap_or_default() > attempts_before,
        "{done}"
    );
    let ids: HashSet<String> = receiver
        .received()
        .iter()
        .filter_map(|r| r.headers.get("webhook-id").cloned())
        .collect();
    assert!(
        ids.contains(&first_id),
        "the same webhook-id across attempts and reapers"
    );

    // After the last attempt a delivery is DEAD; an admin redelivers it.
    receiver.answer.store(500, Ordering::SeqCst);
    let job2 = s
        .run(&task, json!({"callback": {"url": receiver.url()}}))
        .await?;
    // The job's events may travel in more than one delivery (one pending at
    // a time): wait until the job is done and every one of them is DEAD.
    let dead = eventually(Duration::from_secs(90), "every delivery DEAD", || async {
        if s.job_status(&job2).await? != "COMPLETE" {
            return Ok(None);
        }
        // Nothing owed first, then the list: a delivery formed between the
        // two reads would be pending and missing from the list.
        let owed: i64 = s
            .env
            .db()
            .await?
            .query_one(
                "SELECT count(*) FROM webhook_outbox WHERE delivery_id IS NULL",
                &[],
            )
            .await?
            .get(0);
        let v = s
            .get(&format!("/webhooks/deliveries?job_id={job2}"))
            .await?;
        let list = v.as_array().cloned().unwrap_or_default();
        let all_dead = !list.is_empty() && list.iter().all(|d| d["status"] == "DEAD");
        Ok((all_dead && owed == 0).then(|| list[0].clone()))
    })
    .await?;
    assert_eq!(
        dead["attempts"], 8,
        "1 + the 7 waits of the schedule: {dead}"
    );
    receiver.answer.store(200, Ordering::SeqCst);
    let id = dead["id"].as_str().unwrap_or_default().to_string();
    let r = s
        .env
        .client()
        .post(format!("{}/webhooks/deliveries/{id}/redeliver", s.gw))
        .send()
        .await?;
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await?);
    let redelivered = eventually(Duration::from_secs(30), "redelivered", || async {
        let d = s.get(&format!("/webhooks/deliveries/{id}")).await?;
        Ok((d["status"] == "DELIVERED").then_some(d))
    })
    .await?;
    let log = redelivered["attempt_log"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(log.len(), 9, "the log goes on: {redelivered}");
    assert_eq!(log[8]["status_code"], 200);
    s.finish().await
}

#[tokio::test]
async fn the_live_stream_carries_events_and_resumes_after_last_event_id() -> anyhow::Result<()> {
    let mut s = Stack::start("feed").await?;
    let task = s.task("echo '::percent::50'").await?;
    let feed_url = format!("{}/events/stream?access_token={}", s.gw, s.env.admin_token);
    let mut live = reqwest::Client::new().get(&feed_url).send().await?;
    assert_eq!(live.status(), 200);
    assert!(
        live.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    );
    let job = s.run(&task, json!({})).await?;
    eventually(Duration::from_secs(30), "COMPLETE", || async {
        Ok((s.job_status(&job).await? == "COMPLETE").then_some(()))
    })
    .await?;
    let stored: Vec<String> = s
        .events(&job)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let last = stored.last().cloned().unwrap_or_default();
    let seen = read_sse(&mut live, Duration::from_secs(30), |e| {
        e["id"] == last.as_str()
    })
    .await?;
    let got: Vec<String> = seen
        .iter()
        .filter(|(_, e)| e["job_id"] == job.as_str())
        .map(|(_, e)| e["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(got, stored, "every event of the job, in order, once");
    let ids: Vec<i64> = seen.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    drop(live);
    // Reconnecting after the first event gets the rest, not the first again.
    let mut resumed = reqwest::Client::new()
        .get(&feed_url)
        .header("Last-Event-ID", ids[0].to_string())
        .send()
        .await?;
    let again = read_sse(&mut resumed, Duration::from_secs(30), |e| {
        e["id"] == last.as_str()
    })
    .await?;
    let again_ids: Vec<i64> = again.iter().map(|(id, _)| *id).collect();
    assert_eq!(again_ids, ids[1..].to_vec());
    // A gateway with a stream open still stops promptly.
    assert!(
        s.procs[0].terminate(Duration::from_secs(10)),
        "the gateway did not stop"
    );
    drop(resumed);
    s.finish().await
}

/// An https receiver (Python's `http.server` behind TLS, with a certificate
/// made by `openssl` for this test) that appends each request to a file.
const HTTPS_RECEIVER: &str = r#"
import http.server, json, ssl, sys
cert, key, out = sys.argv[1:4]
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with open(out, "a") as f:
            f.write(json.dumps({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": json.loads(body)}) + "\n")
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

#[tokio::test]
async fn https_receivers_get_their_webhooks() -> anyhow::Result<()> {
    use std::io::BufRead;
    let env = Env::new("hooktls").await?;
    let dir = env.dir.clone();
    // A private CA and a server certificate it signs (webpki refuses a
    // self-signed CA certificate as a server's).
    let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (cert, key, csr) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("leaf.csr"),
    );
    let ext = dir.join("leaf.ext");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    let openssl = |args: &[&std::ffi::OsStr]| -> anyhow::Result<()> {
        let out = std::process::Command::new("openssl").args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    openssl(&[
        &os("req"),
        &os("-x509"),
        &os("-newkey"),
        &os("rsa:2048"),
        &os("-nodes"),
        &os("-days"),
        &os("1"),
        &os("-subj"),
        &os("/CN=orquestra-test-ca"),
        &os("-keyout"),
        ca_key.as_os_str(),
        &os("-out"),
        ca.as_os_str(),
    ])?;
    openssl(&[
        &os("req"),
        &os("-newkey"),
        &os("rsa:2048"),
        &os("-nodes"),
        &os("-subj"),
        &os("/CN=localhost"),
        &os("-keyout"),
        key.as_os_str(),
        &os("-out"),
        csr.as_os_str(),
    ])?;
    openssl(&[
        &os("x509"),
        &os("-req"),
        &os("-in"),
        csr.as_os_str(),
        &os("-CA"),
        ca.as_os_str(),
        &os("-CAkey"),
        ca_key.as_os_str(),
        &os("-CAcreateserial"),
        &os("-days"),
        &os("1"),
        &os("-extfile"),
        ext.as_os_str(),
        &os("-out"),
        cert.as_os_str(),
    ])?;
    let script = dir.join("receiver.py");
    std::fs::write(&script, HTTPS_RECEIVER)?;
    let out = dir.join("received.jsonl");
    let mut receiver = KillOnDrop(
        std::process::Command::new("python3")
            .arg(&script)
            .arg(&cert)
            .arg(&key)
            .arg(&out)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let port: u16 = {
        let stdout = receiver
            .0
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        line.trim().parse()?
    };
    let ca = ca.display().to_string();
    let mut vars: Vec<(&str, &str)> = FAST.to_vec();
    vars.push(("ORQ_WEBHOOKS__CA_FILE", &ca));
    let (_gw, gw) = env.start_gateway(&vars).await?;
    let mut cmd = env.command("timeout-reaper");
    for (k, v) in &vars {
        cmd.env(k, v);
    }
    let _reaper = env.spawn("timeout-reaper", cmd)?;
    let r = env
        .client()
        .post(format!("{gw}/webhooks/subscriptions"))
        .json(&json!({"url": format!("https://localhost:{port}/hook")}))
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    // A CSV task nobody runs: its creation event is delivered.
    let bots = env.client();
    let r = bots
        .post(format!("{gw}/bots"))
        .json(&json!({"name": "flask", "ip_address": "127.0.0.9", "systems": ["S"]}))
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let csv = orq_e2e::orq_shared::attachment::encode("a\n1\n");
    let task: Value = bots
        .post(format!("{gw}/tasks"))
        .json(&json!({"description": "x", "system": "S", "attachment": csv}))
        .send()
        .await?
        .json()
        .await?;
    let id = task["id"].as_str().unwrap_or_default().to_string();
    let got = eventually(Duration::from_secs(30), "an https delivery", || async {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["body"][0]["jobId"] == id.as_str()))
    })
    .await?;
    assert_eq!(got["body"][0]["type"], "STATUS_CHANGE");
    assert!(
        got["headers"]["webhook-signature"]
            .as_str()
            .unwrap_or_default()
            .starts_with("v1,")
    );
    drop(receiver);
    env.cleanup().await
}

/// A child process killed when dropped (a failed test leaves nothing).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
