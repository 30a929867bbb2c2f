//! `repo::human::apply_submissions`: a batch of finishes applied with a
//! fixed number of statements gives each finish the outcome it would have
//! had alone, in its order — the same outcomes, reasons, records, events
//! and rows as one transaction per finish.

use deadpool_postgres::GenericClient;
use orq_e2e::TestDb;

use super::human::micro_task_with;
use orq_e2e::api::seed_finish;
use orq_shared::domain::{CustomerId, HumanTaskId, JobId};
use orq_shared::human::WorkerTokens;
use orq_shared::repo::human::{self, Applied, Submission, Writes};
use orq_shared::repo::{customers, jobs};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

const ANA: &str = "ana@example.com";
const BRUNO: &str = "bruno@example.com";
const CARLA: &str = "carla@example.com";

/// Reserves and starts `task` for `worker`; returns the execution's id.
async fn started(
    c: &impl GenericClient,
    customer: CustomerId,
    worker: &str,
    task: HumanTaskId,
) -> anyhow::Result<Uuid> {
    human::reserve(c, customer, worker, Some(task), None, 60_000, 10).await?;
    Ok(human::start(c, customer, worker, task).await?.1.id.0)
}

/// Every way a finish can go, in one list, on a fresh database: the
/// finishes in order, the tasks to compare, and a label for every id (so
/// two databases' reasons and events can be compared).
struct Scenario {
    acme: CustomerId,
    finishes: Vec<Submission>,
    tasks: Vec<HumanTaskId>,
    labels: BTreeMap<String, String>,
}

async fn scenario(db: &TestDb) -> anyhow::Result<Scenario> {
    let acme = db.customer("acme").await?;
    let other = db.customer("other").await?;
    let c = db.get().await?;
    let keys = WorkerTokens::from_config(&"ab".repeat(32))?;
    let mut tokens = BTreeMap::new();
    for worker in [ANA, BRUNO, CARLA] {
        tokens.insert(
            worker,
            customers::issue_worker_token(&c, acme, worker, &keys)
                .await?
                .0,
        );
    }
    let url_only = json!({
        "type": "object",
        "properties": {"execution": {"type": "array", "items": {
            "type": "object",
            "properties": {"response": {"type": "string", "pattern": "^https?://"}}
        }}}
    });
    let plain = micro_task_with(&c, acme, None, None).await?;
    let plain2 = micro_task_with(&c, acme, None, None).await?;
    let schema = micro_task_with(&c, acme, Some(url_only), None).await?;
    let result = micro_task_with(&c, acme, None, Some(json!({"required": ["missing"]}))).await?;
    let lapsed = micro_task_with(&c, acme, None, None).await?;
    let late = micro_task_with(&c, acme, None, None).await?;
    let revoked = micro_task_with(&c, acme, None, None).await?;
    let foreign = micro_task_with(&c, other, None, None).await?;
    let unknown = HumanTaskId(Uuid::now_v7());

    // The two that lapse first: their deadlines come before the others'.
    let before = OffsetDateTime::now_utc();
    let e_lapsed = started(&c, acme, ANA, lapsed).await?;
    let e_late = started(&c, acme, ANA, late).await?;
    let e_plain = started(&c, acme, ANA, plain).await?;
    let e_plain2 = started(&c, acme, ANA, plain2).await?;
    let e_schema = started(&c, acme, ANA, schema).await?;
    let e_result = started(&c, acme, ANA, result).await?;
    let e_revoked = started(&c, acme, CARLA, revoked).await?;
    let e_foreign = started(&c, other, ANA, foreign).await?;
    // Both lapsed executions run out (back to NEW): a finish received
    // before that still applies, one received after does not.
    let deadline = human::get(&c, acme, late).await?.deadline;
    let deadline = deadline.unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let expired = human::expire_due(&c, deadline, 100).await?;
    assert_eq!(expired.len(), 2, "{expired:?}");
    customers::revoke_worker(&c, acme, CARLA).await?;

    let mut labels = BTreeMap::new();
    for (label, id) in [
        ("plain", plain.0),
        ("plain2", plain2.0),
        ("schema", schema.0),
        ("result", result.0),
        ("lapsed", lapsed.0),
        ("late", late.0),
        ("revoked", revoked.0),
        ("foreign", foreign.0),
        ("unknown", unknown.0),
        ("e_plain", e_plain),
        ("e_plain2", e_plain2),
        ("e_schema", e_schema),
        ("e_result", e_result),
        ("e_lapsed", e_lapsed),
        ("e_late", e_late),
        ("e_revoked", e_revoked),
        ("e_foreign", e_foreign),
    ] {
        labels.insert(id.to_string(), label.to_string());
    }

    let finish = |i: i64, worker: &str, task: HumanTaskId, body: Value| Submission {
        id: Uuid::now_v7(),
        customer: acme,
        token_id: tokens[worker],
        worker: worker.to_string(),
        task_id: task.0,
        received_at: before + Duration::milliseconds(i),
        body,
    };
    let body = |task: HumanTaskId, execution: Uuid, worker: &str| {
        seed_finish(&task.0.to_string(), &execution.to_string(), worker)
    };
    let mut other_answer = body(plain, e_plain, ANA);
    other_answer["execution"][0]["response"] = json!("Outra");
    let mut corrected = body(schema, e_schema, ANA);
    corrected["execution"][0]["response"] = json!("https://photos.example/1.jpg");
    let applied = finish(2, ANA, plain, body(plain, e_plain, ANA));
    let redelivered = applied.clone();
    let mut after_deadline = finish(13, ANA, late, body(late, e_late, ANA));
    after_deadline.received_at = deadline + Duration::seconds(1);
    let finishes = vec![
        finish(1, BRUNO, plain, body(plain, e_plain, BRUNO)),
        applied,
        finish(3, ANA, plain, body(plain, e_plain, ANA)),
        redelivered,
        finish(5, ANA, plain, other_answer),
        finish(6, ANA, schema, body(schema, e_schema, ANA)),
        finish(7, ANA, schema, corrected),
        finish(8, ANA, result, body(result, e_result, ANA)),
        finish(9, ANA, lapsed, body(lapsed, e_lapsed, ANA)),
        finish(10, CARLA, revoked, body(revoked, e_revoked, CARLA)),
        finish(11, ANA, foreign, body(foreign, e_foreign, ANA)),
        finish(12, ANA, unknown, body(unknown, e_plain, ANA)),
        after_deadline,
        finish(14, ANA, plain2, body(plain2, e_plain, ANA)),
        finish(15, ANA, plain2, json!({"task_id": plain2.0.to_string()})),
        finish(16, ANA, plain2, body(plain2, e_plain2, ANA)),
    ];
    Ok(Scenario {
        acme,
        finishes,
        tasks: vec![plain, plain2, schema, result, lapsed, late, revoked],
        labels,
    })
}

impl Scenario {
    fn label(&self, text: &str) -> String {
        self.labels
            .iter()
            .fold(text.to_string(), |t, (id, label)| t.replace(id, label))
    }

    fn outcome(&self, outcome: &Applied) -> String {
        match outcome {
            Applied::Applied { task, execution } => format!(
                "APPLIED {} {} task {} execution {}",
                self.label(&task.id.0.to_string()),
                task.error.as_deref().unwrap_or("-"),
                task.status,
                execution.status
            ),
            Applied::Refused { reason, task } => format!(
                "REJECTED {} on {}",
                self.label(reason),
                task.as_ref().map_or("-".into(), |t| format!(
                    "{} {}",
                    self.label(&t.id.0.to_string()),
                    t.status
                ))
            ),
            Applied::Duplicate => "DUPLICATE".into(),
        }
    }

    /// What the database holds after: each task's status, error, worker
    /// and executions; its submissions; its events.
    async fn stored(&self, c: &impl GenericClient) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for &t in &self.tasks {
            let task = human::get(c, self.acme, t).await?;
            out.push(format!(
                "{}: {} {:?} {:?} result {}",
                self.label(&t.0.to_string()),
                task.status,
                task.error.as_deref().map(|e| self.label(e)),
                task.worker,
                task.result.is_some()
            ));
            for e in human::executions(c, t).await? {
                out.push(format!(
                    "  execution {} {} answers {:?} reason {:?}",
                    self.label(&e.id.0.to_string()),
                    e.status,
                    e.answers.map(|a| a[0]["response"].clone()),
                    e.reason
                ));
            }
            for s in human::submissions(c, self.acme, t).await? {
                out.push(format!(
                    "  submission {} {:?} {:?}",
                    s.outcome,
                    s.reason.as_deref().map(|r| self.label(r)),
                    s.execution_id.as_deref().map(|e| self.label(e))
                ));
            }
            for e in jobs::events(c, self.acme, JobId::from(t)).await? {
                out.push(format!(
                    "  event {} {} {:?} -> {:?}",
                    e.kind,
                    self.label(&e.description),
                    e.from_status,
                    e.to_status
                ));
            }
        }
        Ok(out)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_gives_each_finish_the_outcome_it_has_alone_in_order() -> anyhow::Result<()> {
    // One batch, one call.
    let batched = TestDb::new("repobatch").await?;
    let b = scenario(&batched).await?;
    let mut c = batched.get().await?;
    let tx = c.transaction().await?;
    let mut writes = Writes::default();
    let outcomes = human::apply_submissions(&tx, &b.finishes, &mut writes).await?;
    writes.flush(&tx).await?;
    tx.commit().await?;
    let batch_outcomes: Vec<String> = outcomes.iter().map(|o| b.outcome(o)).collect();
    let batch_stored = b.stored(&c).await?;
    drop(c);

    // The same finishes, one transaction each.
    let single = TestDb::new("reposingle").await?;
    let s = scenario(&single).await?;
    let mut c = single.get().await?;
    let mut single_outcomes = Vec::new();
    for finish in &s.finishes {
        let tx = c.transaction().await?;
        let mut writes = Writes::default();
        let outcome = human::apply_submission(&tx, finish, &mut writes).await?;
        writes.flush(&tx).await?;
        tx.commit().await?;
        single_outcomes.push(s.outcome(&outcome));
    }
    let single_stored = s.stored(&c).await?;
    drop(c);

    let expected = [
        "REJECTED execution e_plain belongs to another worker on plain EXECUTING",
        "APPLIED plain - task COMPLETE execution COMPLETE",
        "DUPLICATE",
        "DUPLICATE",
        "REJECTED execution e_plain is COMPLETE already on plain COMPLETE",
        "REJECTED activity_schema: ",
        "APPLIED schema - task COMPLETE execution COMPLETE",
        "APPLIED result result_schema: ",
        "APPLIED lapsed - task COMPLETE execution COMPLETE",
        "REJECTED the worker's token has been revoked on revoked EXECUTING",
        "REJECTED no micro-task foreign on -",
        "REJECTED no micro-task unknown on -",
        "REJECTED execution e_late expired at its deadline on late NEW",
        "REJECTED execution \"e_plain\" is not an execution of this task on plain2 EXECUTING",
        "REJECTED ",
        "APPLIED plain2 - task COMPLETE execution COMPLETE",
    ];
    assert_eq!(batch_outcomes.len(), expected.len());
    for (got, want) in batch_outcomes.iter().zip(expected) {
        assert!(got.starts_with(want), "{got:?} is not {want:?}…");
    }
    assert!(
        batch_outcomes[7].ends_with("task ERROR execution ERROR"),
        "{}",
        batch_outcomes[7]
    );
    assert!(
        batch_outcomes[14].ends_with("on plain2 EXECUTING"),
        "{}",
        batch_outcomes[14]
    );
    assert_eq!(batch_outcomes, single_outcomes);
    assert_eq!(batch_stored, single_stored);
    // Recorded once each but for the redelivered message.
    let recorded: usize = batch_stored
        .iter()
        .filter(|l| l.starts_with("  submission"))
        .count();
    assert_eq!(recorded, b.finishes.len() - 1 - 2, "{batch_stored:#?}");

    batched.cleanup().await?;
    single.cleanup().await
}
