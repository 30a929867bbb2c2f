//! Waiting jobs no registered bot can take: found by what they ask of a bot
//! (`placement::Needs`), judged by `placement::stranded`, flagged with a
//! WARNING event and `waiting_reason`, and cleared once a bot could take
//! them again.

use super::*;
use crate::placement::{KnownBot, Needs};

/// Every bot of `customer`, whatever its load or status, in id order.
pub async fn known_bots(
    db: &impl GenericClient,
    customer: CustomerId,
) -> Result<Vec<KnownBot>, RepoError> {
    let rows = query(
        db,
        "SELECT id, delivery, systems, tags, draining FROM bots WHERE customer_id = $1 ORDER BY id",
        &[&customer.0],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(KnownBot {
                id: BotId(r.get(0)),
                delivery: parse_col(r.get::<_, &str>(1))?,
                systems: r.get(2),
                tags: r.get(3),
                draining: r.get(4),
            })
        })
        .collect()
}

/// What `customer`'s waiting jobs ask of a bot, each distinct ask once with
/// the reason its jobs carry (an ask whose jobs carry different reasons
/// comes once per reason). `since`: only jobs created from then on.
pub async fn waiting_needs(
    db: &impl GenericClient,
    customer: CustomerId,
    since: Option<OffsetDateTime>,
) -> Result<Vec<(Needs, Option<String>)>, RepoError> {
    let rows = query(
        db,
        "SELECT DISTINCT kind, system, host_id, required_tags, waiting_reason FROM jobs
          WHERE customer_id = $1 AND status = 'WAITING'
            AND created_at >= coalesce($2::timestamptz, '-infinity')",
        &[&customer.0, &since],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let csv = r.get::<_, &str>(0) == "system";
            (
                Needs {
                    system: csv.then(|| r.get(1)),
                    host: r.get::<_, Option<Uuid>>(2).map(BotId),
                    required_tags: r.get(3),
                },
                r.get(4),
            )
        })
        .collect())
}

/// Sets the reason of `customer`'s waiting jobs that ask `needs` (`None`
/// clears it); each job newly given a reason gets a WARNING event saying
/// it. Jobs that carry that reason already are left alone, so two
/// dispatchers doing this at once write one event per job. Returns how
/// many jobs changed. In the caller's transaction, which holds the
/// customer's matching lock from here on (exclusive: no round runs while
/// the rows are locked, so none skips an older job for a newer one).
pub async fn mark_stranded(
    db: &impl GenericClient,
    customer: CustomerId,
    needs: &Needs,
    reason: Option<&str>,
) -> Result<u64, RepoError> {
    let kind = if needs.system.is_some() {
        "system"
    } else {
        "script"
    };
    super::lock_matching(db, customer, true).await?;
    let rows = query(
        db,
        "UPDATE jobs SET waiting_reason = $6
          WHERE customer_id = $1 AND status = 'WAITING' AND kind = $2
            AND system = $3 AND host_id IS NOT DISTINCT FROM $4 AND required_tags = $5
            AND waiting_reason IS DISTINCT FROM $6
          RETURNING id, attempt",
        &[
            &customer.0,
            &kind,
            &needs.system.as_deref().unwrap_or(""),
            &needs.host.map(|h| h.0),
            &needs.required_tags,
            &reason,
        ],
    )
    .await?;
    if let Some(reason) = reason {
        let events: Vec<EventRecord> = rows
            .iter()
            .map(|r| EventRecord {
                id: Uuid::now_v7(),
                job_id: JobId(r.get(0)),
                customer,
                kind: EventKind::Warning,
                description: format!("no bot can take this job: {reason}"),
                from: None,
                to: None,
                bot: None,
                attempt: Some(r.get(1)),
            })
            .collect();
        append_events(db, &events).await?;
    }
    Ok(rows.len() as u64)
}
