//! `repo::human`: a micro-task reserved and started by its worker only,
//! reservations bounded and taken oldest first, a finish applied once, and
//! deadlines sending a task back to NEW — at the instant given, not before.

use deadpool_postgres::GenericClient;
use orq_e2e::TestDb;
use orq_e2e::api::seed_finish;
use orq_shared::domain::{CustomerId, HumanTaskId};
use orq_shared::human::{ActivityManager, ExecutionStatus, HumanKind, HumanStatus, OnTimeout};
use orq_shared::repo::customers;
use orq_shared::repo::human::{self, Applied, NewHumanTask, Refusal, Submission, Writes};
use serde_json::json;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

const ANA: &str = "ana@example.com";
const BRUNO: &str = "bruno@example.com";
/// Reservations held at once by one worker.
const MAX_HELD: i64 = 2;

async fn micro_task(c: &impl GenericClient, customer: CustomerId) -> anyhow::Result<HumanTaskId> {
    micro_task_with(c, customer, None, None).await
}

/// A micro-task (action PAT, a minute per execution, requeued on timeout)
/// whose activities and results must match the given schemas, if any.
pub(crate) async fn micro_task_with(
    c: &impl GenericClient,
    customer: CustomerId,
    activity_schema: Option<serde_json::Value>,
    result_schema: Option<serde_json::Value>,
) -> anyhow::Result<HumanTaskId> {
    let new = NewHumanTask {
        customer,
        kind: HumanKind::MicroTask,
        action: "PAT".into(),
        version: 1,
        input: json!({"produto": 47}),
        activity_schema,
        result_schema,
        activity_manager: ActivityManager::Commit,
        on_timeout: OnTimeout::Requeue,
        execution_ms: 60_000,
        expires_at: None,
        events: json!([]),
        timers: Vec::new(),
        callback_id: None,
    };
    Ok(human::create(c, &new).await?.id)
}

/// `worker` reserves `id` (or the oldest NEW task) for a minute.
async fn reserve(
    c: &impl GenericClient,
    customer: CustomerId,
    worker: &str,
    id: Option<HumanTaskId>,
) -> Result<human::HumanTask, Refusal> {
    human::reserve(c, customer, worker, id, None, 60_000, MAX_HELD).await
}

async fn status(
    c: &impl GenericClient,
    customer: CustomerId,
    id: HumanTaskId,
) -> anyhow::Result<HumanStatus> {
    Ok(human::get(c, customer, id).await?.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_micro_task_is_reserved_and_started_by_its_worker_only() -> anyhow::Result<()> {
    let db = TestDb::new("repohuman").await?;
    let acme = db.customer("acme").await?;
    let c = db.get().await?;
    let t = micro_task(&c, acme).await?;

    let held = reserve(&c, acme, ANA, Some(t)).await?;
    assert_eq!(
        (held.status, held.worker.as_deref()),
        (HumanStatus::Reserved, Some(ANA))
    );
    let again = reserve(&c, acme, ANA, Some(t)).await?;
    assert_eq!(
        again.deadline, held.deadline,
        "reserving it again changes nothing"
    );
    let taken = reserve(&c, acme, BRUNO, Some(t)).await;
    assert!(matches!(taken, Err(Refusal::HeldByOther)), "{taken:?}");
    let other = human::start(&c, acme, BRUNO, t).await;
    assert!(matches!(other, Err(Refusal::HeldByOther)), "{other:?}");

    let (task, execution) = human::start(&c, acme, ANA, t).await?;
    assert_eq!(task.status, HumanStatus::Executing);
    assert_eq!(task.execution_id, Some(execution.id));
    assert_eq!(
        (execution.status, execution.worker.as_str()),
        (ExecutionStatus::Executing, ANA)
    );
    let (_, same) = human::start(&c, acme, ANA, t).await?;
    assert_eq!(
        same.id, execution.id,
        "a second start is the same execution"
    );
    // Another customer does not see it at all.
    let other = db.customer("other").await?;
    let hidden = reserve(&c, other, ANA, Some(t)).await;
    assert!(matches!(hidden, Err(Refusal::NotFound)), "{hidden:?}");
    drop(c);
    db.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_are_taken_oldest_first_and_bounded_per_worker() -> anyhow::Result<()> {
    let db = TestDb::new("repohold").await?;
    let acme = db.customer("acme").await?;
    let c = db.get().await?;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(micro_task(&c, acme).await?);
    }
    let first = reserve(&c, acme, ANA, None).await?;
    let second = reserve(&c, acme, ANA, None).await?;
    assert_eq!([first.id, second.id], [tasks[0], tasks[1]]);
    let third = reserve(&c, acme, ANA, None).await;
    assert!(matches!(third, Err(Refusal::TooMany(2))), "{third:?}");
    // Another worker gets the next one; a released one is NEW again.
    assert_eq!(reserve(&c, acme, BRUNO, None).await?.id, tasks[2]);
    human::release(&c, acme, ANA, tasks[0]).await?;
    assert_eq!(status(&c, acme, tasks[0]).await?, HumanStatus::New);
    assert_eq!(reserve(&c, acme, ANA, None).await?.id, tasks[0]);
    drop(c);
    db.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_in_time_completes_the_task_once() -> anyhow::Result<()> {
    let db = TestDb::new("repofinish").await?;
    let acme = db.customer("acme").await?;
    let mut c = db.get().await?;
    let t = micro_task(&c, acme).await?;
    reserve(&c, acme, ANA, Some(t)).await?;
    let (_, execution) = human::start(&c, acme, ANA, t).await?;
    let tokens = orq_shared::human::WorkerTokens::from_config(&"ab".repeat(32))?;
    let (token_id, _) = customers::issue_worker_token(&c, acme, ANA, &tokens).await?;
    let body = seed_finish(&t.0.to_string(), &execution.id.0.to_string(), ANA);
    let finish = |worker: &str| Submission {
        id: Uuid::now_v7(),
        customer: acme,
        token_id,
        worker: worker.to_string(),
        task_id: t.0,
        received_at: OffsetDateTime::now_utc(),
        body: body.clone(),
    };

    // One batch: another worker's finish is refused, the owner's applied,
    // and the same finish again (a retrying app) is a duplicate.
    let tx = c.transaction().await?;
    let mut writes = Writes::default();
    let refused = human::apply_submission(&tx, &finish(BRUNO), &mut writes).await?;
    assert!(matches!(refused, Applied::Refused { .. }), "{refused:?}");
    let applied = human::apply_submission(&tx, &finish(ANA), &mut writes).await?;
    let Applied::Applied { task, execution } = applied else {
        panic!("not applied: {applied:?}");
    };
    assert_eq!(task.status, HumanStatus::Complete);
    let answers = execution.answers.unwrap_or_default();
    assert_eq!(answers[0]["response"], "Exemplo", "{answers}");
    let repeated = human::apply_submission(&tx, &finish(ANA), &mut writes).await?;
    assert!(matches!(repeated, Applied::Duplicate), "{repeated:?}");
    writes.flush(&tx).await?;
    tx.commit().await?;

    let outcomes: Vec<String> = human::submissions(&c, acme, t)
        .await?
        .into_iter()
        .map(|s| s.outcome)
        .collect();
    assert_eq!(outcomes, ["REJECTED", "APPLIED", "DUPLICATE"]);
    drop(c);
    db.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_reservation_and_execution_go_back_to_new_at_their_deadline() -> anyhow::Result<()>
{
    let db = TestDb::new("repoexpire").await?;
    let acme = db.customer("acme").await?;
    let c = db.get().await?;
    let (reserved, started) = (micro_task(&c, acme).await?, micro_task(&c, acme).await?);
    let held = reserve(&c, acme, ANA, Some(reserved)).await?;
    reserve(&c, acme, BRUNO, Some(started)).await?;
    let (running, execution) = human::start(&c, acme, BRUNO, started).await?;
    let (hold_ends, run_ends) = (
        held.deadline.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        running.deadline.unwrap_or(OffsetDateTime::UNIX_EPOCH),
    );
    assert!(hold_ends < run_ends, "a minute each, the reservation first");

    let early = human::expire_due(&c, hold_ends - Duration::milliseconds(1), 10).await?;
    assert!(early.is_empty(), "{early:?}");
    let first = human::expire_due(&c, hold_ends, 10).await?;
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].task, first[0].to), (reserved, HumanStatus::New));
    assert_eq!(status(&c, acme, started).await?, HumanStatus::Executing);

    let second = human::expire_due(&c, run_ends, 10).await?;
    assert_eq!(second.len(), 1);
    let back = human::get(&c, acme, started).await?;
    assert_eq!((back.status, back.worker), (HumanStatus::New, None));
    let executions = human::executions(&c, started).await?;
    assert_eq!(executions.len(), 1);
    assert_eq!(executions[0].id, execution.id);
    assert_eq!(executions[0].status, ExecutionStatus::Expired);
    // Done once: nothing is due any more.
    assert!(
        human::expire_due(&c, run_ends + Duration::hours(1), 10)
            .await?
            .is_empty()
    );
    drop(c);
    db.cleanup().await
}
