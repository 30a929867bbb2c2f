//! The gateway's own accept loop (`serve.rs`), in process: the connection
//! cap, slow and idle clients cut at the header timeout, a request past
//! its timeout answered 408 in JSON. A SIGTERM with half-sent requests
//! needs the binary: `e2e/tests/edge.rs`.

use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::spawn_app_with;

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
    let app = spawn_app_with("slowclients", |s| {
        s.gateway.header_read_timeout_ms = 1500;
        s.gateway.max_connections = 40;
    })
    .await?;
    let gw = app.url.clone();
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
    let r = app.admin().get(format!("{gw}/bots")).send().await?;
    assert_eq!(r.status(), 200);
    app.stop().await
}

/// A request slower than `gateway.request_timeout_ms` (here: a body that
/// never arrives) gets the API's JSON error, 408, as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_timeout_gets_a_json_408() -> anyhow::Result<()> {
    let app = spawn_app_with("timeout", |s| s.gateway.request_timeout_ms = 500).await?;
    let gw = app.url.clone();
    let addr = gw.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST /tasks HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\nconnection: close\r\n\r\n{{",
        app.admin_token
    );
    socket.write_all(head.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        socket.read_to_string(&mut answer),
    )
    .await??;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: Value = serde_json::from_str(body)?;
    assert_eq!(body["error"]["code"], "timeout", "{answer}");
    app.stop().await
}
