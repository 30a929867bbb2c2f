//! `repo::webhooks`: a job's events reach a subscription's outbox, are
//! formed into one delivery, and a due delivery is claimed by one sender
//! at a time, within the per-endpoint bound.

use deadpool_postgres::GenericClient;
use orq_e2e::TestDb;
use orq_shared::domain::{CustomerId, JobId};
use orq_shared::repo::jobs;
use orq_shared::repo::webhooks::{self, AttemptOutcome};
use std::time::Duration;
use uuid::Uuid;

const HOLD: Duration = Duration::from_secs(60);

async fn subscription(db: &TestDb, customer: CustomerId) -> anyhow::Result<Uuid> {
    db.subscription(customer, "https://hooks.example.com/in")
        .await
}

/// Forms every delivery the outbox owes; how many were made.
async fn form_all(c: &impl GenericClient) -> anyhow::Result<usize> {
    let page = webhooks::formable(c, None, 100).await?;
    Ok(webhooks::form(c, &page.pairs, 50).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_delivery_is_claimed_by_one_sender_until_released() -> anyhow::Result<()> {
    let db = TestDb::new("repohooks").await?;
    let acme = db.customer("acme").await?;
    let c = db.get().await?;
    let endpoint = subscription(&db, acme).await?;
    let id = db.job(acme).await?;

    assert_eq!(
        form_all(&c).await?,
        1,
        "the job's creation, in one delivery"
    );
    assert_eq!(form_all(&c).await?, 0, "nothing owed twice");
    let due = webhooks::claim_due(&c, 10, 10, &[], HOLD).await?;
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].endpoint_id, endpoint);
    assert_eq!(due[0].attempts, 0);
    assert_eq!(due[0].body[0]["jobId"], id.0.to_string(), "{}", due[0].body);
    assert_eq!(due[0].body[0]["type"], "STATUS_CHANGE");
    // Held: another sender gets nothing, nor does a busy endpoint.
    assert!(webhooks::claim_due(&c, 10, 10, &[], HOLD).await?.is_empty());
    webhooks::release(&c, &[due[0].id]).await?;
    assert!(
        webhooks::claim_due(&c, 10, 10, &[endpoint], HOLD)
            .await?
            .is_empty()
    );
    let again = webhooks::claim_due(&c, 10, 10, &[], HOLD).await?;
    assert_eq!(again.iter().map(|d| d.id).collect::<Vec<_>>(), [due[0].id]);

    // Delivered: its attempt is recorded once, and it is never due again.
    let delivered = AttemptOutcome {
        attempted_at: time::OffsetDateTime::now_utc(),
        status_code: Some(200),
        error: None,
        duration_ms: 5,
        status: "DELIVERED",
        next_attempt_at: None,
    };
    assert!(webhooks::record_attempt(&c, due[0].id, 1, &delivered).await?);
    assert!(!webhooks::record_attempt(&c, due[0].id, 1, &delivered).await?);
    webhooks::release(&c, &[due[0].id]).await?;
    assert!(webhooks::claim_due(&c, 10, 10, &[], HOLD).await?.is_empty());
    drop(c);
    db.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_take_at_most_the_per_endpoint_bound() -> anyhow::Result<()> {
    let db = TestDb::new("repohookcap").await?;
    let acme = db.customer("acme").await?;
    let c = db.get().await?;
    subscription(&db, acme).await?;
    for _ in 0..3 {
        db.job(acme).await?;
    }
    // One delivery per job: three due to the one endpoint.
    assert_eq!(form_all(&c).await?, 3);
    let first = webhooks::claim_due(&c, 10, 2, &[], HOLD).await?;
    assert_eq!(first.len(), 2, "two of one endpoint at a time");
    let rest = webhooks::claim_due(&c, 10, 2, &[], HOLD).await?;
    assert_eq!(rest.len(), 1);
    assert!(rest.iter().all(|d| first.iter().all(|f| f.id != d.id)));
    drop(c);
    db.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formable_pairs_come_in_key_order_pages_and_a_pending_delivery_blocks_its_job()
-> anyhow::Result<()> {
    let db = TestDb::new("repohookpage").await?;
    let acme = db.customer("acme").await?;
    let c = db.get().await?;
    subscription(&db, acme).await?;
    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(db.job(acme).await?);
    }
    let first = webhooks::formable(&c, None, 2).await?;
    assert_eq!(first.pairs.len(), 2);
    assert!(first.next.is_some(), "a full page: there may be more");
    let second = webhooks::formable(&c, first.next, 2).await?;
    assert_eq!(second.pairs.len(), 1);
    assert!(second.next.is_none(), "the last page");
    let mut seen: Vec<JobId> = first
        .pairs
        .iter()
        .chain(&second.pairs)
        .map(|p| p.1)
        .collect();
    seen.sort_by_key(|j| j.0);
    made.sort_by_key(|j| j.0);
    assert_eq!(seen, made, "every pair once, in key order");

    // Formed, then a new event of the first job: owed, but blocked while
    // its delivery is pending (one open delivery per endpoint and job).
    assert_eq!(webhooks::form(&c, &first.pairs, 50).await?, 2);
    jobs::transition(
        &c,
        acme,
        first.pairs[0].1,
        jobs::Actor::Api,
        orq_shared::domain::JobEvent::Cancel,
        &jobs::Outcome::default(),
        Uuid::now_v7(),
        time::OffsetDateTime::now_utc(),
    )
    .await?;
    let page = webhooks::formable(&c, None, 10).await?;
    assert_eq!(
        page.pairs.len(),
        2,
        "the first job's new event and the third job"
    );
    assert_eq!(
        webhooks::form(&c, &page.pairs, 50).await?,
        1,
        "the first job waits for its pending delivery"
    );
    let owed = webhooks::formable(&c, None, 10).await?;
    assert_eq!(owed.pairs, [first.pairs[0]], "still owed, not lost");
    drop(c);
    db.cleanup().await
}
