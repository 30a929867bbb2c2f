//! A job's history: event kinds, appending events, reading them.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventKind {
    StatusChange,
    PercentChange,
    StepChange,
    Error,
    Warning,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::StatusChange => "STATUS_CHANGE",
            EventKind::PercentChange => "PERCENT_CHANGE",
            EventKind::StepChange => "STEP_CHANGE",
            EventKind::Error => "ERROR",
            EventKind::Warning => "WARNING",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EventRecord {
    /// The causing message's id where there is one: a redelivery is a no-op.
    pub id: Uuid,
    pub job_id: JobId,
    pub customer: CustomerId,
    pub kind: EventKind,
    pub description: String,
    /// The status names of a STATUS_CHANGE (a job's or a human task's).
    pub from: Option<&'static str>,
    pub to: Option<&'static str>,
    pub bot: Option<BotId>,
    pub attempt: Option<i32>,
}

/// Appends events; an event whose id exists already is skipped (a
/// redelivered report adds nothing).
pub async fn append_events(
    db: &impl GenericClient,
    events: &[EventRecord],
) -> Result<(), RepoError> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let jobs: Vec<Uuid> = events.iter().map(|e| e.job_id.0).collect();
    let customers: Vec<Uuid> = events.iter().map(|e| e.customer.0).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let descriptions: Vec<&str> = events.iter().map(|e| e.description.as_str()).collect();
    let from: Vec<Option<&str>> = events.iter().map(|e| e.from).collect();
    let to: Vec<Option<&str>> = events.iter().map(|e| e.to).collect();
    let bots: Vec<Option<Uuid>> = events.iter().map(|e| e.bot.map(|b| b.0)).collect();
    let attempts: Vec<Option<i32>> = events.iter().map(|e| e.attempt).collect();
    execute(
        db,
        "INSERT INTO job_events (id, job_id, customer_id, type, description, from_status,
                                 to_status, bot_id, attempt)
         SELECT id, job_id, customer_id, type, description, from_status, to_status, bot_id, attempt
           FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                       $6::text[], $7::text[], $8::uuid[], $9::int4[])
                WITH ORDINALITY AS e(id, job_id, customer_id, type, description, from_status,
                                     to_status, bot_id, attempt, n)
          ORDER BY n
         ON CONFLICT (id) DO NOTHING",
        &[
            &ids,
            &jobs,
            &customers,
            &kinds,
            &descriptions,
            &from,
            &to,
            &bots,
            &attempts,
        ],
    )
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Event {
    pub id: Uuid,
    pub job_id: JobId,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub bot_id: Option<BotId>,
    pub attempt: Option<i32>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

pub async fn events(
    db: &impl GenericClient,
    customer: CustomerId,
    job: JobId,
) -> Result<Vec<Event>, RepoError> {
    let rows = query(
        db,
        "SELECT id, job_id, type, description, from_status, to_status, bot_id, attempt, created_at
               FROM job_events WHERE job_id = $1 AND customer_id = $2 ORDER BY seq",
        &[&job.0, &customer.0],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| Event {
            id: r.get(0),
            job_id: JobId(r.get(1)),
            kind: r.get(2),
            description: r.get(3),
            from_status: r.get(4),
            to_status: r.get(5),
            bot_id: r.get::<_, Option<Uuid>>(6).map(BotId),
            attempt: r.get(7),
            created_at: r.get(8),
        })
        .collect())
}
