//! The live stream, `/events/stream`, in the order events became visible.

use orq_e2e::read_sse;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};

/// The ids of a CSV task's events, in its history's order.
async fn event_ids(app: &TestApp, task: &str) -> anyhow::Result<Vec<String>> {
    Ok(app
        .admin()
        .get(app.at(&format!("/tasks/{task}/events")))
        .send()
        .await?
        .json::<Vec<Value>>()
        .await?
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect())
}

/// A writer that keeps its transaction open for 5 s, past any settle
/// window: its event still reaches a live reader, before those committed
/// after it began, once each; and a reader resuming after it gets the rest.
#[tokio::test]
async fn an_event_committed_late_reaches_the_stream_once_and_resuming_misses_nothing()
-> anyhow::Result<()> {
    let app = spawn_app("feedheld").await?;
    app.create(
        "/bots",
        &json!({"name": "b", "ip_address": "127.0.0.1", "port": 5001, "systems": ["S"]}),
    )
    .await?;
    let task = |d: &str| {
        json!({"description": d, "system": "S",
               "attachment": orq_shared::attachment::encode("x\n1\n")})
    };
    let first = app.create("/tasks", &task("first")).await?;
    // `first`'s own events may be released before the stream opens or
    // after (the releaser waits for every older transaction on the
    // server, other tests' too): they are left out of what is compared.
    let before = event_ids(&app, &first).await?;
    assert!(!before.is_empty());
    let url = app.at(&format!("/events/stream?access_token={}", app.admin_token));
    let mut live = reqwest::Client::new().get(&url).send().await?;
    assert_eq!(live.status(), 200);

    // A writer adds an event to `first` and holds its transaction open ...
    let writer = app.db().await?;
    writer.batch_execute("BEGIN").await?;
    let held = Uuid::now_v7();
    let first_id: Uuid = first.parse()?;
    let n = writer
        .execute(
            "INSERT INTO job_events (id, job_id, customer_id, type, description)
             SELECT $1, id, customer_id, 'WARNING', 'written in a long transaction'
               FROM jobs WHERE id = $2",
            &[&held, &first_id],
        )
        .await?;
    assert_eq!(n, 1);
    // ... while another job is created and committed meanwhile.
    let second = app.create("/tasks", &task("second")).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    writer.batch_execute("COMMIT").await?;

    let second_events = event_ids(&app, &second).await?;
    assert!(!second_events.is_empty());
    let last = second_events.last().cloned().unwrap_or_default();
    let seen = read_sse(&mut live, Duration::from_secs(30), |e| {
        e["id"] == last.as_str()
    })
    .await?;
    let got: Vec<String> = seen
        .iter()
        .map(|(_, e)| e["id"].as_str().unwrap_or_default().to_string())
        .filter(|id| !before.contains(id))
        .collect();
    let mut expected = vec![held.to_string()];
    expected.extend(second_events.iter().cloned());
    assert_eq!(
        got, expected,
        "the held event first, then the rest, each once"
    );
    let ids: Vec<i64> = seen.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // The places from the held event on.
    let ids: Vec<i64> = seen
        .iter()
        .skip_while(|(_, e)| e["id"] != held.to_string().as_str())
        .map(|(id, _)| *id)
        .collect();
    drop(live);

    // Resuming after the held event gets the rest and nothing again.
    let mut resumed = reqwest::Client::new()
        .get(&url)
        .header("Last-Event-ID", ids[0].to_string())
        .send()
        .await?;
    let again = read_sse(&mut resumed, Duration::from_secs(30), |e| {
        e["id"] == last.as_str()
    })
    .await?;
    let again_ids: Vec<i64> = again.iter().map(|(id, _)| *id).collect();
    assert_eq!(again_ids, ids[1..].to_vec());
    drop(resumed);
    app.stop().await
}
