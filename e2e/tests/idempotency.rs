//! `Idempotency-Key` on every create: a repeat gets the first answer, a
//! different request under the key is refused, concurrent repeats create
//! once — and a gateway SIGKILLed between its commit and its answer costs a
//! retrying client nothing (no duplicate, the same id).

use orq_e2e::{Env, free_port, post_keyed};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_killed_mid_request_never_duplicates_a_retried_create() -> anyhow::Result<()> {
    let env = Env::new("idemkill").await?;
    let port = free_port();
    let (gateway, _) = env.start_gateway_on(port, &[]).await?;
    let gw = format!("http://127.0.0.1:{port}");
    env.create(
        &format!("{gw}/bots"),
        &json!({"name": "csv-bot", "ip_address": "127.0.0.1", "systems": ["Idem"]}),
    )
    .await?;

    // The killer: SIGKILL the gateway at random moments under load and
    // start it again on the same port, `KILLS` times.
    const KILLS: usize = 6;
    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (done, kills) = (done.clone(), kills.clone());
        let mut gateway = gateway;
        let env = &env;
        async move {
            for i in 0..KILLS {
                tokio::time::sleep(Duration::from_millis(150 + (i as u64 * 97) % 250)).await;
                gateway.kill9();
                kills.fetch_add(1, Ordering::SeqCst);
                gateway = env.start_gateway_on(port, &[]).await?.0;
            }
            // Some load after the last restart too.
            tokio::time::sleep(Duration::from_millis(200)).await;
            done.store(true, Ordering::SeqCst);
            anyhow::Ok(gateway)
        }
    };

    // The clients: four loops posting tasks, each with its own key, each
    // retried until answered.
    let url = format!("{gw}/tasks");
    let client = env.client();
    let clients = futures::future::join_all((0..4).map(|w| {
        let (done, client, url) = (done.clone(), client.clone(), url.clone());
        async move {
            let mut answered = Vec::new();
            let (mut retries, mut replays) = (0, 0);
            let mut n = 0;
            while !done.load(Ordering::SeqCst) && n < 5000 {
                let key = format!("kill-{w}-{n}");
                let body = json!({"description": key, "system": "Idem",
                                  "attachment": orq_e2e::orq_shared::attachment::encode("n\n1\n")});
                let (answer, replayed, failures) =
                    orq_e2e::post_until_answered(&client, &url, &key, &body).await?;
                retries += failures;
                replays += usize::from(replayed);
                answered.push((key, answer["id"].as_str().unwrap_or_default().to_string()));
                n += 1;
            }
            anyhow::Ok((answered, retries, replays))
        }
    }));
    let (killed, loads) = tokio::join!(killer, clients);
    let _gateway = killed?;
    let (mut answered, mut retries, mut replays) = (Vec::new(), 0, 0);
    for load in loads {
        let (a, r, p) = load?;
        answered.extend(a);
        retries += r;
        replays += p;
    }
    let n = answered.len();
    eprintln!(
        "{n} tasks posted through {} gateway kills: {retries} failed attempts retried, \
         {replays} answers were replays of a create committed before the kill",
        kills.load(Ordering::SeqCst)
    );
    assert_eq!(kills.load(Ordering::SeqCst), KILLS);
    assert!(
        retries >= 1,
        "no request was retried: the kills missed the load"
    );

    // Exactly one task per key, and it is the one each answer named.
    let rows = env
        .db()
        .await?
        .query(
            "SELECT description, id::text FROM jobs WHERE kind = 'system' AND description LIKE 'kill-%'",
            &[],
        )
        .await?;
    assert_eq!(rows.len(), n, "{} duplicates", rows.len() as i64 - n as i64);
    let stored: std::collections::HashMap<String, String> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (key, id) in &answered {
        assert_eq!(
            stored.get(key),
            Some(id),
            "{key}: the answer names its task"
        );
    }
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_prunes_keys_past_their_retention() -> anyhow::Result<()> {
    let env = Env::new("idemprune").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let (client, url) = (env.client(), format!("{gw}/bots"));
    let bot = |n: u32| json!({"name": format!("bot-{n}"), "ip_address": "127.0.0.1"});
    let post = |key: &'static str, n: u32| {
        let (client, url, body) = (client.clone(), url.clone(), bot(n));
        async move { post_keyed(&client, &url, key, &body).await }
    };
    assert_eq!(post("old", 0).await?.0, 201);
    assert_eq!(post("fresh", 1).await?.0, 201);
    let db = env.db().await?;
    db.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old'",
        &[],
    )
    .await?;
    let _reaper = env.start_reaper(&[])?;
    orq_e2e::eventually(Duration::from_secs(20), "the old key pruned", || {
        let db = &db;
        async move {
            let keys: Vec<String> = db
                .query("SELECT key FROM idempotency_keys ORDER BY key", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            Ok((keys == ["fresh"]).then_some(()))
        }
    })
    .await?;
    // Within the retention a key replays; past it, it is free again.
    assert!(post("fresh", 1).await?.1, "a fresh key replays");
    let (status, replayed, body) = post("old", 2).await?;
    assert_eq!((status, replayed), (201, false), "{body}");
    env.cleanup().await
}
