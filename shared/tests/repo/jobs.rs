//! `repo::jobs`: a job created, matched to a bot and moved to COMPLETE
//! through the one transition path; its history; the live feed.

use deadpool_postgres::GenericClient;
use orq_e2e::TestDb;
use orq_shared::domain::{BotId, BotStatus, CustomerId, Delivery, JobEvent, JobId, JobStatus};
use orq_shared::repo::jobs::{self, Actor, Applied, NewTask, Outcome};
use orq_shared::repo::task_defs::Reader;
use orq_shared::repo::{RepoError, bots};
use uuid::Uuid;

async fn bot(c: &impl GenericClient, customer: CustomerId, capacity: i32) -> anyhow::Result<BotId> {
    let spec = bots::BotSpec {
        name: "agent-1".into(),
        ip_address: "127.0.0.1".into(),
        port: 5000,
        status: BotStatus::Available,
        delivery: Delivery::Agent,
        capacity,
        systems: vec!["S".into()],
        tags: Vec::new(),
    };
    Ok(bots::insert(c, customer, &spec).await?.id)
}

async fn job(c: &impl GenericClient, customer: CustomerId, system: &str) -> anyhow::Result<JobId> {
    let new = NewTask {
        description: format!("a {system} job"),
        system: system.into(),
        attachment: orq_shared::attachment::encode("a\n1\n"),
        rows_total: 1,
        callback_id: None,
    };
    Ok(jobs::create(c, customer, &new).await?.id)
}

/// The bot's report `event` on `attempt`, applied as a transition.
async fn report(
    c: &impl GenericClient,
    customer: CustomerId,
    id: JobId,
    bot: BotId,
    attempt: i32,
    event: JobEvent,
) -> Result<Applied, RepoError> {
    let actor = Actor::Bot { bot, attempt };
    let at = time::OffsetDateTime::now_utc();
    jobs::transition(
        c,
        customer,
        id,
        actor,
        event,
        &Outcome::default(),
        Uuid::now_v7(),
        at,
    )
    .await
}

async fn load(c: &impl GenericClient, customer: CustomerId, bot: BotId) -> anyhow::Result<i32> {
    Ok(bots::get(c, customer, bot).await?.active_jobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_matched_to_a_free_bot_and_runs_to_complete_on_its_attempt() -> anyhow::Result<()>
{
    let db = TestDb::new("repojobs").await?;
    let acme = db.customer("acme").await?;
    let mut c = db.get().await?;
    let bot = bot(&c, acme, 2).await?;
    let older = job(&c, acme, "S").await?;
    let other_system = job(&c, acme, "T").await?;
    let newer = job(&c, acme, "S").await?;
    let third = job(&c, acme, "S").await?;

    // Two free slots: the two oldest jobs of a system the bot runs.
    let tx = c.transaction().await?;
    let assigned = jobs::match_waiting(&tx, acme, 10).await?;
    tx.commit().await?;
    let ids: Vec<JobId> = assigned.iter().map(|a| a.job_id).collect();
    assert_eq!(ids, [older, newer]);
    assert!(assigned.iter().all(|a| a.bot_id == bot && a.attempt == 1));
    assert_eq!(load(&c, acme, bot).await?, 2);
    // Full: nothing more is matched, the others wait.
    let tx = c.transaction().await?;
    assert!(jobs::match_waiting(&tx, acme, 10).await?.is_empty());
    tx.commit().await?;
    for waiting in [other_system, third] {
        let task = jobs::get(&c, acme, waiting).await?;
        assert_eq!(task.status, JobStatus::Waiting);
    }

    // The bot's reports move it; one of another attempt is stale.
    let started = report(&c, acme, older, bot, 1, JobEvent::Start).await?;
    assert!(
        matches!(started, Applied::Done { from: JobStatus::Assigned, ref task }
                     if task.status == JobStatus::Running)
    );
    let stale = report(&c, acme, older, bot, 2, JobEvent::Complete).await?;
    assert!(
        matches!(
            stale,
            Applied::Stale {
                current_attempt: 1,
                ..
            }
        ),
        "{stale:?}"
    );
    let done = report(&c, acme, older, bot, 1, JobEvent::Complete).await?;
    assert!(matches!(done, Applied::Done { ref task, .. } if task.status == JobStatus::Complete));
    assert_eq!(load(&c, acme, bot).await?, 1, "its slot is free again");
    // A COMPLETE job takes no further event.
    let again = report(&c, acme, older, bot, 1, JobEvent::Start).await;
    assert!(matches!(again, Err(RepoError::Conflict(_))), "{again:?}");
    drop(c);
    db.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_history_is_in_the_order_it_happened_and_a_redelivery_adds_nothing()
-> anyhow::Result<()> {
    let db = TestDb::new("repoevents").await?;
    let acme = db.customer("acme").await?;
    let c = db.get().await?;
    let bot = bot(&c, acme, 1).await?;
    let id = job(&c, acme, "S").await?;
    jobs::match_waiting(&c, acme, 10).await?;
    report(&c, acme, id, bot, 1, JobEvent::Start).await?;
    report(&c, acme, id, bot, 1, JobEvent::Fail).await?;

    let events = jobs::events(&c, acme, id).await?;
    let moves: Vec<(Option<&str>, Option<&str>)> = events
        .iter()
        .map(|e| (e.from_status.as_deref(), e.to_status.as_deref()))
        .collect();
    assert_eq!(
        moves,
        [
            (None, Some("WAITING")),
            (Some("WAITING"), Some("ASSIGNED")),
            (Some("ASSIGNED"), Some("RUNNING")),
            (Some("RUNNING"), Some("FAILED")),
        ]
    );
    assert!(events.iter().skip(1).all(|e| e.bot_id == Some(bot)));

    // An event appended twice under its id (a redelivered report) is kept once.
    let warning = jobs::EventRecord {
        id: Uuid::now_v7(),
        job_id: id,
        customer: acme,
        kind: jobs::EventKind::Warning,
        description: "said twice".into(),
        from: None,
        to: None,
        bot: Some(bot),
        attempt: Some(1),
    };
    jobs::append_events(&c, &[warning.clone(), warning.clone()]).await?;
    jobs::append_events(&c, &[warning]).await?;
    let events = jobs::events(&c, acme, id).await?;
    assert_eq!(events.len(), 5);
    assert_eq!(events[4].kind, "WARNING");
    // Another customer reads none of it.
    let other = db.customer("other").await?;
    assert!(jobs::events(&c, other, id).await?.is_empty());
    drop(c);
    db.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_resumes_after_a_place_and_shows_a_customer_only_its_own() -> anyhow::Result<()> {
    let db = TestDb::new("repofeed").await?;
    let (acme, other) = (db.customer("acme").await?, db.customer("other").await?);
    let mut c = db.get().await?;
    let first = job(&c, acme, "S").await?;
    job(&c, other, "S").await?;
    let second = job(&c, acme, "S").await?;
    // Nothing is in the feed before it is released.
    assert!(
        jobs::events_after(&c, acme, 0, None, Reader::Admin, 100)
            .await?
            .is_empty()
    );
    // Released once every older transaction of the cluster ended (other
    // tests' among them): three events in all, maybe over several calls.
    let mut released = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while released < 3 && std::time::Instant::now() < deadline {
        let tx = c.transaction().await?;
        released += jobs::release_feed(&tx, 1000).await?.unwrap_or(0);
        tx.commit().await?;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(released, 3);

    let all = jobs::events_after(&c, acme, 0, None, Reader::Admin, 100).await?;
    let of: Vec<JobId> = all.iter().map(|e| e.event.job_id).collect();
    assert_eq!(of, [first, second], "its own, oldest first");
    assert!(all[0].pos < all[1].pos);
    assert_eq!(jobs::last_feed_pos(&c, acme).await?, all[1].pos);

    let rest = jobs::events_after(&c, acme, all[0].pos, None, Reader::Admin, 100).await?;
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].event.job_id, second);
    let one = jobs::events_after(&c, acme, 0, Some(first), Reader::Admin, 100).await?;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].event.job_id, first);
    let limited = jobs::events_after(&c, acme, 0, None, Reader::Admin, 1).await?;
    assert_eq!(limited.len(), 1);
    drop(c);
    db.cleanup().await
}

/// A bot of two systems takes their jobs oldest first across both, past a
/// backlog of a third system that is older still and that no bot runs (each
/// free system is read from its own index; the backlog is never in the way),
/// a page at a time when the slots outnumber a page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_takes_the_free_systems_oldest_first_past_another_systems_backlog()
-> anyhow::Result<()> {
    let db = TestDb::new("repobacklog").await?;
    let acme = db.customer("acme").await?;
    let mut c = db.get().await?;
    let spec = bots::BotSpec {
        name: "two-systems".into(),
        ip_address: "127.0.0.1".into(),
        port: 5000,
        status: BotStatus::Available,
        delivery: Delivery::Agent,
        capacity: 5,
        systems: vec!["S".into(), "U".into()],
        tags: Vec::new(),
    };
    let bot = bots::insert(&c, acme, &spec).await?.id;
    for _ in 0..50 {
        job(&c, acme, "Backlog").await?;
    }
    let mut wanted = Vec::new();
    for i in 0..4 {
        wanted.push(job(&c, acme, if i % 2 == 0 { "S" } else { "U" }).await?);
        job(&c, acme, "Backlog").await?;
    }
    wanted.push(job(&c, acme, "U").await?);
    let sixth = job(&c, acme, "S").await?;

    // A limit of 2 makes pages of 5 (the slots): the five oldest of S and U.
    let tx = c.transaction().await?;
    let assigned = jobs::match_waiting(&tx, acme, 2).await?;
    tx.commit().await?;
    let ids: Vec<JobId> = assigned.iter().map(|a| a.job_id).collect();
    assert_eq!(ids, wanted, "oldest first across both systems");
    assert!(assigned.iter().all(|a| a.bot_id == bot));
    assert_eq!(jobs::get(&c, acme, sixth).await?.status, JobStatus::Waiting);
    let backlog: i64 = c
        .query_one(
            "SELECT count(*) FROM jobs WHERE system = 'Backlog' AND status = 'WAITING'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(backlog, 54, "the backlog waits, untouched");
    drop(c);
    db.cleanup().await
}
