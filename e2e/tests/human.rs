//! Human tasks end to end (seed 000's micro-task API): the real gateway,
//! dispatcher and reaper against the real PostgreSQL and RabbitMQ.

use orq_e2e::{Env, PrivatePg, client_with, eventually};
use serde_json::{Value, json};
use std::time::Duration;

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_string()
}

/// A field worker's token, from the admin API.
async fn worker(env: &Env, gw: &str, email: &str) -> anyhow::Result<reqwest::Client> {
    let r: Value = env
        .client()
        .post(format!("{gw}/{}/workers", env.customer))
        .json(&json!({ "email": email }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(client_with(r["access_token"].as_str().unwrap_or_default()))
}

/// Publishes a micro-task named PAT with `extra` fields.
async fn publish(env: &Env, gw: &str, extra: Value) -> anyhow::Result<Value> {
    let mut body = json!({
        "name": "PAT",
        "version": 1,
        "task_flow": [{"index": 1, "type": "photo"}, {"index": 2, "type": "text"}],
        "variables": {"produto": 47},
    });
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    let r = env
        .client()
        .post(format!("{gw}/{}/micro_task", env.customer))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(
        r.status() == 201,
        "publish: {} {}",
        r.status(),
        r.text().await?
    );
    Ok(r.json().await?)
}

async fn view(env: &Env, gw: &str, task: &str) -> anyhow::Result<Value> {
    Ok(env
        .client()
        .get(format!("{gw}/{}/micro_task/{task}", env.customer))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// The outcomes of a task's submissions, in the order they were received.
fn outcomes(view: &Value) -> Vec<&str> {
    view["submissions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["outcome"].as_str().unwrap_or_default())
        .collect()
}

/// The task's view once the dispatcher recorded a submission for it.
async fn recorded(env: &Env, gw: &str, task: &str, what: &str) -> anyhow::Result<Value> {
    eventually(Duration::from_secs(30), what, || async {
        let v = view(env, gw, task).await?;
        Ok((v["submissions"].as_array().is_some_and(|s| !s.is_empty())).then_some(v))
    })
    .await
}

async fn wait_status(env: &Env, gw: &str, task: &str, want: &str) -> anyhow::Result<Value> {
    eventually(
        Duration::from_secs(30),
        &format!("micro-task {task} {want}"),
        || async {
            let v = view(env, gw, task).await?;
            Ok((v["status"] == want).then_some(v))
        },
    )
    .await
}

/// Seed 000's finish body for this task and execution, its trailing commas
/// removed and its impossible `45:29` made a real time.
fn seed_finish(task: &str, execution: &str, who: &str) -> Value {
    json!({
        "task_id": task,
        "execution_id": execution,
        "task_info": {"name": "PAT", "version": 1},
        "location": {"lat": -23.5656565656, "lng": -43.9564157},
        "who": who,
        "nps_sofier": {"nps": 10, "comment": "Tudo lindo e maravilhoso!"},
        "when": {"start": "2019-08-13T20:15:00", "finish": "2019-08-13T21:29:00"},
        "execution": [{
            "context": "LUGAR:ERRADO:LEAD_ALELO",
            "index": 2,
            "previous": 1,
            "when": "2019-08-13T20:15:00",
            "response": "Exemplo"
        }]
    })
}

async fn post(client: &reqwest::Client, url: String) -> anyhow::Result<(u16, Value)> {
    let r = client.post(url).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

async fn finish(
    client: &reqwest::Client,
    gw: &str,
    task: &str,
    sofier: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let r = client
        .post(format!(
            "{gw}/micro_task/execution/{task}/finish?sofier={sofier}"
        ))
        .json(body)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

fn statuses(events: &Value) -> Vec<String> {
    events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "STATUS_CHANGE")
        .map(|e| e["to_status"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_micro_task_from_reservation_to_complete_with_the_seed_bodies() -> anyhow::Result<()> {
    let env = Env::new("human").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let ana = "sofier@mysofie.com";
    let worker_a = worker(&env, &gw, ana).await?;
    let worker_b = worker(&env, &gw, "bruno@mysofie.com").await?;
    let task = publish(&env, &gw, json!({})).await?;
    let t = id(&task);
    assert_eq!(task["status"], "NEW");

    // Start is for the worker holding the reservation only.
    let (status, body) = post(
        &worker_a,
        format!("{gw}/micro_task/execution/{t}/start?sofier={ana}"),
    )
    .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("not_reserved"))
    );
    let (status, reserved) = post(&worker_a, format!("{gw}/micro_task/{t}/reserve")).await?;
    assert_eq!(status, 200, "{reserved}");
    assert_eq!(reserved["status"], "RESERVED");
    assert_eq!(reserved["worker"], ana);
    let (status, body) = post(&worker_b, format!("{gw}/micro_task/{t}/reserve")).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("held_by_other"))
    );
    let (status, body) = post(
        &worker_b,
        format!("{gw}/micro_task/execution/{t}/start?sofier=bruno@mysofie.com"),
    )
    .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("held_by_other"))
    );
    // The sofier parameter must be the token's own e-mail.
    let (status, body) = post(
        &worker_a,
        format!("{gw}/micro_task/execution/{t}/start?sofier=bruno@mysofie.com"),
    )
    .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("sofier_mismatch"))
    );

    // The seed's start response, field for field; a second start returns
    // the same execution.
    let (status, started) = post(
        &worker_a,
        format!("{gw}/micro_task/execution/{t}/start?sofier={ana}"),
    )
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
    let (_, again) = post(
        &worker_a,
        format!("{gw}/micro_task/execution/{t}/start?sofier={ana}"),
    )
    .await?;
    assert_eq!(again["execution_id"], execution.as_str());

    // The seed's body as written has an impossible hour: refused, by name.
    let mut impossible = seed_finish(&t, &execution, ana);
    impossible["when"]["finish"] = json!("2019-08-13T45:29:00");
    let (status, body) = finish(&worker_a, &gw, &t, ana, &impossible).await?;
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
    let (status, _) = finish(
        &worker_a,
        &gw,
        &t,
        "bruno@mysofie.com",
        &seed_finish(&t, &execution, ana),
    )
    .await?;
    assert_eq!(status, 403);
    let (status, _) = finish(
        &client_with("orqw_forged.token"),
        &gw,
        &t,
        ana,
        &seed_finish(&t, &execution, ana),
    )
    .await?;
    assert_eq!(status, 401);

    // Another worker's finish for this execution is accepted (202: the
    // gateway does not read the database) and then rejected with a reason.
    let (status, _) = finish(
        &worker_b,
        &gw,
        &t,
        "bruno@mysofie.com",
        &seed_finish(&t, &execution, "bruno@mysofie.com"),
    )
    .await?;
    assert_eq!(status, 202);
    let v = recorded(&env, &gw, &t, "the wrong worker's finish recorded").await?;
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
    let (status, accepted) = finish(&worker_a, &gw, &t, ana, &body).await?;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "ACCEPTED");
    let done = wait_status(&env, &gw, &t, "COMPLETE").await?;
    let exec = &done["executions"][0];
    assert_eq!(exec["status"], "COMPLETE");
    assert_eq!(exec["answers"][0]["response"], "Exemplo");
    assert_eq!(exec["location"]["lat"], -23.5656565656);
    assert_eq!(exec["nps"]["nps"], 10);
    assert_eq!(exec["timings"]["finish"], "2019-08-13T21:29:00Z");

    // The same finish again: accepted, recognised, applied once.
    let (status, _) = finish(&worker_a, &gw, &t, ana, &body).await?;
    assert_eq!(status, 202);
    let v = eventually(
        Duration::from_secs(30),
        "the repeated finish recorded",
        || async {
            let v = view(&env, &gw, &t).await?;
            Ok((v["submissions"].as_array().map_or(0, Vec::len) == 3).then_some(v))
        },
    )
    .await?;
    let outcomes = outcomes(&v);
    assert_eq!(outcomes, ["REJECTED", "APPLIED", "DUPLICATE"]);
    assert_eq!(v["executions"].as_array().map(Vec::len), Some(1));

    let events: Value = env
        .client()
        .get(format!("{gw}/{}/micro_task/{t}/events", env.customer))
        .send()
        .await?
        .json()
        .await?;
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
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let email = "carla@mysofie.com";
    let w = worker(&env, &gw, email).await?;
    // A bad schema is refused when the task is published.
    let r = env
        .client()
        .post(format!("{gw}/{}/micro_task", env.customer))
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
    let task = publish(&env, &gw, json!({ "activity_schema": photo_url })).await?;
    let t = id(&task);
    post(&w, format!("{gw}/micro_task/{t}/reserve")).await?;
    let (_, started) = post(&w, format!("{gw}/micro_task/execution/{t}/start")).await?;
    let execution = started["execution_id"].as_str().unwrap_or_default();
    let (status, _) = finish(&w, &gw, &t, email, &seed_finish(&t, execution, email)).await?;
    assert_eq!(status, 202);
    // Refused with the schema's errors; the task stays as it was, and the
    // worker sends the answers again, corrected.
    let v = recorded(&env, &gw, &t, "the invalid finish recorded").await?;
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
    let (status, _) = finish(&w, &gw, &t, email, &corrected).await?;
    assert_eq!(status, 202);
    let v = wait_status(&env, &gw, &t, "COMPLETE").await?;
    let outcomes = outcomes(&v);
    assert_eq!(outcomes, ["REJECTED", "APPLIED"]);

    // A revoked worker: refused at once where the database is read, and
    // its finish (accepted offline) rejected when it is applied.
    let fay = "fay@mysofie.com";
    let w = worker(&env, &gw, fay).await?;
    let t = id(&publish(&env, &gw, json!({})).await?);
    post(&w, format!("{gw}/micro_task/{t}/reserve")).await?;
    let (_, started) = post(&w, format!("{gw}/micro_task/execution/{t}/start")).await?;
    let execution = started["execution_id"].as_str().unwrap_or_default();
    let r = env
        .client()
        .delete(format!("{gw}/{}/workers/{fay}", env.customer))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let r = w.get(format!("{gw}/micro_task/mine")).send().await?;
    assert_eq!(r.status(), 401);
    let (status, _) = finish(&w, &gw, &t, fay, &seed_finish(&t, execution, fay)).await?;
    assert_eq!(status, 202);
    let v = recorded(&env, &gw, &t, "the revoked finish recorded").await?;
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
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let _reaper = env.start_reaper(&[])?;
    let email = "dora@mysofie.com";
    let w = worker(&env, &gw, email).await?;
    let a = id(&publish(&env, &gw, json!({ "execution_timeout": 2 })).await?);
    let b = id(&publish(&env, &gw, json!({})).await?);
    let c = id(&publish(&env, &gw, json!({})).await?);

    // A bounded number of reservations; `reserve` takes the oldest NEW.
    let (_, first) = post(&w, format!("{gw}/micro_task/reserve?name=PAT")).await?;
    assert_eq!(id(&first), a);
    let (status, _) = post(&w, format!("{gw}/micro_task/{b}/reserve")).await?;
    assert_eq!(status, 200);
    let (status, body) = post(&w, format!("{gw}/micro_task/{c}/reserve")).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("too_many_reservations"))
    );

    // An execution past its deadline: back to NEW, the execution EXPIRED.
    let (_, started) = post(&w, format!("{gw}/micro_task/execution/{a}/start")).await?;
    let execution = started["execution_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // A reservation nobody started: back to NEW.
    let v = wait_status(&env, &gw, &b, "NEW").await?;
    assert_eq!(v["worker"], Value::Null);
    let v = wait_status(&env, &gw, &a, "NEW").await?;
    assert_eq!(v["executions"][0]["status"], "EXPIRED");
    // A finish that arrives after the deadline is recorded and rejected.
    let (status, _) = finish(&w, &gw, &a, email, &seed_finish(&a, &execution, email)).await?;
    assert_eq!(status, 202);
    let v = recorded(&env, &gw, &a, "the late finish recorded").await?;
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
    let other = worker(&env, &gw, "eva@mysofie.com").await?;
    let (status, _) = post(&other, format!("{gw}/micro_task/{a}/reserve")).await?;
    assert_eq!(status, 200);
    let events: Value = env
        .client()
        .get(format!("{gw}/{}/micro_task/{b}/events", env.customer))
        .send()
        .await?
        .json()
        .await?;
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
    const N: i64 = 2000;
    let db = env.db().await?;
    // One task through the API, copied into 2,000 reservations by SQL:
    // the reapers only see rows, and 2,000 round trips would just be slow.
    publish(&env, &gw, json!({})).await?;
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
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    const N: usize = 100;
    let workers: Vec<(String, reqwest::Client)> = {
        let mut v = Vec::new();
        for i in 0..10 {
            let email = format!("w{i}@mysofie.com");
            v.push((email.clone(), worker(&env, &gw, &email).await?));
        }
        v
    };
    let mut finishes = Vec::with_capacity(N);
    for i in 0..N {
        let (email, w) = &workers[i % workers.len()];
        let t = id(&publish(&env, &gw, json!({})).await?);
        let (status, _) = post(w, format!("{gw}/micro_task/{t}/reserve")).await?;
        anyhow::ensure!(status == 200, "reserve {t}: {status}");
        let (_, started) = post(w, format!("{gw}/micro_task/execution/{t}/start")).await?;
        let execution = started["execution_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        finishes.push((
            t.clone(),
            email.clone(),
            w.clone(),
            seed_finish(&t, &execution, email),
        ));
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
    for (t, email, w, body) in &finishes {
        for _ in 0..2 {
            let (status, answer) = finish(w, &gw, t, email, body).await?;
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

/// flowBuild's user tasks: opened with the seed's parameters, committed
/// and submitted through the activity manager.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_tasks_commit_submit_and_expire_with_is_continue() -> anyhow::Result<()> {
    let mut env = Env::new("usertask").await?;
    env.vars.push(("ORQ_REAPER__TICK_MS".into(), "200".into()));
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _reaper = env.start_reaper(&[])?;
    let admin = env.client();
    let open = |body: Value| {
        let admin = admin.clone();
        let gw = gw.clone();
        async move {
            let r = admin
                .post(format!("{gw}/activity_manager"))
                .json(&body)
                .send()
                .await?;
            let status = r.status().as_u16();
            anyhow::Ok((status, r.json::<Value>().await.unwrap_or(Value::Null)))
        }
    };
    let schema = json!({
        "type": "object",
        "required": ["cpf"],
        "properties": {"cpf": {"type": "string", "pattern": "^[0-9]{11}$"}}
    });

    // Bad parameters are refused, naming the field.
    for (body, field) in [
        (json!({"input": {}}), "action"),
        (json!({"action": "Preencher_dados_pessoais"}), "input"),
        (
            json!({"action": "a", "input": {}, "timeout": "2019-08-13T45:29:00"}),
            "timeout",
        ),
        (
            json!({"action": "a", "input": {}, "timeout": -3}),
            "timeout",
        ),
        (
            json!({"action": "a", "input": {}, "activity_manager": "wait"}),
            "activity_manager",
        ),
        (
            json!({"action": "a", "input": {}, "activity_schema": {"type": 1}}),
            "activity_schema",
        ),
        (
            json!({"action": "a", "input": {}, "events": [{"type": "timer"}]}),
            "events[0]",
        ),
    ] {
        let (status, e) = open(body.clone()).await?;
        assert_eq!(status, 400, "{body}: {e}");
        let named = e["error"]["details"]["field"] == field
            || e["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(field);
        assert!(named, "{body}: {e}");
    }

    // Commit (partial) and submit; a payload failing activity_schema is a
    // 400 with the validation errors and changes nothing.
    let (status, task) = open(json!({
        "action": "Preencher_dados_pessoais",
        "input": {"name": "Ana"},
        "timeout": 3600,
        "activity_schema": schema,
        "result_schema": {"type": "object", "required": ["cpf"]},
    }))
    .await?;
    assert_eq!(status, 201, "{task}");
    assert_eq!(task["status"], "NEW");
    assert_eq!(task["activity_manager"], "commit");
    let expires = task["expires_at"].as_str().unwrap_or_default().to_string();
    assert!(
        !expires.is_empty(),
        "the timeout became an absolute deadline"
    );
    let t = id(&task);
    let r = admin
        .post(format!("{gw}/activity_manager/{t}/commit"))
        .json(&json!({"cpf": "12"}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await?;
    assert_eq!(e["error"]["details"]["errors"][0]["field"], "/cpf", "{e}");
    let unchanged: Value = admin
        .get(format!("{gw}/activity_manager/{t}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(unchanged["status"], "NEW");
    assert_eq!(unchanged["committed"], Value::Null);
    let r = admin
        .post(format!("{gw}/activity_manager/{t}/commit"))
        .json(&json!({"cpf": "12345678901"}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let committed: Value = r.json().await?;
    assert_eq!(committed["status"], "EXECUTING");
    assert_eq!(committed["expires_at"], expires.as_str());
    let r = admin
        .post(format!("{gw}/activity_manager/{t}/submit"))
        .send()
        .await?;
    assert_eq!(r.status(), 202);
    let done: Value = r.json().await?;
    assert_eq!(done["status"], "COMPLETE");
    assert_eq!(done["result"], json!({"cpf": "12345678901"}));
    assert_eq!(done["is_continue"], false);
    let r = admin
        .post(format!("{gw}/activity_manager/{t}/submit"))
        .send()
        .await?;
    assert_eq!(r.status(), 422, "no longer open");
    let r = admin
        .post(format!("{gw}/activity_manager/{t}/commit"))
        .json(&json!({"cpf": "1"}))
        .send()
        .await?;
    assert_eq!(r.status(), 422);

    // A result that fails result_schema puts the task in ERROR.
    let (_, task) = open(
        json!({"action": "a", "input": {}, "result_schema": {"type": "object", "required": ["x"]}}),
    )
    .await?;
    let r = admin
        .post(format!("{gw}/activity_manager/{}/submit", id(&task)))
        .json(&json!({"y": 1}))
        .send()
        .await?;
    let v: Value = r.json().await?;
    assert_eq!(v["status"], "ERROR");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("result_schema"),
        "{v}"
    );

    // notify + a 2 s timeout + a timer: the reminder fires, then the
    // activity is submitted with what was committed and is_continue=true.
    let (_, task) = open(json!({
        "action": "Confirmar_aceite",
        "input": {},
        "timeout": 2,
        "activity_manager": "notify",
        "events": [{"type": "timer", "before_expiry": 1, "description": "reminder"}],
    }))
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

    // An admin expires an open one; a user may not. One opened without a
    // timeout still has a deadline: `human.user_task_timeout_ms` (7 days).
    let (_, task) = open(json!({"action": "a", "input": {}})).await?;
    let t = id(&task);
    let expires = time::OffsetDateTime::parse(
        task["expires_at"].as_str().unwrap_or_default(),
        &time::format_description::well_known::Rfc3339,
    )?;
    let hours = (expires - time::OffsetDateTime::now_utc()).whole_hours();
    assert!((167..=168).contains(&hours), "{task}");
    let user = client_with(&env.token(&env.customer, "user")?);
    let r = user
        .post(format!("{gw}/activity_manager/{t}/expire"))
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    let r = admin
        .post(format!("{gw}/activity_manager/{t}/expire"))
        .send()
        .await?;
    let v: Value = r.json().await?;
    assert_eq!(
        (v["status"].as_str(), v["is_continue"].as_bool()),
        (Some("COMPLETE"), Some(true))
    );
    let listed: Value = admin
        .get(format!("{gw}/activity_manager?status=COMPLETE"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed.as_array().map(Vec::len), Some(3));
    env.cleanup().await
}

/// Reserves and starts a new micro-task for `w`; returns (task, execution).
async fn started_task(
    env: &Env,
    gw: &str,
    w: &reqwest::Client,
) -> anyhow::Result<(String, String)> {
    let t = id(&publish(env, gw, json!({})).await?);
    let (status, _) = post(w, format!("{gw}/micro_task/{t}/reserve")).await?;
    anyhow::ensure!(status == 200, "reserve: {status}");
    let (_, started) = post(w, format!("{gw}/micro_task/execution/{t}/start")).await?;
    Ok((
        t,
        started["execution_id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ))
}

async fn photo_ticket(
    w: &reqwest::Client,
    gw: &str,
    task: &str,
    body: Value,
) -> anyhow::Result<(u16, Value)> {
    let r = w
        .post(format!("{gw}/micro_task/execution/{task}/photo"))
        .json(&body)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
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
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let email = "gil@mysofie.com";
    let w = worker(&env, &gw, email).await?;
    let (t, execution) = started_task(&env, &gw, &w).await?;
    let photo: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let request = json!({"step": 1, "content_type": "image/jpeg", "size": photo.len()});

    // Limits: the content type, the size; only for a started task.
    let (status, e) = photo_ticket(
        &w,
        &gw,
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
        &gw,
        &t,
        json!({"step": 1, "content_type": "image/png", "size": 100001}),
    )
    .await?;
    assert_eq!(
        (status, e["error"]["details"]["field"].as_str()),
        (400, Some("size"))
    );
    let reserved = id(&publish(&env, &gw, json!({})).await?);
    post(&w, format!("{gw}/micro_task/{reserved}/reserve")).await?;
    let (status, e) = photo_ticket(&w, &gw, &reserved, request.clone()).await?;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (409, Some("not_executing"))
    );

    let (status, ticket) = photo_ticket(&w, &gw, &t, request.clone()).await?;
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
    let (status, _) = finish(&w, &gw, &t, email, &body).await?;
    assert_eq!(status, 202);
    let v = wait_status(&env, &gw, &t, "COMPLETE").await?;
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
    let (t2, _) = started_task(&env, &gw2, &w).await?;
    let (status, ticket) = photo_ticket(&w, &gw2, &t2, request).await?;
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
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let _reaper = env.start_reaper(&[])?;

    let email = "hana@mysofie.com";
    let r: Value = env
        .client()
        .post(format!("{gw}/{}/workers", env.customer))
        .json(&json!({"email": email, "phone": "+5511999990000"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let w = client_with(r["access_token"].as_str().unwrap_or_default());
    // The app registers its device token itself.
    let r = w
        .put(format!("{gw}/micro_task/me"))
        .json(&json!({"push_token": "device-123"}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let hook = sms_url.replace("/sms", "/hook");
    let t = id(&publish(&env, &gw, json!({ "callback": { "url": hook } })).await?);
    post(&w, format!("{gw}/micro_task/{t}/reserve")).await?;
    let (_, started) = post(&w, format!("{gw}/micro_task/execution/{t}/start")).await?;
    let execution = started["execution_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (status, _) = finish(&w, &gw, &t, email, &seed_finish(&t, &execution, email)).await?;
    assert_eq!(status, 202);
    // Processing does not wait for any sender.
    wait_status(&env, &gw, &t, "COMPLETE").await?;

    let v = eventually(
        Duration::from_secs(60),
        "e-mail and SMS sent, push dead",
        || async {
            let v = view(&env, &gw, &t).await?;
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
