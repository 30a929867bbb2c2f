//! Webhooks: endpoints (job and task callbacks, customer subscriptions), the
//! customer's signing secret, and the deliveries the reaper forms from the
//! outbox (written by a trigger on `job_events`, see migration V5) and sends.
//!
//! Order: a delivery is formed for an (endpoint, job) only while none of
//! them is PENDING (a unique index holds it even for two reapers), from the
//! oldest events not yet carried, so one job's events reach one endpoint in
//! the order they happened.

use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Page, RepoError, execute, query, query_one, query_opt};
use crate::domain::{CustomerId, JobId};
use crate::secret::Sealer;
use crate::webhook::{WireEvent, generate_secret};

/// The customer's signing secret, made on first use.
pub async fn signing_secret(
    db: &impl GenericClient,
    customer: CustomerId,
    sealer: &Sealer,
) -> Result<String, RepoError> {
    let fresh = generate_secret();
    execute(
        db,
        "INSERT INTO webhook_secrets (customer_id, secret_sealed) VALUES ($1, $2)
         ON CONFLICT (customer_id) DO NOTHING",
        &[&customer.0, &sealer.seal(&fresh, customer.0.as_bytes())],
    )
    .await?;
    let row = query_one(
        db,
        "SELECT secret_sealed FROM webhook_secrets WHERE customer_id = $1",
        &[&customer.0],
    )
    .await?;
    sealer
        .open(row.get(0), customer.0.as_bytes())
        .map_err(|e| RepoError::Corrupt(e.to_string()))
}

/// A new signing secret; deliveries signed from now on use it.
pub async fn rotate_signing_secret(
    db: &impl GenericClient,
    customer: CustomerId,
    sealer: &Sealer,
) -> Result<String, RepoError> {
    let fresh = generate_secret();
    execute(
        db,
        "INSERT INTO webhook_secrets (customer_id, secret_sealed) VALUES ($1, $2)
         ON CONFLICT (customer_id) DO UPDATE SET secret_sealed = $2, rotated_at = now()",
        &[&customer.0, &sealer.seal(&fresh, customer.0.as_bytes())],
    )
    .await?;
    Ok(fresh)
}

/// An endpoint as the API shows it: never its password.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq)]
pub struct Endpoint {
    pub id: Uuid,
    pub kind: String,
    pub url: String,
    pub user: Option<String>,
    pub has_password: bool,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

const ENDPOINT_COLUMNS: &str = "id, kind, url, username, password_sealed IS NOT NULL AS has_password, \
     enabled, disabled_reason, created_at";

fn endpoint(r: &Row) -> Endpoint {
    Endpoint {
        id: r.get("id"),
        kind: r.get("kind"),
        url: r.get("url"),
        user: r.get("username"),
        has_password: r.get("has_password"),
        enabled: r.get("enabled"),
        disabled_reason: r.get("disabled_reason"),
        created_at: r.get("created_at"),
    }
}

/// A callback or subscription as given (URL already checked).
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// `kind`: `callback` (named by a job or task) or `subscription`.
pub async fn create_endpoint(
    db: &impl GenericClient,
    customer: CustomerId,
    kind: &str,
    new: &NewEndpoint,
    sealer: &Sealer,
) -> Result<Endpoint, RepoError> {
    let id = Uuid::now_v7();
    let sealed = new
        .password
        .as_deref()
        .map(|p| sealer.seal(p, id.as_bytes()));
    let sql = format!(
        "INSERT INTO webhook_endpoints (id, customer_id, kind, url, username, password_sealed)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {ENDPOINT_COLUMNS}"
    );
    let row = query_one(
        db,
        &sql,
        &[&id, &customer.0, &kind, &new.url, &new.user, &sealed],
    )
    .await?;
    Ok(endpoint(&row))
}

pub async fn subscriptions(
    db: &impl GenericClient,
    customer: CustomerId,
) -> Result<Vec<Endpoint>, RepoError> {
    let sql = format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
          WHERE customer_id = $1 AND kind = 'subscription' ORDER BY id"
    );
    let rows = query(db, &sql, &[&customer.0]).await?;
    Ok(rows.iter().map(endpoint).collect())
}

/// Stops an endpoint: no more events are owed to it, and what is pending
/// for it ends DEAD when its turn comes.
pub async fn disable_endpoint(
    db: &impl GenericClient,
    customer: Option<CustomerId>,
    id: Uuid,
    reason: &str,
) -> Result<Endpoint, RepoError> {
    let sql = format!(
        "UPDATE webhook_endpoints SET enabled = false, disabled_reason = $3
          WHERE id = $1 AND ($2::uuid IS NULL OR customer_id = $2) RETURNING {ENDPOINT_COLUMNS}"
    );
    let row = query_opt(db, &sql, &[&id, &customer.map(|c| c.0), &reason])
        .await?
        .ok_or(RepoError::NotFound("webhook endpoint"))?;
    Ok(endpoint(&row))
}

/// A delivery and, on single reads, its attempts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq)]
#[schema(as = WebhookDelivery)]
pub struct Delivery {
    /// Also the `webhook-id` header of every attempt.
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub url: String,
    pub job_id: JobId,
    pub status: String,
    pub events: i64,
    pub attempts: i32,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_log: Option<Vec<Attempt>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq)]
pub struct Attempt {
    pub n: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub attempted_at: OffsetDateTime,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
}

const DELIVERY_COLUMNS: &str = "d.id, d.endpoint_id, e.url, d.job_id, d.status, \
     jsonb_array_length(d.body)::int8 AS events, d.attempts, \
     CASE WHEN d.status = 'PENDING' THEN d.next_attempt_at END AS next_attempt_at, \
     d.last_status, d.last_error, d.created_at, d.finished_at";

fn delivery(r: &Row) -> Delivery {
    Delivery {
        id: r.get("id"),
        endpoint_id: r.get("endpoint_id"),
        url: r.get("url"),
        job_id: JobId(r.get("job_id")),
        status: r.get("status"),
        events: r.get("events"),
        attempts: r.get("attempts"),
        next_attempt_at: r.get("next_attempt_at"),
        last_status: r.get("last_status"),
        last_error: r.get("last_error"),
        created_at: r.get("created_at"),
        finished_at: r.get("finished_at"),
        body: None,
        attempt_log: None,
    }
}

#[derive(Debug, Default, Clone)]
pub struct DeliveryFilter {
    pub status: Option<String>,
    pub job: Option<JobId>,
}

pub async fn deliveries(
    db: &impl GenericClient,
    customer: CustomerId,
    filter: &DeliveryFilter,
    page: Page,
) -> Result<Vec<Delivery>, RepoError> {
    let (cmp, dir) = page.order_sql();
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d
           JOIN webhook_endpoints e ON e.id = d.endpoint_id
          WHERE d.customer_id = $1
            AND ($2::text IS NULL OR d.status = $2)
            AND ($3::uuid IS NULL OR d.job_id = $3)
            AND ($4::uuid IS NULL OR d.id {cmp} $4)
          ORDER BY d.id {dir} LIMIT $5"
    );
    let rows = query(
        db,
        &sql,
        &[
            &customer.0,
            &filter.status,
            &filter.job.map(|j| j.0),
            &page.after,
            &page.limit,
        ],
    )
    .await?;
    Ok(rows.iter().map(delivery).collect())
}

/// One delivery with its body and every attempt.
pub async fn delivery_detail(
    db: &impl GenericClient,
    customer: CustomerId,
    id: Uuid,
) -> Result<Delivery, RepoError> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS}, d.body FROM webhook_deliveries d
           JOIN webhook_endpoints e ON e.id = d.endpoint_id
          WHERE d.id = $1 AND d.customer_id = $2"
    );
    let row = query_opt(db, &sql, &[&id, &customer.0])
        .await?
        .ok_or(RepoError::NotFound("delivery"))?;
    let attempts = query(
        db,
        "SELECT n, attempted_at, status_code, error, duration_ms FROM webhook_attempts
          WHERE delivery_id = $1 ORDER BY n",
        &[&id],
    )
    .await?;
    Ok(Delivery {
        body: Some(row.get("body")),
        attempt_log: Some(
            attempts
                .iter()
                .map(|a| Attempt {
                    n: a.get(0),
                    attempted_at: a.get(1),
                    status_code: a.get(2),
                    error: a.get(3),
                    duration_ms: a.get(4),
                })
                .collect(),
        ),
        ..delivery(&row)
    })
}

/// Sends a finished delivery again (same `webhook-id`, same events), with a
/// fresh schedule. Refused while a newer delivery of its job to its endpoint
/// is pending (order), or when its endpoint is disabled.
pub async fn redeliver(
    db: &impl GenericClient,
    customer: CustomerId,
    id: Uuid,
) -> Result<Delivery, RepoError> {
    let row = query_opt(
        db,
        "SELECT d.status, e.enabled FROM webhook_deliveries d
           JOIN webhook_endpoints e ON e.id = d.endpoint_id
          WHERE d.id = $1 AND d.customer_id = $2 FOR UPDATE OF d",
        &[&id, &customer.0],
    )
    .await?
    .ok_or(RepoError::NotFound("delivery"))?;
    if !row.get::<_, bool>(1) {
        return Err(RepoError::Conflict(
            "its endpoint is disabled; subscribe again to deliver to it".into(),
        ));
    }
    if row.get::<_, &str>(0) == "PENDING" {
        return Err(RepoError::Conflict(
            "the delivery is pending already".into(),
        ));
    }
    let n = execute(
        db,
        "UPDATE webhook_deliveries SET status = 'PENDING', schedule_from = attempts,
                next_attempt_at = now(), claimed_until = NULL, finished_at = NULL
          WHERE id = $1",
        &[&id],
    )
    .await;
    match n {
        Err(e) if e.is_unique_violation() => Err(RepoError::Conflict(
            "a later delivery of this job to this endpoint is pending; redeliver once it is done"
                .into(),
        )),
        Err(e) => Err(e),
        Ok(_) => {
            // The senders wake at its commit (`OUTBOX_CHANNEL`).
            execute(db, "SELECT pg_notify($1, '')", &[&OUTBOX_CHANNEL]).await?;
            delivery_detail(db, customer, id).await
        }
    }
}

/// The PostgreSQL channel notified when webhook work is added (by the
/// outbox trigger, and by `redeliver`).
pub const OUTBOX_CHANNEL: &str = "orq_outbox";

/// The endpoints with a pending delivery, one index probe each (a skip
/// scan of `webhook_deliveries_lanes`): what a claim looks at, so one
/// endpoint's backlog costs a claim one probe, not a scan of the backlog.
const LANES: &str = "lanes(endpoint_id) AS (
        (SELECT endpoint_id FROM webhook_deliveries
          WHERE status = 'PENDING' ORDER BY endpoint_id LIMIT 1)
      UNION ALL
        SELECT (SELECT d.endpoint_id FROM webhook_deliveries d
                 WHERE d.status = 'PENDING' AND d.endpoint_id > l.endpoint_id
                 ORDER BY d.endpoint_id LIMIT 1)
          FROM lanes l WHERE l.endpoint_id IS NOT NULL)";

/// How long until the next pending delivery is due, of endpoints not
/// `busy` and not claimed now; `None` when none is pending.
pub async fn next_due(
    db: &impl GenericClient,
    busy: &[Uuid],
) -> Result<Option<std::time::Duration>, RepoError> {
    let sql = format!(
        "WITH RECURSIVE {LANES}
         SELECT (EXTRACT(EPOCH FROM min(n.next_attempt_at) - now()) * 1000)::float8
           FROM lanes l CROSS JOIN LATERAL (
                SELECT d.next_attempt_at FROM webhook_deliveries d
                 WHERE d.endpoint_id = l.endpoint_id AND d.status = 'PENDING'
                   AND (d.claimed_until IS NULL OR d.claimed_until < now())
                 ORDER BY d.next_attempt_at LIMIT 1) n
          WHERE l.endpoint_id IS NOT NULL AND l.endpoint_id <> ALL($1)"
    );
    let row = query_one(db, &sql, &[&busy]).await?;
    Ok(row
        .get::<_, Option<f64>>(0)
        .map(|ms| std::time::Duration::from_secs_f64(ms.max(0.0) / 1000.0)))
}

/// A page of what `form` may make deliveries of.
#[derive(Debug, Default)]
pub struct Formable {
    /// (endpoint, job) pairs with events not yet in a delivery. A pair
    /// whose delivery is pending still is among them: `form` skips it (the
    /// unique index of open deliveries decides, whatever the planner).
    pub pairs: Vec<(Uuid, JobId)>,
    /// Where the next page starts, when there may be one.
    pub next: Option<(Uuid, JobId)>,
}

/// The next `limit` (endpoint, job) pairs owed events after `after`, in
/// key order (an index range, whatever the table's statistics say).
pub async fn formable(
    db: &impl GenericClient,
    after: Option<(Uuid, JobId)>,
    limit: i64,
) -> Result<Formable, RepoError> {
    let (endpoint, job) = after.map_or((Uuid::nil(), Uuid::nil()), |(e, j)| (e, j.0));
    let rows = query(
        db,
        // A skip scan: each step is the next key of the unsent index, so a
        // page costs `limit` index probes however large the outbox.
        "WITH RECURSIVE page(endpoint_id, job_id, n) AS (
             (SELECT endpoint_id, job_id, 1 FROM webhook_outbox
               WHERE delivery_id IS NULL AND (endpoint_id, job_id) > ($1, $2)
               ORDER BY endpoint_id, job_id LIMIT 1)
           UNION ALL
             (SELECT o.endpoint_id, o.job_id, p.n + 1 FROM page p CROSS JOIN LATERAL (
                     SELECT endpoint_id, job_id FROM webhook_outbox
                      WHERE delivery_id IS NULL
                        AND (endpoint_id, job_id) > (p.endpoint_id, p.job_id)
                      ORDER BY endpoint_id, job_id LIMIT 1) o
               WHERE p.n < $3::int8))
         SELECT endpoint_id, job_id FROM page ORDER BY 1, 2",
        &[&endpoint, &job, &limit],
    )
    .await?;
    let pairs: Vec<(Uuid, JobId)> = rows.iter().map(|r| (r.get(0), JobId(r.get(1)))).collect();
    let next = (pairs.len() as i64 >= limit)
        .then(|| pairs.last().copied())
        .flatten();
    Ok(Formable { pairs, next })
}

/// Makes a delivery of the oldest events (at most `max_events`) owed to
/// each (endpoint, job) of `pairs`, in the caller's transaction, with a
/// fixed number of statements however many pairs; returns how many it
/// made. A pair is skipped when another reaper is forming it now, when
/// nothing is owed, or when a delivery of it is pending already (one open
/// delivery per endpoint and job keeps a job's events in order).
pub async fn form(
    db: &impl GenericClient,
    pairs: &[(Uuid, JobId)],
    max_events: i64,
) -> Result<usize, RepoError> {
    let endpoints: Vec<Uuid> = pairs.iter().map(|p| p.0).collect();
    let jobs: Vec<Uuid> = pairs.iter().map(|p| p.1.0).collect();
    // One former per (endpoint, job) at a time: another reaper forming it
    // now would otherwise take the events after the ones it holds and could
    // make its delivery first, out of order. Skipped, not waited for. The
    // events are read only after the locks are held (a statement of its
    // own: its snapshot sees what the last holder committed).
    let locked = query(
        db,
        "SELECT e, j FROM unnest($1::uuid[], $2::uuid[]) AS p(e, j)
          WHERE pg_try_advisory_xact_lock(hashtextextended(e::text || '/' || j::text, 0))",
        &[&endpoints, &jobs],
    )
    .await?;
    if locked.is_empty() {
        return Ok(0);
    }
    let endpoints: Vec<Uuid> = locked.iter().map(|r| r.get(0)).collect();
    let jobs: Vec<Uuid> = locked.iter().map(|r| r.get(1)).collect();
    let rows = query(
        db,
        "SELECT o.endpoint_id, o.event_seq, ev.id, ev.job_id, ev.type, ev.description,
                ev.to_status, ev.created_at
           FROM webhook_outbox o JOIN job_events ev ON ev.id = o.event_id
          WHERE (o.endpoint_id, o.job_id) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))
            AND o.delivery_id IS NULL
          ORDER BY o.endpoint_id, o.job_id, o.event_seq
          FOR UPDATE OF o",
        &[&endpoints, &jobs],
    )
    .await?;
    // Each pair's oldest events, up to `max_events`, become one delivery.
    let mut made: Vec<Formed> = Vec::new();
    for r in &rows {
        let (endpoint, job): (Uuid, Uuid) = (r.get(0), r.get(3));
        let same = made
            .last()
            .is_some_and(|f| f.endpoint == endpoint && f.job == job);
        if !same {
            made.push(Formed {
                id: Uuid::now_v7(),
                endpoint,
                job,
                seqs: Vec::new(),
                events: Vec::new(),
            });
        }
        let Some(f) = made.last_mut() else { continue };
        if f.events.len() < usize::try_from(max_events.max(1)).unwrap_or(usize::MAX) {
            f.seqs.push(r.get(1));
            f.events.push(WireEvent::from_stored(
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            ));
        }
    }
    if made.is_empty() {
        return Ok(0);
    }
    let mut bodies = Vec::with_capacity(made.len());
    for f in &made {
        bodies
            .push(serde_json::to_value(&f.events).map_err(|e| RepoError::Corrupt(e.to_string()))?);
    }
    let ids: Vec<Uuid> = made.iter().map(|f| f.id).collect();
    let endpoints: Vec<Uuid> = made.iter().map(|f| f.endpoint).collect();
    let jobs: Vec<Uuid> = made.iter().map(|f| f.job).collect();
    let inserted = query(
        db,
        "INSERT INTO webhook_deliveries (id, customer_id, endpoint_id, job_id, body, status)
         SELECT p.id, e.customer_id, e.id, p.job, p.body, 'PENDING'
           FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::jsonb[]) AS p(id, endpoint, job, body)
           JOIN webhook_endpoints e ON e.id = p.endpoint
         ON CONFLICT (endpoint_id, job_id) WHERE status = 'PENDING' DO NOTHING
         RETURNING id",
        &[&ids, &endpoints, &jobs, &bodies],
    )
    .await?;
    let inserted: std::collections::HashSet<Uuid> = inserted.iter().map(|r| r.get(0)).collect();
    let (mut endpoints, mut seqs, mut deliveries) = (Vec::new(), Vec::new(), Vec::new());
    for f in made.iter().filter(|f| inserted.contains(&f.id)) {
        for seq in &f.seqs {
            endpoints.push(f.endpoint);
            seqs.push(*seq);
            deliveries.push(f.id);
        }
    }
    execute(
        db,
        "UPDATE webhook_outbox o SET delivery_id = p.delivery
           FROM unnest($1::uuid[], $2::int8[], $3::uuid[]) AS p(endpoint, seq, delivery)
          WHERE o.endpoint_id = p.endpoint AND o.event_seq = p.seq",
        &[&endpoints, &seqs, &deliveries],
    )
    .await?;
    Ok(inserted.len())
}

/// A delivery `form` makes: its events and their places in the outbox.
struct Formed {
    id: Uuid,
    endpoint: Uuid,
    job: Uuid,
    seqs: Vec<i64>,
    events: Vec<WireEvent>,
}

/// A delivery claimed for sending, with where and how to send it.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: Uuid,
    pub customer: CustomerId,
    pub endpoint_id: Uuid,
    pub url: String,
    pub user: Option<String>,
    pub password_sealed: Option<Vec<u8>>,
    pub enabled: bool,
    pub body: Value,
    pub attempts: i32,
    /// Attempts before the last redelivery: the schedule counts from here.
    pub schedule_from: i32,
}

/// Claims up to `limit` due deliveries for `hold` (no other reaper sends
/// them meanwhile; a reaper that dies releases them when it runs out),
/// the oldest due first within each endpoint, at most `per_endpoint` of
/// one, leaving out `busy` endpoints (at their bound here). Endpoints are
/// visited one index probe each, so an endpoint with a long backlog, busy
/// or not, costs a claim the same as one with a single delivery.
pub async fn claim_due(
    db: &impl GenericClient,
    limit: i64,
    per_endpoint: i64,
    busy: &[Uuid],
    hold: std::time::Duration,
) -> Result<Vec<Due>, RepoError> {
    let hold_ms = i64::try_from(hold.as_millis()).unwrap_or(i64::MAX);
    let sql = format!(
        "WITH RECURSIVE {LANES},
         due AS (
             SELECT d.id FROM lanes l CROSS JOIN LATERAL (
                    SELECT d.id FROM webhook_deliveries d
                     WHERE d.endpoint_id = l.endpoint_id AND d.status = 'PENDING'
                       AND d.next_attempt_at <= now()
                       AND (d.claimed_until IS NULL OR d.claimed_until < now())
                     ORDER BY d.next_attempt_at LIMIT $4
                     FOR UPDATE SKIP LOCKED) d
              WHERE l.endpoint_id IS NOT NULL AND l.endpoint_id <> ALL($2)
              LIMIT $1)
         UPDATE webhook_deliveries d
            SET claimed_until = now() + $3 * interval '1 millisecond'
           FROM due, webhook_endpoints e
          WHERE d.id = due.id AND e.id = d.endpoint_id
          RETURNING d.id, d.customer_id, d.endpoint_id, e.url, e.username, e.password_sealed,
                    e.enabled, d.body, d.attempts, d.schedule_from"
    );
    let rows = query(db, &sql, &[&limit, &busy, &(hold_ms as f64), &per_endpoint]).await?;
    Ok(rows
        .iter()
        .map(|r| Due {
            id: r.get(0),
            customer: CustomerId(r.get(1)),
            endpoint_id: r.get(2),
            url: r.get(3),
            user: r.get(4),
            password_sealed: r.get(5),
            enabled: r.get(6),
            body: r.get(7),
            attempts: r.get(8),
            schedule_from: r.get(9),
        })
        .collect())
}

/// How an attempt went, and what follows.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub attempted_at: OffsetDateTime,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
    /// DELIVERED, PENDING (again at `next_attempt_at`) or DEAD.
    pub status: &'static str,
    pub next_attempt_at: Option<OffsetDateTime>,
}

/// Records attempt `n` of a delivery and its new state; `false` when the
/// delivery moved on meanwhile (another reaper recorded that attempt).
pub async fn record_attempt(
    db: &impl GenericClient,
    id: Uuid,
    n: i32,
    outcome: &AttemptOutcome,
) -> Result<bool, RepoError> {
    let recorded = record_attempts(db, &[(id, n, outcome)]).await?;
    Ok(recorded.contains(&id))
}

/// Records attempts (delivery, its attempt number, how it went) and each
/// delivery's new state, in two statements however many; returns the
/// deliveries whose state was recorded (not one that moved on meanwhile:
/// another reaper recorded that attempt).
pub async fn record_attempts(
    db: &impl GenericClient,
    attempts: &[(Uuid, i32, &AttemptOutcome)],
) -> Result<Vec<Uuid>, RepoError> {
    let ids: Vec<Uuid> = attempts.iter().map(|a| a.0).collect();
    let ns: Vec<i32> = attempts.iter().map(|a| a.1).collect();
    let at: Vec<OffsetDateTime> = attempts.iter().map(|a| a.2.attempted_at).collect();
    let codes: Vec<Option<i32>> = attempts.iter().map(|a| a.2.status_code).collect();
    let errors: Vec<Option<&str>> = attempts.iter().map(|a| a.2.error.as_deref()).collect();
    let took: Vec<i32> = attempts.iter().map(|a| a.2.duration_ms).collect();
    let statuses: Vec<&str> = attempts.iter().map(|a| a.2.status).collect();
    let next: Vec<Option<OffsetDateTime>> = attempts.iter().map(|a| a.2.next_attempt_at).collect();
    execute(
        db,
        "INSERT INTO webhook_attempts (delivery_id, n, attempted_at, status_code, error, duration_ms)
         SELECT * FROM unnest($1::uuid[], $2::int4[], $3::timestamptz[], $4::int4[], $5::text[], $6::int4[])
         ON CONFLICT DO NOTHING",
        &[&ids, &ns, &at, &codes, &errors, &took],
    )
    .await?;
    let rows = query(
        db,
        "UPDATE webhook_deliveries d
            SET attempts = u.n, status = u.status,
                next_attempt_at = COALESCE(u.next, d.next_attempt_at),
                last_status = u.code, last_error = u.error, claimed_until = NULL,
                finished_at = CASE WHEN u.status = 'PENDING' THEN NULL ELSE now() END
           FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::timestamptz[], $5::int4[], $6::text[])
                AS u(id, n, status, next, code, error)
          WHERE d.id = u.id AND d.attempts = u.n - 1 AND d.status = 'PENDING'
          RETURNING d.id",
        &[&ids, &ns, &statuses, &next, &codes, &errors],
    )
    .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Ends a delivery without an attempt (its endpoint was disabled).
pub async fn abandon(db: &impl GenericClient, id: Uuid, why: &str) -> Result<(), RepoError> {
    execute(
        db,
        "UPDATE webhook_deliveries SET status = 'DEAD', last_error = $2, claimed_until = NULL,
                finished_at = now()
          WHERE id = $1",
        &[&id, &why],
    )
    .await?;
    Ok(())
}

/// Removes up to `limit` deliveries that ended `status` (DELIVERED or
/// DEAD) before `before`, with their attempts and their outbox rows; returns
/// how many deliveries. A delivery being redelivered right now is skipped
/// (`SKIP LOCKED`), and one redelivered since is PENDING, so not taken.
pub async fn prune_finished(
    db: &impl GenericClient,
    status: &str,
    before: OffsetDateTime,
    limit: i64,
) -> Result<u64, RepoError> {
    let row = query_one(
        db,
        "WITH gone AS (
             DELETE FROM webhook_deliveries
              WHERE id = ANY(ARRAY(SELECT id FROM webhook_deliveries
                                    WHERE status = $1 AND finished_at < $2
                                    ORDER BY finished_at LIMIT $3
                                    FOR UPDATE SKIP LOCKED))
             RETURNING id),
         carried AS (
             DELETE FROM webhook_outbox WHERE delivery_id IN (SELECT id FROM gone))
         SELECT count(*) FROM gone",
        &[&status, &before, &limit],
    )
    .await?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// Gives claimed deliveries back (this reaper will not send them now).
pub async fn release(db: &impl GenericClient, ids: &[Uuid]) -> Result<(), RepoError> {
    execute(
        db,
        "UPDATE webhook_deliveries SET claimed_until = NULL WHERE id = ANY($1)",
        &[&ids],
    )
    .await?;
    Ok(())
}
