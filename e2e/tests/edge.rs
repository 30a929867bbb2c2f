//! The public edge under attack, where a process must run or die: where
//! the dispatcher delivers to legacy bots (deny list, no redirects), slow
//! and idle clients against the real binary, and a SIGTERM with half-sent
//! requests. What a credential may do, odd inputs and rate limits are
//! tested in process (`gateway/tests/api`).

use orq_e2e::{Env, eventually};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    let redirecting = env.create(
        &format!("{gw}/bots"),
        &json!({"name": "redirecting", "ip_address": "127.0.0.1", "port": redirecting_port, "systems": ["S"]}),
    )
    .await?;
    let denied = env.create(
        &format!("{gw}/bots"),
        &json!({"name": "denied", "ip_address": "127.0.0.5", "port": denied_port, "systems": ["S"]}),
    )
    .await?;
    let attachment = orq_shared::attachment::encode("x\n1\n");
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
