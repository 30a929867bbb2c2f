//! Human tasks end to end (seed 000's micro-task API): the real gateway,
//! dispatcher and reaper against the real PostgreSQL and RabbitMQ. The
//! calls (publish, a `Worker`'s reserve/start/finish, the admin's view)
//! are the harness's `orq_e2e::Api`; user tasks' API alone is tested in
//! process (`gateway/tests/api/human.rs`).

use orq_e2e::api::{Worker, id, outcomes, seed_finish, statuses};
use orq_e2e::{Env, PrivatePg, client_with, eventually};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_micro_task_from_reservation_to_complete_with_the_seed_bodies() -> anyhow::Result<()> {
    let env = Env::new("human").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let api = env.api(&gw);
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let ana = "sofier@mysofie.com";
    let worker_a = api.worker(ana).await?;
    let worker_b = api.worker("bruno@mysofie.com").await?;
    let task = api.publish(json!({})).await?;
    let t = id(&task);
    assert_eq!(task["status"], "NEW");

    // Start is for the worker holding the reservation only.
    let (status, body) = worker_a
        .post(&format!("/micro_task/execution/{t}/start?sofier={ana}"))
        .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("not_reserved"))
    );
    let (status, reserved) = worker_a.reserve(&t).await?;
    assert_eq!(status, 200, "{reserved}");
    assert_eq!(reserved["status"], "RESERVED");
    assert_eq!(reserved["worker"], ana);
    let (status, body) = worker_b.reserve(&t).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("held_by_other"))
    );
    let (status, body) = worker_b
        .post(&format!(
            "/micro_task/execution/{t}/start?sofier=bruno@mysofie.com"
        ))
        .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("held_by_other"))
    );
    // The sofier parameter must be the token's own e-mail.
    let (status, body) = worker_a
        .post(&format!(
            "/micro_task/execution/{t}/start?sofier=bruno@mysofie.com"
        ))
        .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("sofier_mismatch"))
    );

    // The seed's start response, field for field; a second start returns
    // the same execution.
    let (status, started) = worker_a
        .post(&format!("/micro_task/execution/{t}/start?sofier={ana}"))
        .await?;
    assert_eq!(status, 200, "{started}");
    let mut keys: Vec<&str> = started
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "execution_id",
            "task_flow",
            "task_id",
            "task_info",
            "variables"
        ]
    );
    assert_eq!(started["task_id"], t.as_str());
    assert_eq!(started["variables"], json!({"produto": 47}));
    assert_eq!(started["task_info"], json!({"name": "PAT", "version": 1}));
    assert_eq!(started["task_flow"][0]["type"], "photo");
    let execution = started["execution_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (_, again) = worker_a
        .post(&format!("/micro_task/execution/{t}/start?sofier={ana}"))
        .await?;
    assert_eq!(again["execution_id"], execution.as_str());

    // The seed's body as written has an impossible hour: refused, by name.
    let mut impossible = seed_finish(&t, &execution, ana);
    impossible["when"]["finish"] = json!("2019-08-13T45:29:00");
    let (status, body) = worker_a.finish(&t, &impossible).await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["details"]["errors"][0]["field"],
        "when.finish"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("45:29")
    );
    let (status, _) = worker_a
        .finish_as(&t, "bruno@mysofie.com", &seed_finish(&t, &execution, ana))
        .await?;
    assert_eq!(status, 403);
    let forged = Worker {
        client: client_with("orqw_forged.token"),
        ..worker_a.clone()
    };
    let (status, _) = forged.finish(&t, &seed_finish(&t, &execution, ana)).await?;
    assert_eq!(status, 401);

    // Another worker's finish for this execution is accepted (202: the
    // gateway does not read the database) and then rejected with a reason.
    let (status, _) = worker_b
        .finish(&t, &seed_finish(&t, &execution, "bruno@mysofie.com"))
        .await?;
    assert_eq!(status, 202);
    let v = api
        .recorded(&t, "the wrong worker's finish recorded")
        .await?;
    assert_eq!(v["submissions"][0]["outcome"], "REJECTED");
    assert!(
        v["submissions"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("another worker")
    );
    assert_eq!(v["status"], "EXECUTING", "a refused finish changes nothing");

    // The right finish: 202 at once, then applied.
    let body = seed_finish(&t, &execution, ana);
    let (status, accepted) = worker_a.finish(&t, &body).await?;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "ACCEPTED");
    let done = api.wait_status(&t, "COMPLETE").await?;
    let exec = &done["executions"][0];
    assert_eq!(exec["status"], "COMPLETE");
    assert_eq!(exec["answers"][0]["response"], "Exemplo");
    assert_eq!(exec["location"]["lat"], -23.5656565656);
    assert_eq!(exec["nps"]["nps"], 10);
    assert_eq!(exec["timings"]["finish"], "2019-08-13T21:29:00Z");

    // The same finish again: accepted, recognised, applied once.
    let (status, _) = worker_a.finish(&t, &body).await?;
    assert_eq!(status, 202);
    let v = eventually(
        Duration::from_secs(30),
        "the repeated finish recorded",
        || async {
            let v = api.view(&t).await?;
            Ok((v["submissions"].as_array().map_or(0, Vec::len) == 3).then_some(v))
        },
    )
    .await?;
    let outcomes = outcomes(&v);
    assert_eq!(outcomes, ["REJECTED", "APPLIED", "DUPLICATE"]);
    assert_eq!(v["executions"].as_array().map(Vec::len), Some(1));

    let events = api.micro_task_events(&t).await?;
    assert_eq!(
        statuses(&events),
        ["NEW", "RESERVED", "EXECUTING", "SUBMITTED", "COMPLETE"]
    );
    assert!(
        events
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == "WARNING"
                && e["description"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("another worker")),
        "the refused finish is reported: {events}"
    );
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_failing_the_activity_schema_is_rejected_with_its_reason() -> anyhow::Result<()> {
    let env = Env::new("humanschema").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let api = env.api(&gw);
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let email = "carla@mysofie.com";
    let w = api.worker(email).await?;
    // A bad schema is refused when the task is published.
    let r = api
        .admin
        .post(api.url("/micro_task"))
        .json(&json!({"name": "PAT", "task_flow": [], "activity_schema": {"type": 12}}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let photo_url = json!({
        "type": "object",
        "required": ["execution"],
        "properties": {"execution": {"type": "array", "items": {
            "type": "object",
            "properties": {"response": {"type": "string", "pattern": "^https?://"}}
        }}}
    });
    let task = api.publish(json!({ "activity_schema": photo_url })).await?;
    let t = id(&task);
    w.reserve(&t).await?;
    let (_, started) = w.start(&t).await?;
    let execution = started["execution_id"].as_str().unwrap_or_default();
    let (status, _) = w.finish(&t, &seed_finish(&t, execution, email)).await?;
    assert_eq!(status, 202);
    // Refused with the schema's errors; the task stays as it was, and the
    // worker sends the answers again, corrected.
    let v = api.recorded(&t, "the invalid finish recorded").await?;
    assert_eq!(v["submissions"][0]["outcome"], "REJECTED");
    let reason = v["submissions"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("activity_schema") && reason.contains("/execution/0/response"),
        "{v}"
    );
    assert_eq!(v["status"], "EXECUTING");
    assert_eq!(v["executions"][0]["status"], "EXECUTING");
    let mut corrected = seed_finish(&t, execution, email);
    corrected["execution"][0]["response"] = json!("https://photos.example/1.jpg");
    let (status, _) = w.finish(&t, &corrected).await?;
    assert_eq!(status, 202);
    let v = api.wait_status(&t, "COMPLETE").await?;
    let outcomes = outcomes(&v);
    assert_eq!(outcomes, ["REJECTED", "APPLIED"]);

    // A revoked worker: refused at once where the database is read, and
    // its finish (accepted offline) rejected when it is applied.
    let fay = "fay@mysofie.com";
    let w = api.worker(fay).await?;
    let t = id(&api.publish(json!({})).await?);
    w.reserve(&t).await?;
    let (_, started) = w.start(&t).await?;
    let execution = started["execution_id"].as_str().unwrap_or_default();
    let r = api
        .admin
        .delete(api.url(&format!("/workers/{fay}")))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let r = w.client.get(format!("{gw}/micro_task/mine")).send().await?;
    assert_eq!(r.status(), 401);
    let (status, _) = w.finish(&t, &seed_finish(&t, execution, fay)).await?;
    assert_eq!(status, 202);
    let v = api.recorded(&t, "the revoked finish recorded").await?;
    assert_eq!(v["submissions"][0]["outcome"], "REJECTED");
    assert!(
        v["submissions"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked"),
        "{v}"
    );
    assert_eq!(v["status"], "EXECUTING");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_and_executions_expire_back_to_new() -> anyhow::Result<()> {
    let mut env = Env::new("humanexpiry").await?;
    env.vars.extend([
        ("ORQ_HUMAN__RESERVATION_MS".to_string(), "1500".to_string()),
        ("ORQ_HUMAN__MAX_RESERVATIONS".to_string(), "2".to_string()),
        ("ORQ_REAPER__TICK_MS".to_string(), "200".to_string()),
    ]);
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let api = env.api(&gw);
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let _reaper = env.start_reaper(&[])?;
    let email = "dora@mysofie.com";
    let w = api.worker(email).await?;
    let a = id(&api.publish(json!({ "execution_timeout": 2 })).await?);
    let b = id(&api.publish(json!({})).await?);
    let c = id(&api.publish(json!({})).await?);

    // A bounded number of reservations; `reserve` takes the oldest NEW.
    let (_, first) = w.post("/micro_task/reserve?name=PAT").await?;
    assert_eq!(id(&first), a);
    let (status, _) = w.reserve(&b).await?;
    assert_eq!(status, 200);
    let (status, body) = w.reserve(&c).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("too_many_reservations"))
    );

    // An execution past its deadline: back to NEW, the execution EXPIRED.
    let (_, started) = w.start(&a).await?;
    let execution = started["execution_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // A reservation nobody started: back to NEW.
    let v = api.wait_status(&b, "NEW").await?;
    assert_eq!(v["worker"], Value::Null);
    let v = api.wait_status(&a, "NEW").await?;
    assert_eq!(v["executions"][0]["status"], "EXPIRED");
    // A finish that arrives after the deadline is recorded and rejected.
    let (status, _) = w.finish(&a, &seed_finish(&a, &execution, email)).await?;
    assert_eq!(status, 202);
    let v = api.recorded(&a, "the late finish recorded").await?;
    assert_eq!(v["submissions"][0]["outcome"], "REJECTED");
    assert!(
        v["submissions"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{v}"
    );
    assert_eq!(v["status"], "NEW");
    // Someone else can take it now.
    let other = api.worker("eva@mysofie.com").await?;
    let (status, _) = other.reserve(&a).await?;
    assert_eq!(status, 200);
    let events = api.micro_task_events(&b).await?;
    assert_eq!(statuses(&events), ["NEW", "RESERVED", "NEW"]);
    assert!(
        events[2]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("reservation expired")
    );
    env.cleanup().await
}

/// Two reapers over the same expiring reservations: each is expired once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reapers_expire_each_reservation_once() -> anyhow::Result<()> {
    let mut env = Env::new("humanreapers").await?;
    env.vars.push(("ORQ_REAPER__TICK_MS".into(), "100".into()));
    env.vars
        .push(("ORQ_REAPER__BATCH_SIZE".into(), "50".into()));
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let api = env.api(&gw);
    const N: i64 = 2000;
    let db = env.db().await?;
    // One task through the API, copied into 2,000 reservations by SQL:
    // the reapers only see rows, and 2,000 round trips would just be slow.
    api.publish(json!({})).await?;
    db.execute(
        "INSERT INTO human_tasks (id, customer_id, kind, action, version, input, on_timeout,
                                  execution_ms, status, worker, deadline)
         SELECT gen_random_uuid(), customer_id, kind, action, version, input, on_timeout,
                execution_ms, 'RESERVED', 'w' || n || '@x.org', now() + interval '2 seconds'
           FROM human_tasks, generate_series(1, $1::bigint) AS n",
        &[&N],
    )
    .await?;
    let _r1 = env.spawn("reaper-1", env.command("timeout-reaper"))?;
    let _r2 = env.spawn("reaper-2", env.command("timeout-reaper"))?;
    eventually(
        Duration::from_secs(60),
        "every reservation expired",
        || async {
            let left: i64 = db
                .query_one(
                    "SELECT count(*) FROM human_tasks WHERE status = 'RESERVED'",
                    &[],
                )
                .await?
                .get(0);
            Ok((left == 0).then_some(()))
        },
    )
    .await?;
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT job_id) FROM job_events
              WHERE description LIKE '%reservation expired%'",
            &[],
        )
        .await?;
    let (events, tasks): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((events, tasks), (N, N), "one expiry per reservation");
    env.cleanup().await
}

/// Finishes are accepted while PostgreSQL is down, and every one of them
/// is applied exactly once when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_finishes_survive_a_database_outage() -> anyhow::Result<()> {
    let pg = PrivatePg::start()?;
    let mut env = Env::on("humanpgdown", &pg.base_url(), &orq_e2e::amqp_url()).await?;
    env.vars
        .push(("ORQ_HUMAN__MAX_RESERVATIONS".into(), "100".into()));
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let api = env.api(&gw);
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    const N: usize = 100;
    let mut workers = Vec::new();
    for i in 0..10 {
        workers.push(api.worker(&format!("w{i}@mysofie.com")).await?);
    }
    let mut finishes = Vec::with_capacity(N);
    for i in 0..N {
        let w = &workers[i % workers.len()];
        let t = id(&api.publish(json!({})).await?);
        let execution = w.take(&t).await?;
        let body = seed_finish(&t, &execution, &w.email);
        finishes.push((t, w.clone(), body));
    }

    pg.down()?;
    let ready = reqwest::get(format!("{gw}/readyz")).await?;
    assert_eq!(
        ready.status(),
        503,
        "the gateway knows the database is down"
    );
    // Each finish is posted twice (an app retrying): both are accepted,
    // and the second, mostly applied in the same batch as the first, is
    // recognised as the same.
    for (t, w, body) in &finishes {
        for _ in 0..2 {
            let (status, answer) = w.finish(t, body).await?;
            assert_eq!(
                status, 202,
                "finish of {t} while the database is down: {answer}"
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.up()?;

    let db = env.db().await?;
    eventually(
        Duration::from_secs(60),
        "all 200 finishes processed",
        || async {
            let done: i64 = db
                .query_one("SELECT count(*) FROM human_submissions", &[])
                .await?
                .get(0);
            Ok((done == 2 * N as i64).then_some(()))
        },
    )
    .await?;
    let complete: i64 = db
        .query_one(
            "SELECT count(*) FROM human_tasks WHERE status = 'COMPLETE'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(complete, N as i64);
    let row = db
        .query_one(
            "SELECT count(DISTINCT task_id), count(*) FILTER (WHERE outcome = 'APPLIED'),
                    count(*) FILTER (WHERE outcome = 'DUPLICATE')
               FROM human_submissions",
            &[],
        )
        .await?;
    let (tasks, applied, duplicates): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((tasks, applied, duplicates), (N as i64, N as i64, N as i64));
    let submitted: i64 = db
        .query_one(
            "SELECT count(*) FROM job_events WHERE to_status = 'SUBMITTED'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(submitted, N as i64, "each applied exactly once");
    env.cleanup().await?;
    drop(pg);
    Ok(())
}

/// A user task with a 2 s timeout and a timer 1 s before it: the reminder
/// fires, then the reaper submits it with what was committed and
/// `is_continue=true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_tasks_timer_fires_and_its_timeout_submits_it_with_is_continue() -> anyhow::Result<()>
{
    let mut env = Env::new("usertask").await?;
    env.vars.push(("ORQ_REAPER__TICK_MS".into(), "200".into()));
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _reaper = env.start_reaper(&[])?;
    let admin = env.client();
    // notify + a 2 s timeout + a timer: the reminder fires, then the
    // activity is submitted with what was committed and is_continue=true.
    let task: Value = admin
        .post(format!("{gw}/activity_manager"))
        .json(&json!({
            "action": "Confirmar_aceite",
            "input": {},
            "timeout": 2,
            "activity_manager": "notify",
            "events": [{"type": "timer", "before_expiry": 1, "description": "reminder"}],
        }))
        .send()
        .await?
        .json()
        .await?;
    let t = id(&task);
    assert_eq!(task["activity_manager"], "notify");
    admin
        .post(format!("{gw}/activity_manager/{t}/commit"))
        .json(&json!({"ok": true}))
        .send()
        .await?
        .error_for_status()?;
    let v = eventually(Duration::from_secs(30), "the user task expired", || async {
        let v: Value = admin
            .get(format!("{gw}/activity_manager/{t}"))
            .send()
            .await?
            .json()
            .await?;
        Ok((v["status"] == "COMPLETE").then_some(v))
    })
    .await?;
    assert_eq!(v["is_continue"], true);
    assert_eq!(v["result"], json!({"ok": true, "is_continue": true}));
    let events: Value = admin
        .get(format!("{gw}/activity_manager/{t}/events"))
        .send()
        .await?
        .json()
        .await?;
    let described: Vec<&str> = events
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["description"].as_str().unwrap_or_default())
        .collect();
    let reminder = described.iter().position(|d| *d == "timer: reminder");
    let timeout = described
        .iter()
        .position(|d| d.contains("timeout: submitted with is_continue=true"));
    assert!(
        reminder.is_some() && timeout.is_some() && reminder < timeout,
        "{described:?}"
    );
    env.cleanup().await
}

/// Asks for an upload ticket for a photo of `task`.
async fn photo_ticket(w: &Worker, task: &str, body: Value) -> anyhow::Result<(u16, Value)> {
    let url = format!("{}/micro_task/execution/{task}/photo", w.gw);
    orq_e2e::api::answer(w.client.post(url).json(&body)).await
}

/// Uploads `bytes` with this content type; the status (and the body when
/// it is not a success, to show why).
async fn upload(ticket: &Value, bytes: &[u8], content_type: &str) -> anyhow::Result<u16> {
    let r = reqwest::Client::new()
        .put(ticket["upload_url"].as_str().unwrap_or_default())
        .header("content-type", content_type)
        .body(bytes.to_vec())
        .send()
        .await?;
    let status = r.status().as_u16();
    if status >= 300 {
        eprintln!(
            "upload answered {status}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    Ok(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_goes_up_to_local_storage_and_to_an_s3_server() -> anyhow::Result<()> {
    let env = Env::new("photos").await?;
    let dir = env.dir.join("photos");
    let (_gw, gw) = env
        .start_gateway(&[
            ("ORQ_STORAGE__LOCAL_DIR", dir.to_str().unwrap_or_default()),
            ("ORQ_STORAGE__PHOTO_MAX_BYTES", "100000"),
        ])
        .await?;
    let api = env.api(&gw);
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let email = "gil@mysofie.com";
    let w = api.worker(email).await?;
    let t = id(&api.publish(json!({})).await?);
    let execution = w.take(&t).await?;
    let photo: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let request = json!({"step": 1, "content_type": "image/jpeg", "size": photo.len()});

    // Limits: the content type, the size; only for a started task.
    let (status, e) = photo_ticket(
        &w,
        &t,
        json!({"step": 1, "content_type": "text/html", "size": 10}),
    )
    .await?;
    assert_eq!(
        (status, e["error"]["details"]["field"].as_str()),
        (400, Some("content_type"))
    );
    let (status, e) = photo_ticket(
        &w,
        &t,
        json!({"step": 1, "content_type": "image/png", "size": 100001}),
    )
    .await?;
    assert_eq!(
        (status, e["error"]["details"]["field"].as_str()),
        (400, Some("size"))
    );
    let reserved = id(&api.publish(json!({})).await?);
    w.reserve(&reserved).await?;
    let (status, e) = photo_ticket(&w, &reserved, request.clone()).await?;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (409, Some("not_executing"))
    );

    let (status, ticket) = photo_ticket(&w, &t, request.clone()).await?;
    assert_eq!(status, 201, "{ticket}");
    assert_eq!(ticket["method"], "PUT");
    assert_eq!(ticket["headers"]["content-type"], "image/jpeg");
    // The signature binds the content type and the length.
    assert_eq!(upload(&ticket, &photo, "image/png").await?, 403);
    assert_eq!(upload(&ticket, &photo[..100], "image/jpeg").await?, 403);
    let mut tampered = ticket.clone();
    tampered["upload_url"] = json!(
        ticket["upload_url"]
            .as_str()
            .unwrap_or_default()
            .replace("-1-", "-2-")
            .replace("/1-", "/2-")
    );
    assert_eq!(upload(&tampered, &photo, "image/jpeg").await?, 403);
    assert_eq!(upload(&ticket, &photo, "image/jpeg").await?, 201);
    let url = ticket["url"].as_str().unwrap_or_default().to_string();
    let got = env.client().get(&url).send().await?;
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "image/jpeg");
    assert_eq!(
        got.bytes().await?.to_vec(),
        photo,
        "the same bytes come back"
    );
    assert_eq!(
        reqwest::get(&url).await?.status(),
        401,
        "photos need a token"
    );

    // The URL is the step's answer.
    let mut body = seed_finish(&t, &execution, email);
    body["execution"][0]["response"] = json!(url);
    let (status, _) = w.finish(&t, &body).await?;
    assert_eq!(status, 202);
    let v = api.wait_status(&t, "COMPLETE").await?;
    assert_eq!(v["executions"][0]["answers"][0]["response"], url.as_str());

    // S3: a real S3-compatible server (moto), a presigned PUT.
    let port = orq_e2e::free_port();
    let _moto = orq_e2e::python_peer(&env, "moto", "moto.server", &["-p", &port.to_string()])?;
    let s3 = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), "moto's S3 server", || async {
        Ok(http.get(&s3).send().await.ok().map(|_| ()))
    })
    .await?;
    assert!(
        http.put(format!("{s3}/field-photos"))
            .send()
            .await?
            .status()
            .is_success()
    );
    let (_gw2, gw2) = env
        .start_gateway(&[
            ("ORQ_STORAGE__KIND", "s3"),
            ("ORQ_STORAGE__S3_BUCKET", "field-photos"),
            ("ORQ_STORAGE__S3_ENDPOINT", &s3),
            ("ORQ_STORAGE__S3_ACCESS_KEY_ID", "testing"),
            ("ORQ_STORAGE__S3_SECRET_ACCESS_KEY", "testing"),
        ])
        .await?;
    // The same worker, through the second gateway.
    let (api2, w2) = (
        env.api(&gw2),
        Worker {
            gw: gw2.clone(),
            ..w.clone()
        },
    );
    let t2 = id(&api2.publish(json!({})).await?);
    w2.take(&t2).await?;
    let (status, ticket) = photo_ticket(&w2, &t2, request).await?;
    assert_eq!(status, 201, "{ticket}");
    let upload_url = ticket["upload_url"].as_str().unwrap_or_default();
    assert!(
        upload_url.starts_with(&s3) && upload_url.contains("X-Amz-Signature"),
        "{upload_url}"
    );
    assert!(
        upload_url.contains("content-type"),
        "the content type is signed: {upload_url}"
    );
    assert_eq!(upload(&ticket, &photo, "image/jpeg").await?, 200);
    // The photo's URL is the gateway's, which redirects a token of the
    // customer to a presigned GET of the object in the bucket.
    let url = ticket["url"].as_str().unwrap_or_default();
    assert!(url.starts_with(&format!("{gw2}/photos/")), "{url}");
    let stored = env.client().get(url).send().await?;
    assert_eq!(stored.status(), 200);
    assert!(
        stored
            .url()
            .as_str()
            .starts_with(&format!("{s3}/field-photos/photos/")),
        "{}",
        stored.url()
    );
    assert_eq!(
        stored.bytes().await?.to_vec(),
        photo,
        "the object in the bucket"
    );
    assert_eq!(reqwest::get(url).await?.status(), 401);
    env.cleanup().await
}

/// A provider endpoint (SMS) that fails its first request, then takes
/// every one; returns its address and what it received.
async fn flaky_provider() -> anyhow::Result<(
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
)> {
    use std::sync::{Arc, Mutex};
    let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/sms",
        axum::routing::post({
            let got = got.clone();
            move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| {
                let (got, calls) = (got.clone(), calls.clone());
                async move {
                    if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    got.lock().map(|mut g| g.push((auth, body))).ok();
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    // Webhooks land at /hook, recorded as ("webhook", body).
    let app = app.route(
        "/hook",
        axum::routing::post({
            let got = got.clone();
            move |axum::Json(body): axum::Json<Value>| {
                let got = got.clone();
                async move {
                    got.lock()
                        .map(|mut g| g.push(("webhook".into(), body)))
                        .ok();
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((format!("http://{addr}/sms"), got))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_is_told_by_email_sms_and_push_and_a_failing_sender_blocks_nothing()
-> anyhow::Result<()> {
    let mut env = Env::new("notify").await?;
    let smtp_port = orq_e2e::free_port();
    let maildir = env.dir.join("maildir");
    let _smtp = orq_e2e::python_peer(
        &env,
        "smtp",
        "aiosmtpd",
        &[
            "-n",
            "-l",
            &format!("127.0.0.1:{smtp_port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
            maildir.to_str().unwrap_or_default(),
        ],
    )?;
    let (sms_url, sms) = flaky_provider().await?;
    // Push goes to a port nobody listens on: it fails every time.
    let dead_push = format!("http://127.0.0.1:{}/push", orq_e2e::free_port());
    env.vars.extend([
        (
            "ORQ_NOTIFY__SMTP_URL".to_string(),
            format!("smtp://127.0.0.1:{smtp_port}"),
        ),
        ("ORQ_NOTIFY__SMS_URL".to_string(), sms_url.clone()),
        (
            "ORQ_NOTIFY__SMS_TOKEN".to_string(),
            "sms-secret".to_string(),
        ),
        ("ORQ_NOTIFY__PUSH_URL".to_string(), dead_push),
        (
            "ORQ_NOTIFY__RETRY_SCHEDULE_MS".to_string(),
            "300,300".to_string(),
        ),
        // The task's callback is a loopback receiver.
        ("ORQ_WEBHOOKS__DENY_NETWORKS".to_string(), String::new()),
    ]);
    eventually(Duration::from_secs(30), "the SMTP server", || async {
        Ok(tokio::net::TcpStream::connect(("127.0.0.1", smtp_port))
            .await
            .ok()
            .map(|_| ()))
    })
    .await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let api = env.api(&gw);
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let _reaper = env.start_reaper(&[])?;

    let email = "hana@mysofie.com";
    let w = api
        .worker_with(json!({"email": email, "phone": "+5511999990000"}))
        .await?;
    // The app registers its device token itself.
    let r = w
        .client
        .put(format!("{gw}/micro_task/me"))
        .json(&json!({"push_token": "device-123"}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let hook = sms_url.replace("/sms", "/hook");
    let t = id(&api.publish(json!({ "callback": { "url": hook } })).await?);
    w.reserve(&t).await?;
    let (_, started) = w.start(&t).await?;
    let execution = started["execution_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (status, _) = w.finish(&t, &seed_finish(&t, &execution, email)).await?;
    assert_eq!(status, 202);
    // Processing does not wait for any sender.
    api.wait_status(&t, "COMPLETE").await?;

    let v = eventually(
        Duration::from_secs(60),
        "e-mail and SMS sent, push dead",
        || async {
            let v = api.view(&t).await?;
            let by = |channel: &str| {
                v["notifications"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|n| n["channel"] == channel)
                    .map(|n| n["status"].as_str().unwrap_or_default().to_string())
            };
            let settled = by("email").as_deref() == Some("SENT")
                && by("sms").as_deref() == Some("SENT")
                && by("push").as_deref() == Some("DEAD");
            Ok(settled.then_some(v))
        },
    )
    .await?;
    let notes = v["notifications"].as_array().cloned().unwrap_or_default();
    let sms_note = notes
        .iter()
        .find(|n| n["channel"] == "sms")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        sms_note["attempts"], 2,
        "the SMS provider failed once: {sms_note}"
    );
    assert_eq!(
        sms_note["recipient"], "...0000",
        "a phone shows its last digits only"
    );
    let push_note = notes
        .iter()
        .find(|n| n["channel"] == "push")
        .cloned()
        .unwrap_or_default();
    assert_eq!(push_note["attempts"], 3, "{push_note}");
    assert!(
        push_note["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );

    // The task's webhook carried its events, in the seed's shape.
    let statuses_seen = eventually(Duration::from_secs(30), "the task's webhooks", || async {
        let got = sms.lock().map(|g| g.clone()).unwrap_or_default();
        let seen: Vec<String> = got
            .iter()
            .filter(|(who, _)| who == "webhook")
            .flat_map(|(_, body)| body.as_array().cloned().unwrap_or_default())
            .filter(|e| e["jobId"] == t.as_str() && e["type"] == "STATUS_CHANGE")
            .map(|e| e["description"].as_str().unwrap_or_default().to_string())
            .collect();
        Ok(seen.iter().any(|d| d.contains("COMPLETE")).then_some(seen))
    })
    .await?;
    assert!(statuses_seen[0].starts_with("NEW"), "{statuses_seen:?}");
    let got: Vec<(String, Value)> = sms
        .lock()
        .map(|g| {
            g.iter()
                .filter(|(who, _)| who != "webhook")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "Bearer sms-secret");
    assert_eq!(got[0].1["to"], "+5511999990000");
    assert!(
        got[0].1["text"]
            .as_str()
            .unwrap_or_default()
            .contains("under review")
    );

    // The e-mail, as the SMTP server stored it.
    let mut mails = Vec::new();
    for entry in std::fs::read_dir(maildir.join("new"))? {
        mails.push(std::fs::read_to_string(entry?.path())?);
    }
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(mails[0].contains(&format!("To: {email}")), "{}", mails[0]);
    assert!(
        mails[0].contains("Subject: PAT: your answers were received"),
        "{}",
        mails[0]
    );
    assert!(mails[0].contains(&t), "the task is named: {}", mails[0]);
    env.cleanup().await
}
