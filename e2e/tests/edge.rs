//! The public edge under attack, where a process must run or die: where
//! the dispatcher delivers to legacy bots (deny list, no redirects), and a
//! SIGTERM with half-sent requests. What a credential may do, odd inputs,
//! rate limits, slow and idle clients and the connection cap are tested in
//! process (`gateway/tests/api`).

use orq_e2e::{Env, eventually};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
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
