//! What the dashboard reads beside the lists: `GET /{customer}/overview`
//! (admins only) over work set up in the database — every count, the
//! minutes of the last hour, the backlog's oldest job, the bots, the
//! failures, the longest-running jobs, none of another customer's — and the
//! bots' names beside their ids on CSV tasks and jobs, with `?bot_id=`.

use orq_e2e::api::id;
use orq_e2e::client_with;
use orq_shared::domain::Role;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::helpers::{answer, spawn_app};

/// A job row as the overview reads it; ages in seconds before now.
struct Job<'a> {
    status: &'a str,
    name: &'a str,
    bot: Option<Uuid>,
    created_ago: f64,
    started_ago: Option<f64>,
    finished_ago: Option<f64>,
    /// A run in its trigger's grace time: it may start this many seconds
    /// from now.
    on_hold_for: Option<f64>,
    /// Why no bot could take it.
    waiting_reason: Option<&'a str>,
}

impl<'a> Job<'a> {
    fn new(status: &'a str, name: &'a str) -> Self {
        Job {
            status,
            name,
            bot: None,
            created_ago: 0.0,
            started_ago: None,
            finished_ago: None,
            on_hold_for: None,
            waiting_reason: None,
        }
    }
}

async fn insert_job(
    db: &tokio_postgres::Client,
    customer: Uuid,
    j: &Job<'_>,
) -> anyhow::Result<Uuid> {
    let row = db
        .query_one(
            "INSERT INTO jobs (id, customer_id, kind, description, system, attachment, status, bot_id,
                               created_at, started_at, finished_at, not_before, waiting_reason)
             VALUES (gen_random_uuid(), $1, 'system', $2, 'S', '', $3, $4,
                     now() - make_interval(secs => $5),
                     now() - make_interval(secs => $6),
                     now() - make_interval(secs => $7),
                     now() + make_interval(secs => $8), $9)
             RETURNING id",
            &[
                &customer,
                &j.name,
                &j.status,
                &j.bot,
                &j.created_ago,
                &j.started_ago,
                &j.finished_ago,
                &j.on_hold_for,
                &j.waiting_reason,
            ],
        )
        .await?;
    Ok(row.get(0))
}

async fn insert_bot(
    db: &tokio_postgres::Client,
    customer: Uuid,
    name: &str,
    status: &str,
    capacity: i32,
    active: i32,
    draining: bool,
) -> anyhow::Result<Uuid> {
    let row = db
        .query_one(
            "INSERT INTO bots (id, customer_id, name, ip_address, status, delivery, capacity,
                               active_jobs, draining)
             VALUES (gen_random_uuid(), $1, $2, '127.0.0.1', $3, 'agent', $4, $5, $6)
             RETURNING id",
            &[&customer, &name, &status, &capacity, &active, &draining],
        )
        .await?;
    Ok(row.get(0))
}

/// Webhook deliveries and notifications in these `(status, attempts)`.
async fn insert_outbound(
    db: &tokio_postgres::Client,
    customer: Uuid,
    deliveries: &[(&str, i32)],
    notifications: &[(&str, i32)],
) -> anyhow::Result<()> {
    let endpoint: Uuid = db
        .query_one(
            "INSERT INTO webhook_endpoints (id, customer_id, kind, url)
             VALUES (gen_random_uuid(), $1, 'subscription', 'http://example.com/hook') RETURNING id",
            &[&customer],
        )
        .await?
        .get(0);
    for (status, attempts) in deliveries {
        db.execute(
            "INSERT INTO webhook_deliveries (id, customer_id, endpoint_id, job_id, body, status, attempts)
             VALUES (gen_random_uuid(), $1, $2, gen_random_uuid(), '[]', $3, $4)",
            &[&customer, &endpoint, status, attempts],
        )
        .await?;
    }
    for (status, attempts) in notifications {
        db.execute(
            "INSERT INTO notifications (id, customer_id, channel, recipient, subject, body, status, attempts)
             VALUES (gen_random_uuid(), $1, 'email', 'w@example.com', 's', 'b', $2, $3)",
            &[&customer, status, attempts],
        )
        .await?;
    }
    Ok(())
}

fn time(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap_or_default(), &Rfc3339).expect("an RFC 3339 time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_counts_the_customers_work_and_nothing_else() -> anyhow::Result<()> {
    let app = spawn_app("overview").await?;
    let db = app.db().await?;
    let customer: Uuid = db
        .query_one("SELECT id FROM customers WHERE name = $1", &[&app.customer])
        .await?
        .get(0);
    let alpha = insert_bot(&db, customer, "alpha", "AVAILABLE", 4, 1, false).await?;
    let beta = insert_bot(&db, customer, "beta", "BUSY", 1, 1, false).await?;
    insert_bot(&db, customer, "gamma", "UNAVAILABLE", 2, 0, false).await?;
    insert_bot(&db, customer, "delta", "AVAILABLE", 2, 0, true).await?;

    let mut jobs = vec![
        // Waiting: three that may run (the oldest 10 minutes old; one no
        // bot can take), one in its grace time (older, but not yet
        // runnable).
        Job {
            created_ago: 600.0,
            ..Job::new("WAITING", "oldest")
        },
        Job {
            created_ago: 120.0,
            waiting_reason: Some("no bot runs system S"),
            ..Job::new("WAITING", "w2")
        },
        Job::new("WAITING", "w3"),
        Job {
            created_ago: 3600.0,
            on_hold_for: Some(3600.0),
            ..Job::new("WAITING", "held")
        },
        Job {
            bot: Some(alpha),
            ..Job::new("ASSIGNED", "a")
        },
        Job {
            bot: Some(beta),
            started_ago: Some(1800.0),
            created_ago: 1900.0,
            ..Job::new("RUNNING", "slow")
        },
        Job {
            bot: Some(alpha),
            started_ago: Some(300.0),
            created_ago: 400.0,
            ..Job::new("RUNNING", "middle")
        },
        Job {
            bot: Some(alpha),
            started_ago: Some(60.0),
            created_ago: 70.0,
            ..Job::new("RUNNING", "fast")
        },
    ];
    // Finished within the hour: 6 COMPLETE, 2 failed (FAILED, TIMEOUT), 1
    // CANCELED (no failure); and 5 COMPLETE two hours ago (counted by
    // status, not in the hour).
    for ago in [300.0, 300.0, 301.0, 302.0, 60.0, 61.0] {
        jobs.push(Job {
            finished_ago: Some(ago),
            ..Job::new("COMPLETE", "done")
        });
    }
    jobs.push(Job {
        finished_ago: Some(305.0),
        ..Job::new("FAILED", "broke")
    });
    jobs.push(Job {
        finished_ago: Some(180.0),
        ..Job::new("TIMEOUT", "late")
    });
    jobs.push(Job {
        finished_ago: Some(120.0),
        ..Job::new("CANCELED", "stopped")
    });
    for _ in 0..5 {
        jobs.push(Job {
            finished_ago: Some(7200.0),
            ..Job::new("COMPLETE", "old")
        });
    }
    for j in &jobs {
        insert_job(&db, customer, j).await?;
    }
    insert_outbound(
        &db,
        customer,
        &[
            ("DEAD", 8),
            ("DEAD", 8),
            ("PENDING", 2),
            ("PENDING", 0),
            ("DELIVERED", 1),
            ("DELIVERED", 3),
        ],
        &[("DEAD", 5), ("PENDING", 1), ("PENDING", 0), ("SENT", 1)],
    )
    .await?;

    // Another customer's work, of every kind counted: none of it shows.
    let (other_name, other_token) = app.other_customer("-other").await?;
    let other: Uuid = db
        .query_one("SELECT id FROM customers WHERE name = $1", &[&other_name])
        .await?
        .get(0);
    let stranger = insert_bot(&db, other, "stranger", "UNAVAILABLE", 9, 0, true).await?;
    for j in [
        Job {
            created_ago: 86_400.0,
            waiting_reason: Some("no bot"),
            ..Job::new("WAITING", "theirs")
        },
        Job {
            bot: Some(stranger),
            started_ago: Some(86_400.0),
            ..Job::new("RUNNING", "theirs")
        },
        Job {
            finished_ago: Some(10.0),
            ..Job::new("FAILED", "theirs")
        },
        Job {
            finished_ago: Some(10.0),
            ..Job::new("COMPLETE", "theirs")
        },
    ] {
        insert_job(&db, other, &j).await?;
    }
    insert_outbound(&db, other, &[("DEAD", 8), ("PENDING", 3)], &[("DEAD", 5)]).await?;

    let r = app
        .admin()
        .get(app.at(&format!("/{}/overview", app.customer)))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let o: Value = r.json().await?;
    let at = time(&o["at"]);

    let by_status: Vec<(String, i64)> = o["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|s| {
            (
                s["status"].as_str().unwrap_or_default().to_string(),
                s["count"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let expected: Vec<(String, i64)> = [
        ("WAITING", 4),
        ("ASSIGNED", 1),
        ("RUNNING", 3),
        ("COMPLETE", 11),
        ("FAILED", 1),
        ("TIMEOUT", 1),
        ("CANCELED", 1),
    ]
    .iter()
    .map(|(s, n)| (s.to_string(), *n))
    .collect();
    assert_eq!(by_status, expected, "{o}");

    // The series: 60 minutes, oldest first, ending with the current one;
    // each finished job in the minute its finished_at falls in.
    let minutes = o["per_minute"].as_array().expect("per_minute");
    assert_eq!(minutes.len(), 60);
    let starts: Vec<i64> = minutes
        .iter()
        .map(|m| time(&m["at"]).unix_timestamp())
        .collect();
    assert_eq!(starts[59], at.unix_timestamp().div_euclid(60) * 60);
    assert!(starts.windows(2).all(|w| w[1] - w[0] == 60), "{starts:?}");
    let mut want: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for r in db
        .query(
            "SELECT floor(extract(epoch FROM finished_at) / 60)::int8 * 60, status FROM jobs
              WHERE customer_id = $1 AND finished_at >= now() - interval '59 minutes'
                AND status <> 'CANCELED'",
            &[&customer],
        )
        .await?
    {
        let entry = want.entry(r.get(0)).or_default();
        if r.get::<_, &str>(1) == "COMPLETE" {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }
    let got: BTreeMap<i64, (i64, i64)> = minutes
        .iter()
        .filter(|m| m["complete"].as_i64() != Some(0) || m["failed"].as_i64() != Some(0))
        .map(|m| {
            (
                time(&m["at"]).unix_timestamp(),
                (
                    m["complete"].as_i64().unwrap_or(-1),
                    m["failed"].as_i64().unwrap_or(-1),
                ),
            )
        })
        .collect();
    assert_eq!(got, want, "{o}");
    let total = |key: &str| {
        minutes
            .iter()
            .map(|m| m[key].as_i64().unwrap_or(0))
            .sum::<i64>()
    };
    assert_eq!((total("complete"), total("failed")), (6, 2));

    let backlog = &o["backlog"];
    assert_eq!(
        (
            backlog["waiting"].as_i64(),
            backlog["on_hold"].as_i64(),
            backlog["stranded"].as_i64()
        ),
        (Some(3), Some(1), Some(1))
    );
    let oldest: OffsetDateTime = db
        .query_one(
            "SELECT created_at FROM jobs WHERE customer_id = $1 AND description = 'oldest'",
            &[&customer],
        )
        .await?
        .get(0);
    let shown = time(&backlog["oldest_created_at"]);
    assert_eq!(
        shown.unix_timestamp_nanos() / 1000,
        oldest.unix_timestamp_nanos() / 1000
    );
    let age = backlog["oldest_age_secs"].as_f64().expect("an age");
    assert!(
        ((at - shown).as_seconds_f64() - age).abs() < 0.01,
        "{backlog}"
    );
    assert!(age >= 600.0, "{backlog}");

    assert_eq!(
        o["bots"],
        json!({"total": 4, "up": 3, "busy": 1, "lost": 1, "draining": 1, "slots_used": 2, "slots_total": 7})
    );
    assert_eq!(o["webhooks"], json!({"dead": 2, "retrying": 1}));
    assert_eq!(o["notifications"], json!({"dead": 1, "retrying": 1}));

    let running: Vec<(&str, &str)> = o["longest_running"]
        .as_array()
        .expect("longest_running")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default(),
                r["bot_name"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        running,
        [("slow", "beta"), ("middle", "alpha"), ("fast", "alpha")]
    );
    let slow = &o["longest_running"][0];
    assert_eq!(slow["bot_id"], json!(beta.to_string()));
    assert_eq!(slow["kind"], "system");
    let secs = slow["running_secs"].as_f64().expect("running_secs");
    assert!(((at - time(&slow["started_at"])).as_seconds_f64() - secs).abs() < 0.01);

    // The other customer's overview is theirs: its own counts.
    let theirs: Value = client_with(&other_token)
        .get(app.at(&format!("/{other_name}/overview")))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(theirs["bots"]["lost"], 1);
    assert_eq!(theirs["webhooks"], json!({"dead": 1, "retrying": 1}));
    assert_eq!(theirs["longest_running"][0]["bot_name"], "stranger");
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_is_an_admins_of_its_own_customer() -> anyhow::Result<()> {
    let app = spawn_app("overviewroles").await?;
    let path = app.at(&format!("/{}/overview", app.customer));
    let (_, other) = app.other_customer("-o").await?;
    for (who, want, code) in [
        (reqwest::Client::new(), 401, "unauthorized"),
        (client_with(&app.token(Role::Bot).await?), 403, "forbidden"),
        (
            client_with(&app.token(Role::Viewer).await?),
            403,
            "forbidden",
        ),
        (client_with(&app.token(Role::User).await?), 403, "forbidden"),
        (client_with(&other), 403, "wrong_customer"),
    ] {
        let (status, got, _) = answer(who.get(&path)).await?;
        assert_eq!((status, got.as_str()), (want, code));
    }
    // An empty customer: every status at 0, 60 empty minutes, nothing
    // waiting, no bots, no failures.
    let o: Value = app.admin().get(&path).send().await?.json().await?;
    assert!(
        o["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .all(|s| s["count"] == 0)
    );
    assert_eq!(o["jobs"].as_array().map(Vec::len), Some(7));
    assert_eq!(o["per_minute"].as_array().map(Vec::len), Some(60));
    assert_eq!(
        o["backlog"],
        json!({"waiting": 0, "on_hold": 0, "stranded": 0, "oldest_created_at": null, "oldest_age_secs": null})
    );
    assert_eq!(o["bots"]["total"], 0);
    assert_eq!(o["longest_running"], json!([]));
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_tasks_and_jobs_name_their_bot_and_list_by_it() -> anyhow::Result<()> {
    let app = spawn_app("botnames").await?;
    let admin = app.admin();
    let s = app.api();
    let bot = |name: &str| json!({"name": name, "ip_address": "10.0.0.7", "systems": ["Vivo360"], "delivery": "agent"});
    let one = app.create("/bots", &bot("lisbon")).await?;
    let two = app.create("/bots", &bot("porto")).await?;
    let attachment = orq_shared::attachment::encode("id\n1\n");
    let task = app
        .create(
            "/tasks",
            &json!({"description": "on lisbon", "system": "Vivo360", "attachment": attachment}),
        )
        .await?;
    let unplaced = app
        .create(
            "/tasks",
            &json!({"description": "nowhere yet", "system": "Vivo360", "attachment": attachment}),
        )
        .await?;
    let script = s.script("noop", "exit 0").await?;
    let def = id(&s.task(json!({"name": "runs", "script_id": script})).await?);
    let job = id(&s.run(&def, json!([])).await?);
    let waiting_job = id(&s.run(&def, json!([])).await?);
    let db = app.db().await?;
    db.execute(
        "UPDATE jobs SET bot_id = $1::text::uuid, status = 'RUNNING', attempt = 1 WHERE id = $2::text::uuid",
        &[&one, &task],
    )
    .await?;
    db.execute(
        "UPDATE jobs SET bot_id = $1::text::uuid, status = 'RUNNING', attempt = 1 WHERE id = $2::text::uuid",
        &[&two, &job],
    )
    .await?;

    let read = |path: String| {
        let admin = admin.clone();
        async move {
            admin
                .get(path)
                .send()
                .await?
                .error_for_status()?
                .json::<Value>()
                .await
        }
    };
    let t = read(app.at(&format!("/tasks/{task}"))).await?;
    assert_eq!(
        (t["bot_id"].as_str(), t["bot_name"].as_str()),
        (Some(one.as_str()), Some("lisbon"))
    );
    let listed = read(app.at("/tasks")).await?;
    let names: BTreeMap<String, Value> = listed
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| (id(t), t["bot_name"].clone()))
        .collect();
    assert_eq!(names[&task], "lisbon");
    assert_eq!(names[&unplaced], Value::Null);
    let j = read(s.url(&format!("/job/{job}"))).await?;
    assert_eq!(
        (j["bot_id"].as_str(), j["bot_name"].as_str()),
        (Some(two.as_str()), Some("porto"))
    );

    // A bot's jobs: runs of definitions and CSV tasks, each by its bot.
    let on_two = read(s.url(&format!("/job?bot_id={two}"))).await?;
    let ids: Vec<String> = on_two.as_array().expect("jobs").iter().map(id).collect();
    assert_eq!(ids, std::slice::from_ref(&job));
    let on_one = read(app.at(&format!("/tasks?bot_id={one}"))).await?;
    let ids: Vec<String> = on_one.as_array().expect("tasks").iter().map(id).collect();
    assert_eq!(ids, std::slice::from_ref(&task));
    let all = read(s.url("/job")).await?;
    assert!(
        all.as_array()
            .expect("jobs")
            .iter()
            .any(|j| id(j) == waiting_job && j["bot_name"].is_null())
    );

    // A renamed bot is named anew; a bad id is a 400 naming the field.
    admin
        .put(app.at(&format!("/bots/{two}")))
        .json(&json!({"name": "braga"}))
        .send()
        .await?
        .error_for_status()?;
    let j = read(s.url(&format!("/job/{job}"))).await?;
    assert_eq!(j["bot_name"], "braga");
    let (status, code, field) = answer(admin.get(s.url("/job?bot_id=nope"))).await?;
    assert_eq!(
        (status, code.as_str(), field.as_str()),
        (400, "invalid_field", "bot_id")
    );
    app.stop().await
}
