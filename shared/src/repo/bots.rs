//! Bots: the proof of concept's `/bots` entity plus what matching needs.

use deadpool_postgres::GenericClient;
use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::{Page, RepoError, execute, now, parse_col, query, query_one, query_opt};
use crate::domain::{BotEvent, BotId, BotStatus, CustomerId, Delivery, bot_transition};

/// A bot as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq)]
pub struct Bot {
    pub id: BotId,
    pub name: String,
    pub ip_address: String,
    pub port: i32,
    pub status: BotStatus,
    pub delivery: Delivery,
    pub capacity: i32,
    pub active_jobs: i32,
    pub systems: Vec<String>,
    pub tags: Vec<String>,
    pub draining: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_heartbeat_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Bot {
    pub fn is_full(&self) -> bool {
        self.active_jobs >= self.capacity
    }
}

pub(crate) const COLUMNS: &str = "id, name, ip_address, port, status, delivery, capacity, \
     active_jobs, systems, tags, draining, last_heartbeat_at, created_at, updated_at";

pub(crate) fn from_row(r: &Row) -> Result<Bot, RepoError> {
    Ok(Bot {
        id: BotId(r.get("id")),
        name: r.get("name"),
        ip_address: r.get("ip_address"),
        port: r.get("port"),
        status: parse_col(r.get::<_, &str>("status"))?,
        delivery: parse_col(r.get::<_, &str>("delivery"))?,
        capacity: r.get("capacity"),
        active_jobs: r.get("active_jobs"),
        systems: r.get("systems"),
        tags: r.get("tags"),
        draining: r.get("draining"),
        last_heartbeat_at: r.get("last_heartbeat_at"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    })
}

/// The fields of a bot an admin sets.
#[derive(Debug, Clone)]
pub struct BotSpec {
    pub name: String,
    pub ip_address: String,
    pub port: i32,
    pub status: BotStatus,
    pub delivery: Delivery,
    pub capacity: i32,
    pub systems: Vec<String>,
    pub tags: Vec<String>,
}

pub async fn insert(
    db: &impl GenericClient,
    customer: CustomerId,
    spec: &BotSpec,
) -> Result<Bot, RepoError> {
    let sql = format!(
        "INSERT INTO bots (id, customer_id, name, ip_address, port, status, delivery, capacity, systems, tags)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {COLUMNS}"
    );
    let row = query_one(
        db,
        &sql,
        &[
            &BotId::new().0,
            &customer.0,
            &spec.name,
            &spec.ip_address,
            &spec.port,
            &spec.status.as_str(),
            &spec.delivery.as_str(),
            &spec.capacity,
            &spec.systems,
            &spec.tags,
        ],
    )
    .await
    .map_err(|e| name_taken(e, &spec.name))?;
    from_row(&row)
}

/// A duplicate name is the caller's conflict, not a storage failure.
fn name_taken(e: RepoError, name: &str) -> RepoError {
    if e.is_unique_violation() {
        RepoError::Conflict(format!("a bot named {name:?} already exists"))
    } else {
        e
    }
}

pub async fn get(
    db: &impl GenericClient,
    customer: CustomerId,
    id: BotId,
) -> Result<Bot, RepoError> {
    let sql = format!("SELECT {COLUMNS} FROM bots WHERE id = $1 AND customer_id = $2");
    let row = query_opt(db, &sql, &[&id.0, &customer.0])
        .await?
        .ok_or(RepoError::NotFound("bot"))?;
    from_row(&row)
}

async fn lock(db: &impl GenericClient, customer: CustomerId, id: BotId) -> Result<Bot, RepoError> {
    let sql = format!("SELECT {COLUMNS} FROM bots WHERE id = $1 AND customer_id = $2 FOR UPDATE");
    let row = query_opt(db, &sql, &[&id.0, &customer.0])
        .await?
        .ok_or(RepoError::NotFound("bot"))?;
    from_row(&row)
}

#[derive(Debug, Default, Clone)]
pub struct BotFilter {
    pub ip_address: Option<String>,
    pub name: Option<String>,
    pub status: Option<BotStatus>,
}

pub async fn list(
    db: &impl GenericClient,
    customer: CustomerId,
    filter: &BotFilter,
    page: Page,
) -> Result<Vec<Bot>, RepoError> {
    let (cmp, dir) = page.order_sql();
    let sql = format!(
        "SELECT {COLUMNS} FROM bots
          WHERE customer_id = $1
            AND ($2::text IS NULL OR ip_address = $2)
            AND ($3::text IS NULL OR name = $3)
            AND ($4::text IS NULL OR status = $4)
            AND ($5::uuid IS NULL OR id {cmp} $5)
          ORDER BY id {dir} LIMIT $6"
    );
    let rows = query(
        db,
        &sql,
        &[
            &customer.0,
            &filter.ip_address,
            &filter.name,
            &filter.status.map(BotStatus::as_str),
            &page.after,
            &page.limit,
        ],
    )
    .await?;
    rows.iter().map(from_row).collect()
}

/// Replaces the admin-set fields. A status set here is the bot's declared
/// status (legacy bots flip their own BUSY/AVAILABLE this way).
pub async fn update(
    db: &impl GenericClient,
    customer: CustomerId,
    id: BotId,
    spec: &BotSpec,
) -> Result<Bot, RepoError> {
    let current = lock(db, customer, id).await?;
    let status = bot_transition(current.status, BotEvent::Declared(spec.status));
    let sql = format!(
        "UPDATE bots SET name = $3, ip_address = $4, port = $5, status = $6, delivery = $7,
                capacity = $8, systems = $9, tags = $10, updated_at = now()
          WHERE id = $1 AND customer_id = $2 RETURNING {COLUMNS}"
    );
    let row = query_one(
        db,
        &sql,
        &[
            &id.0,
            &customer.0,
            &spec.name,
            &spec.ip_address,
            &spec.port,
            &status.as_str(),
            &spec.delivery.as_str(),
            &spec.capacity,
            &spec.systems,
            &spec.tags,
        ],
    )
    .await
    .map_err(|e| name_taken(e, &spec.name))?;
    from_row(&row)
}

/// Deletes an idle bot; one with work in hand must be drained first.
pub async fn delete(
    db: &impl GenericClient,
    customer: CustomerId,
    id: BotId,
) -> Result<(), RepoError> {
    let bot = lock(db, customer, id).await?;
    if bot.active_jobs > 0 {
        return Err(RepoError::Conflict(format!(
            "bot has {} job(s) in hand; drain it and wait for them to finish",
            bot.active_jobs
        )));
    }
    let pinned: i64 = query_one(
        db,
        "SELECT count(*) FROM task_defs WHERE host_id = $1",
        &[&id.0],
    )
    .await?
    .get(0);
    if pinned > 0 {
        return Err(RepoError::Conflict(format!(
            "{pinned} task(s) run on this bot (host_id); move them to another bot first"
        )));
    }
    execute(db, "DELETE FROM bots WHERE id = $1", &[&id.0]).await?;
    Ok(())
}

pub async fn set_draining(
    db: &impl GenericClient,
    customer: CustomerId,
    id: BotId,
    draining: bool,
) -> Result<Bot, RepoError> {
    let sql = format!(
        "UPDATE bots SET draining = $3, updated_at = now()
          WHERE id = $1 AND customer_id = $2 RETURNING {COLUMNS}"
    );
    let row = query_opt(db, &sql, &[&id.0, &customer.0, &draining])
        .await?
        .ok_or(RepoError::NotFound("bot"))?;
    from_row(&row)
}

/// What an agent announces when it starts.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: String,
    pub ip_address: String,
    pub capacity: i32,
    pub systems: Vec<String>,
    pub tags: Vec<String>,
}

/// Creates the agent's bot, or takes over the bot of the same name (an agent
/// restarting keeps its id, its queue and its jobs).
pub async fn register_agent(
    db: &impl GenericClient,
    customer: CustomerId,
    reg: &Registration,
) -> Result<Bot, RepoError> {
    // Insert-or-keep, then lock: two agents registering one name at once
    // both end up with the same bot instead of one failing.
    execute(
        db,
        "INSERT INTO bots (id, customer_id, name, ip_address, status, delivery, capacity, systems, tags)
         VALUES ($1, $2, $3, $4, 'AVAILABLE', 'agent', $5, $6, $7)
         ON CONFLICT (customer_id, name) DO NOTHING",
        &[
            &BotId::new().0,
            &customer.0,
            &reg.name,
            &reg.ip_address,
            &reg.capacity,
            &reg.systems,
            &reg.tags,
        ],
    )
    .await?;
    let row = query_one(
        db,
        "SELECT id, delivery FROM bots WHERE customer_id = $1 AND name = $2 FOR UPDATE",
        &[&customer.0, &reg.name],
    )
    .await?;
    let id: uuid::Uuid = row.get(0);
    if parse_col::<Delivery>(row.get::<_, &str>(1))? == Delivery::Http {
        return Err(RepoError::Conflict(format!(
            "{:?} is the name of an HTTP bot; give the agent another name",
            reg.name
        )));
    }
    execute(
        db,
        "UPDATE bots SET ip_address = $2, capacity = $3, systems = $4, tags = $5, updated_at = now()
          WHERE id = $1",
        &[&id, &reg.ip_address, &reg.capacity, &reg.systems, &reg.tags],
    )
    .await?;
    heartbeat(db, customer, BotId(id)).await
}

/// Records that the bot is alive and recomputes its status from its load.
pub async fn heartbeat(
    db: &impl GenericClient,
    customer: CustomerId,
    id: BotId,
) -> Result<Bot, RepoError> {
    let bot = lock(db, customer, id).await?;
    let status = bot_transition(
        bot.status,
        BotEvent::Heartbeat {
            full: bot.is_full(),
        },
    );
    let sql = format!(
        "UPDATE bots SET last_heartbeat_at = $2, status = $3, updated_at = now()
          WHERE id = $1 RETURNING {COLUMNS}"
    );
    let row = query_one(db, &sql, &[&id.0, &now(), &status.as_str()]).await?;
    from_row(&row)
}

/// Whether any bot of the customer declares it can run `system`.
pub async fn system_known(
    db: &impl GenericClient,
    customer: CustomerId,
    system: &str,
) -> Result<bool, RepoError> {
    let row = query_one(
        db,
        "SELECT EXISTS (SELECT 1 FROM bots WHERE customer_id = $1 AND $2 = ANY(systems))",
        &[&customer.0, &system],
    )
    .await?;
    Ok(row.get(0))
}

/// Moves bots' loads by the given deltas and recomputes their statuses;
/// bots are locked in id order.
pub(crate) async fn change_loads(
    db: &impl GenericClient,
    deltas: &std::collections::HashMap<BotId, i32>,
) -> Result<(), RepoError> {
    if deltas.is_empty() {
        return Ok(());
    }
    let ids: Vec<uuid::Uuid> = deltas.keys().map(|b| b.0).collect();
    let rows = query(
        db,
        "SELECT id, status, capacity, active_jobs FROM bots WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        &[&ids],
    )
    .await?;
    let mut upd_ids = Vec::with_capacity(rows.len());
    let mut upd_active = Vec::with_capacity(rows.len());
    let mut upd_status = Vec::with_capacity(rows.len());
    for r in &rows {
        let id = BotId(r.get(0));
        let status: BotStatus = parse_col(r.get::<_, &str>(1))?;
        let capacity: i32 = r.get(2);
        let active = (r.get::<_, i32>(3) + deltas.get(&id).copied().unwrap_or(0)).max(0);
        let next = bot_transition(
            status,
            BotEvent::LoadChanged {
                full: active >= capacity,
            },
        );
        upd_ids.push(id.0);
        upd_active.push(active);
        upd_status.push(next.as_str());
    }
    execute(
        db,
        "UPDATE bots b SET active_jobs = u.active, status = u.status, updated_at = now()
           FROM unnest($1::uuid[], $2::int4[], $3::text[]) AS u(id, active, status)
          WHERE b.id = u.id",
        &[&upd_ids, &upd_active, &upd_status],
    )
    .await?;
    Ok(())
}

/// Applies a system event (e.g. `Silent`) to a bot, whoever owns it.
pub async fn apply_event(
    db: &impl GenericClient,
    id: BotId,
    event: BotEvent,
) -> Result<(), RepoError> {
    let row = query_opt(
        db,
        "SELECT status FROM bots WHERE id = $1 FOR UPDATE",
        &[&id.0],
    )
    .await?;
    let Some(row) = row else {
        return Ok(());
    };
    let status: BotStatus = parse_col(row.get::<_, &str>(0))?;
    let next = bot_transition(status, event);
    if next != status {
        execute(
            db,
            "UPDATE bots SET status = $2, updated_at = now() WHERE id = $1",
            &[&id.0, &next.as_str()],
        )
        .await?;
    }
    Ok(())
}

/// Marks agent bots silent since `before` UNAVAILABLE, in batches claimed
/// with `SKIP LOCKED` so concurrent reapers split the work. Returns the ids,
/// including bots already UNAVAILABLE that still hold jobs (marked so by a
/// failed delivery, say): the caller takes those jobs back.
pub async fn expire_silent(
    db: &impl GenericClient,
    before: OffsetDateTime,
    limit: i64,
) -> Result<Vec<BotId>, RepoError> {
    let rows = query(
        db,
        "SELECT id, status FROM bots
              WHERE delivery = 'agent' AND last_heartbeat_at < $1
                AND (status <> 'UNAVAILABLE' OR active_jobs > 0)
              ORDER BY last_heartbeat_at LIMIT $2
              FOR UPDATE SKIP LOCKED",
        &[&before, &limit],
    )
    .await?;
    mark_lost(db, &rows).await
}

/// Agent bots the reaper watches on the broker: those that may be running
/// or take work.
pub async fn watched_agents(db: &impl GenericClient) -> Result<Vec<BotId>, RepoError> {
    let rows = query(
        db,
        "SELECT id FROM bots
          WHERE delivery = 'agent' AND (status <> 'UNAVAILABLE' OR active_jobs > 0)
          ORDER BY id",
        &[],
    )
    .await?;
    Ok(rows.iter().map(|r| BotId(r.get(0))).collect())
}

/// Marks the given agent bots UNAVAILABLE (they left the broker), claimed
/// with `SKIP LOCKED` like `expire_silent`; returns those it marked or that
/// still hold jobs.
pub async fn expire_absent(
    db: &impl GenericClient,
    ids: &[BotId],
) -> Result<Vec<BotId>, RepoError> {
    let ids: Vec<uuid::Uuid> = ids.iter().map(|b| b.0).collect();
    let rows = query(
        db,
        "SELECT id, status FROM bots
              WHERE id = ANY($1) AND delivery = 'agent'
                AND (status <> 'UNAVAILABLE' OR active_jobs > 0)
              ORDER BY id
              FOR UPDATE SKIP LOCKED",
        &[&ids],
    )
    .await?;
    mark_lost(db, &rows).await
}

/// Rows of `id, status`, locked: each becomes UNAVAILABLE.
async fn mark_lost(db: &impl GenericClient, rows: &[Row]) -> Result<Vec<BotId>, RepoError> {
    let mut expired = Vec::new();
    for r in rows {
        let status: BotStatus = parse_col(r.get::<_, &str>(1))?;
        let next = bot_transition(status, BotEvent::Silent);
        execute(
            db,
            "UPDATE bots SET status = $2, updated_at = now() WHERE id = $1 AND status = $3",
            &[&r.get::<_, uuid::Uuid>(0), &next.as_str(), &status.as_str()],
        )
        .await?;
        expired.push(BotId(r.get(0)));
    }
    Ok(expired)
}
