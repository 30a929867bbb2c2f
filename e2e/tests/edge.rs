//! The public edge under attack: what a bot credential may change, where
//! legacy bots' deliveries may go (deny list, no redirects), slow and idle
//! clients, the connection cap, a shutdown with half-sent requests, inputs
//! that used to panic or answer in plain text, and rate limits.

use orq_e2e::{Env, client_with, eventually};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn create_bot(client: &reqwest::Client, gw: &str, body: Value) -> anyhow::Result<String> {
    let r = client.post(format!("{gw}/bots")).json(&body).send().await?;
    let status = r.status();
    let created: Value = r.json().await?;
    anyhow::ensure!(status == 201, "create bot: {status} {created}");
    Ok(created["id"].as_str().unwrap_or_default().to_string())
}

/// `(status, error code, details.field)` of a request.
async fn answer(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, String, String)> {
    let r = request.send().await?;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    Ok((
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        body["error"]["details"]["field"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ))
}

async fn issue_bot_token(admin: &reqwest::Client, gw: &str, bot: &str) -> anyhow::Result<String> {
    let r = admin.post(format!("{gw}/bots/{bot}/token")).send().await?;
    anyhow::ensure!(r.status() == 201, "bot token: {}", r.text().await?);
    let issued: Value = r.json().await?;
    Ok(issued["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_token_changes_only_the_status_of_the_bot_it_holds() -> anyhow::Result<()> {
    let env = Env::new("botcred").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let admin = env.client();
    let a = create_bot(
        &admin,
        &gw,
        json!({"name": "a", "ip_address": "127.0.0.1", "port": 5001, "systems": ["S"]}),
    )
    .await?;
    let b = create_bot(
        &admin,
        &gw,
        json!({"name": "b", "ip_address": "127.0.0.1", "port": 5002}),
    )
    .await?;

    // A bot token that holds no bot changes none, address or status.
    let loose = client_with(&env.bot_token);
    for body in [
        json!({"status": "BUSY"}),
        json!({"ip_address": "10.0.0.1", "port": 80}),
    ] {
        let (status, code, _) = answer(loose.put(format!("{gw}/bots/{a}")).json(&body)).await?;
        assert_eq!((status, code.as_str()), (403, "not_your_bot"), "{body}");
    }

    // The token issued for bot a sets a's status ...
    let own = client_with(&issue_bot_token(&admin, &gw, &a).await?);
    let (status, _, _) = answer(
        own.put(format!("{gw}/bots/{a}"))
            .json(&json!({"status": "BUSY"})),
    )
    .await?;
    assert_eq!(status, 200);
    let bot: Value = admin
        .get(format!("{gw}/bots/{a}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(bot["status"], "BUSY");
    // ... and may echo the whole object back with a new status ...
    let mut echoed = bot.clone();
    echoed["status"] = json!("AVAILABLE");
    let (status, _, _) = answer(own.put(format!("{gw}/bots/{a}")).json(&echoed)).await?;
    assert_eq!(status, 200);
    // ... but changes nothing else of it,
    for (body, field) in [
        (json!({"ip_address": "10.9.9.9"}), "ip_address"),
        (json!({"port": 6000, "status": "BUSY"}), "port"),
        (json!({"delivery": "agent"}), "delivery"),
        (json!({"name": "evil"}), "name"),
        (json!({"capacity": 9}), "capacity"),
    ] {
        let (status, code, got) = answer(own.put(format!("{gw}/bots/{a}")).json(&body)).await?;
        assert_eq!(
            (status, code.as_str(), got.as_str()),
            (403, "field_not_allowed", field),
            "{body}"
        );
    }
    let bot: Value = admin
        .get(format!("{gw}/bots/{a}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        (
            bot["ip_address"].as_str(),
            bot["port"].as_i64(),
            bot["status"].as_str()
        ),
        (Some("127.0.0.1"), Some(5001), Some("AVAILABLE"))
    );
    // and nothing of another bot.
    let (status, code, _) = answer(
        own.put(format!("{gw}/bots/{b}"))
            .json(&json!({"status": "BUSY"})),
    )
    .await?;
    assert_eq!((status, code.as_str()), (403, "not_your_bot"));

    // It reports on tasks on its bot only, and by status only: this one
    // waits, on no bot.
    let task = env
        .create(
            &format!("{gw}/tasks"),
            &json!({"description": "d", "system": "S", "attachment": base64_csv("x\n1\n")}),
        )
        .await?;
    for (body, code) in [
        (json!({"status": "COMPLETE"}), "not_your_task"),
        (json!({"description": "mine now"}), "field_not_allowed"),
    ] {
        let (status, got, _) = answer(own.put(format!("{gw}/tasks/{task}")).json(&body)).await?;
        assert_eq!((status, got.as_str()), (403, code), "{body}");
    }

    // A new token for a takes it from the old one.
    let newer = client_with(&issue_bot_token(&admin, &gw, &a).await?);
    let (status, code, _) = answer(
        own.put(format!("{gw}/bots/{a}"))
            .json(&json!({"status": "BUSY"})),
    )
    .await?;
    assert_eq!((status, code.as_str()), (403, "not_your_bot"));
    let (status, _, _) = answer(
        newer
            .put(format!("{gw}/bots/{a}"))
            .json(&json!({"status": "BUSY"})),
    )
    .await?;
    assert_eq!(status, 200);

    // Only admins issue bot tokens; a repeat under one key is the same token.
    let (status, _, _) = answer(loose.post(format!("{gw}/bots/{b}/token"))).await?;
    assert_eq!(status, 403);
    let keyed = |key: &str| {
        admin
            .post(format!("{gw}/bots/{b}/token"))
            .header("Idempotency-Key", key)
    };
    let first: Value = keyed("k1").send().await?.json().await?;
    let again: Value = keyed("k1").send().await?.json().await?;
    assert!(
        first["access_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    assert_eq!(first["access_token"], again["access_token"]);

    // An agent's token holds the bot it registers, and no other.
    let agent = client_with(&env.bot_token);
    let r = agent
        .post(format!("{gw}/agent/register"))
        .json(&json!({"name": "agent-1", "ip_address": "127.0.0.1", "capacity": 1, "systems": [], "tags": []}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "register: {}", r.text().await?);
    let registered: Value = r.json().await?;
    let agent_bot = registered["id"].as_str().unwrap_or_default();
    let (status, _, _) = answer(
        agent
            .put(format!("{gw}/bots/{agent_bot}"))
            .json(&json!({"status": "BUSY"})),
    )
    .await?;
    assert_eq!(status, 200);
    let (status, code, _) = answer(
        newer
            .put(format!("{gw}/bots/{agent_bot}"))
            .json(&json!({"status": "BUSY"})),
    )
    .await?;
    assert_eq!((status, code.as_str()), (403, "not_your_bot"));
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_bot_addresses_are_checked_against_the_bot_deny_list() -> anyhow::Result<()> {
    let env = Env::new("botdeny").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let admin = env.client();
    // Cloud metadata, in two spellings, is refused by default ...
    for ip in [
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "::ffff:0:a9fe:a9fe",
    ] {
        let (status, code, field) = answer(
            admin
                .post(format!("{gw}/bots"))
                .json(&json!({"name": ip, "ip_address": ip})),
        )
        .await?;
        assert_eq!(
            (status, code.as_str(), field.as_str()),
            (400, "invalid_field", "ip_address"),
            "{ip}"
        );
    }
    // ... loopback and private networks are allowed (bots beside the gateway).
    let bot = create_bot(
        &admin,
        &gw,
        json!({"name": "near", "ip_address": "127.0.0.1"}),
    )
    .await?;
    create_bot(
        &admin,
        &gw,
        json!({"name": "lan", "ip_address": "192.168.1.20"}),
    )
    .await?;
    let (status, _, field) = answer(
        admin
            .put(format!("{gw}/bots/{bot}"))
            .json(&json!({"ip_address": "169.254.169.254"})),
    )
    .await?;
    assert_eq!((status, field.as_str()), (400, "ip_address"));
    // The list is the operator's: here loopback is denied too.
    let (_strict, strict) = env
        .start_gateway(&[("ORQ_SECURITY__BOT_DENY_NETWORKS", "127.0.0.0/8")])
        .await?;
    let (status, _, field) = answer(
        admin
            .post(format!("{strict}/bots"))
            .json(&json!({"name": "x", "ip_address": "::ffff:127.0.0.1"})),
    )
    .await?;
    assert_eq!((status, field.as_str()), (400, "ip_address"));
    env.cleanup().await
}

/// A stand-in bot answering every `POST /tasks` with `answer`, counting
/// what reached it.
async fn listening_bot(
    ip: &str,
    answer: axum::response::Response<String>,
) -> anyhow::Result<(u16, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind(format!("{ip}:0")).await?;
    let port = listener.local_addr()?.port();
    let hits = Arc::new(AtomicUsize::new(0));
    let (status, headers) = (answer.status(), answer.headers().clone());
    let counted = hits.clone();
    let app = axum::Router::new().route(
        "/tasks",
        axum::routing::post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let headers = headers.clone();
            async move { (status, headers, "") }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((port, hits))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_follows_no_redirect_and_delivers_to_no_denied_address() -> anyhow::Result<()>
{
    let env = Env::new("botredirect").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    // The dispatcher's list is stricter than the gateway's: 127.0.0.5 was
    // allowed when the bot was made, and is not when it is delivered to.
    let _dispatcher = env.start_dispatcher(
        "dispatcher",
        &[("ORQ_SECURITY__BOT_DENY_NETWORKS", "127.0.0.5/32")],
    )?;
    let admin = env.client();
    let (target_port, target_hits) =
        listening_bot("127.0.0.1", axum::response::Response::new(String::new())).await?;
    let redirect = axum::response::Response::builder()
        .status(307)
        .header("location", format!("http://127.0.0.1:{target_port}/tasks"))
        .body(String::new())?;
    let (redirecting_port, redirecting_hits) = listening_bot("127.0.0.1", redirect).await?;
    let (denied_port, denied_hits) =
        listening_bot("127.0.0.5", axum::response::Response::new(String::new())).await?;
    let redirecting = create_bot(
        &admin,
        &gw,
        json!({"name": "redirecting", "ip_address": "127.0.0.1", "port": redirecting_port, "systems": ["S"]}),
    )
    .await?;
    let denied = create_bot(
        &admin,
        &gw,
        json!({"name": "denied", "ip_address": "127.0.0.5", "port": denied_port, "systems": ["S"]}),
    )
    .await?;
    let attachment = base64_csv("x\n1\n");
    for _ in 0..2 {
        env.create(
            &format!("{gw}/tasks"),
            &json!({"description": "d", "system": "S", "attachment": attachment}),
        )
        .await?;
    }
    // Both bots fail their delivery and are marked UNAVAILABLE.
    for bot in [&redirecting, &denied] {
        eventually(
            Duration::from_secs(30),
            "the bot marked UNAVAILABLE",
            || {
                let (client, url) = (admin.clone(), format!("{gw}/bots/{bot}"));
                async move {
                    let b: Value = client.get(url).send().await?.json().await?;
                    Ok((b["status"] == "UNAVAILABLE").then_some(()))
                }
            },
        )
        .await?;
    }
    assert!(redirecting_hits.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        target_hits.load(Ordering::SeqCst),
        0,
        "a redirect was followed"
    );
    assert_eq!(
        denied_hits.load(Ordering::SeqCst),
        0,
        "a denied address got the task"
    );
    // The jobs' histories say why.
    let tasks: Vec<Value> = admin
        .get(format!("{gw}/tasks"))
        .send()
        .await?
        .json()
        .await?;
    let mut why = String::new();
    for t in &tasks {
        let id = t["id"].as_str().unwrap_or_default();
        let events: Vec<Value> = admin
            .get(format!("{gw}/tasks/{id}/events"))
            .send()
            .await?
            .json()
            .await?;
        for e in events {
            why.push_str(e["description"].as_str().unwrap_or_default());
            why.push('\n');
        }
    }
    assert!(why.contains("redirects are not followed"), "{why}");
    assert!(why.contains("security.bot_deny_networks"), "{why}");
    env.cleanup().await
}

fn base64_csv(csv: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(csv)
}

/// Reads until the peer closes (`Ok(bytes)`), or `Err` when still open at
/// `deadline`.
async fn read_until_closed(stream: &mut TcpStream, deadline: Instant) -> anyhow::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => anyhow::bail!(
                "still open; read so far: {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_and_connections_are_capped() -> anyhow::Result<()> {
    let env = Env::new("slowclients").await?;
    let (_gw, gw) = env
        .start_gateway(&[
            ("ORQ_GATEWAY__HEADER_READ_TIMEOUT_MS", "1500"),
            ("ORQ_GATEWAY__MAX_CONNECTIONS", "40"),
        ])
        .await?;
    let addr = gw.trim_start_matches("http://").to_string();

    // Connections up to the cap are taken; the next is answered 503 with
    // the JSON error and closed.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(TcpStream::connect(&addr).await?);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = TcpStream::connect(&addr).await?;
    let refused = read_until_closed(&mut over, Instant::now() + Duration::from_secs(5)).await?;
    let refused = String::from_utf8_lossy(&refused).to_string();
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("\"too_many_connections\""), "{refused}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Twenty clients sending one header line every 400 ms never finish
    // their headers; each is closed after the header timeout (1.5 s), not
    // kept open by its trickle.
    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..20 {
        let addr = addr.clone();
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await?;
            s.write_all(b"GET /bots HTTP/1.1\r\nHost: x\r\n").await?;
            let deadline = Instant::now() + Duration::from_secs(8);
            let mut line = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(400)).await;
                line += 1;
                let header = format!("X-Slow-{i}-{line}: y\r\n");
                if s.write_all(header.as_bytes()).await.is_err() {
                    return anyhow::Ok(started.elapsed());
                }
                let mut buf = [0u8; 512];
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
                {
                    return Ok(started.elapsed());
                }
                anyhow::ensure!(Instant::now() < deadline, "a slow client was never cut");
            }
        }));
    }
    for handle in slow {
        let cut_after = handle.await??;
        assert!(
            cut_after >= Duration::from_millis(1000),
            "cut too early: {cut_after:?}"
        );
    }

    // Connections that never send a byte are closed after it too.
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(TcpStream::connect(&addr).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(6);
    for s in &mut silent {
        let got = read_until_closed(s, deadline).await?;
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    }

    // An idle keep-alive connection is closed too, after its request.
    let mut idle = TcpStream::connect(&addr).await?;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let answered = read_until_closed(&mut idle, Instant::now() + Duration::from_secs(6)).await?;
    assert!(
        String::from_utf8_lossy(&answered).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answered)
    );

    // And the gateway still serves everyone else.
    let r = env.client().get(format!("{gw}/bots")).send().await?;
    assert_eq!(r.status(), 200);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_half_sent_requests_within_the_shutdown_budget() -> anyhow::Result<()> {
    let env = Env::new("halfsent").await?;
    let (mut gateway, gw) = env
        .start_gateway(&[("ORQ_GATEWAY__SHUTDOWN_GRACE_MS", "1000")])
        .await?;
    let addr = gw.trim_start_matches("http://").to_string();
    // One request stops mid-headers, one mid-body.
    let mut headers = TcpStream::connect(&addr).await?;
    headers
        .write_all(b"POST /tasks HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let mut body = TcpStream::connect(&addr).await?;
    body.write_all(
        format!(
            "POST /tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"desc",
            env.admin_token
        )
        .as_bytes(),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    // The budget is 1 s; the header timeout (10 s) and the request timeout
    // (30 s) would keep them far longer.
    assert!(
        gateway.terminate(Duration::from_secs(6)),
        "the gateway did not exit:\n{}",
        gateway.log_text()
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_paths_and_extreme_event_ids_get_answers_not_panics() -> anyhow::Result<()> {
    let env = Env::new("edgeinput").await?;
    let (gateway, gw) = env.start_gateway(&[]).await?;
    let admin = env.client();
    for path in [
        "/tasks/%ff",
        "/bots/%ff/drain",
        "/%ff/task",
        "/%ff/task/%fe/job",
        "/micro_task/execution/%c3%28/start",
    ] {
        let method = if path.ends_with("drain") || path.ends_with("start") {
            reqwest::Method::POST
        } else {
            reqwest::Method::GET
        };
        let r = admin.request(method, format!("{gw}{path}")).send().await?;
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!((400..500).contains(&status), "{path}: {status}");
        assert!(
            content_type.starts_with("application/json"),
            "{path}: {content_type}"
        );
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
    }
    let max = i64::MAX.to_string();
    for request in [
        admin.get(format!("{gw}/events/stream?after={max}")),
        admin
            .get(format!("{gw}/events/stream"))
            .header("Last-Event-ID", &max),
        admin.get(format!("{gw}/events/stream?after=-{max}")),
    ] {
        let mut r = request.send().await?;
        assert_eq!(r.status(), 200);
        // The stream stays up past a poll, with no panic closing it.
        let next = tokio::time::timeout(Duration::from_millis(700), r.chunk()).await;
        assert!(!matches!(next, Ok(Ok(None) | Err(_))), "the stream ended");
    }
    let (status, code, _) =
        answer(admin.get(format!("{gw}/events/stream?after=99999999999999999999"))).await?;
    assert_eq!((status, code.as_str()), (400, "invalid_query"));
    assert!(
        !gateway.log_text().contains("panicked"),
        "{}",
        gateway.log_text()
    );
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_a_rate_limit_get_429_with_retry_after() -> anyhow::Result<()> {
    let env = Env::new("ratelimit").await?;
    // Reads: 30 a minute per token, one at a time (a burst of one second
    // is less than one request: one). Creates: 30 a minute per address,
    // loopback counted.
    let (_gw, gw) = env
        .start_gateway(&[
            ("ORQ_LIMITS__READ__PER_TOKEN", "30"),
            ("ORQ_LIMITS__READ__BURST_SECONDS", "1"),
            ("ORQ_LIMITS__CREATE__PER_ADDRESS", "30"),
            ("ORQ_LIMITS__CREATE__BURST_SECONDS", "1"),
            ("ORQ_LIMITS__ADDRESS_EXEMPT", " "),
        ])
        .await?;
    let admin = env.client();
    assert_eq!(admin.get(format!("{gw}/bots")).send().await?.status(), 200);
    let r = admin.get(format!("{gw}/bots")).send().await?;
    assert_eq!(r.status(), 429);
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let body: Value = r.json().await?;
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["details"]["per"], "token");
    assert_eq!(body["error"]["details"]["limit"], "read");
    // Another token reads; this one does again after waiting.
    let viewer = client_with(&env.token(&env.customer, "viewer")?);
    assert_eq!(viewer.get(format!("{gw}/bots")).send().await?.status(), 200);
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(admin.get(format!("{gw}/bots")).send().await?.status(), 200);

    // Creates from one address are limited whatever token they carry.
    let body = json!({"name": "n1", "ip_address": "127.0.0.1"});
    let first = admin.post(format!("{gw}/bots")).json(&body).send().await?;
    assert_eq!(first.status(), 201);
    let (status, code, _) = answer(
        viewer
            .post(format!("{gw}/bots"))
            .json(&json!({"name": "n2", "ip_address": "127.0.0.1"})),
    )
    .await?;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    env.cleanup().await
}
