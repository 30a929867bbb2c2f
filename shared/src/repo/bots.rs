//! Bots: the proof of concept's `/bots` entity plus what matching needs.
//!
//! A bot's status and load change in one place, `apply`: every row locked in
//! id order, the next status from the pure state machine, one update guarded
//! by the status and load it was computed from, and the history
//! (`bot_events`) of every status change that is not a load flip.

use deadpool_postgres::GenericClient;
use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::{Page, RepoError, execute, parse_col, query, query_one, query_opt};
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
    /// Assignments an agent may hold beyond `capacity`, unstarted, so a
    /// freed slot starts the next job at once (0 for legacy bots).
    pub prefetch: i32,
    /// Jobs it holds: assigned (started or not) and running.
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
    /// Whether it takes no more assignments: it holds `capacity` plus
    /// `prefetch` jobs.
    pub fn is_full(&self) -> bool {
        self.active_jobs >= self.capacity + self.prefetch
    }
}

pub(crate) const COLUMNS: &str = "id, name, ip_address, port, status, delivery, capacity, \
     prefetch, active_jobs, systems, tags, draining, last_heartbeat_at, created_at, updated_at";

/// `COLUMNS` of the `b` in `UPDATE bots b … FROM …`.
const B_COLUMNS: &str = "b.id, b.name, b.ip_address, b.port, b.status, b.delivery, b.capacity, \
     b.prefetch, b.active_jobs, b.systems, b.tags, b.draining, b.last_heartbeat_at, b.created_at, b.updated_at";

pub(crate) fn from_row(r: &Row) -> Result<Bot, RepoError> {
    Ok(Bot {
        id: BotId(r.get("id")),
        name: r.get("name"),
        ip_address: r.get("ip_address"),
        port: r.get("port"),
        status: parse_col(r.get::<_, &str>("status"))?,
        delivery: parse_col(r.get::<_, &str>("delivery"))?,
        capacity: r.get("capacity"),
        prefetch: r.get("prefetch"),
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
    lock(db, customer, id).await?;
    execute(
        db,
        "UPDATE bots SET name = $3, ip_address = $4, port = $5, delivery = $6,
                capacity = $7, systems = $8, tags = $9, updated_at = now()
          WHERE id = $1 AND customer_id = $2",
        &[
            &id.0,
            &customer.0,
            &spec.name,
            &spec.ip_address,
            &spec.port,
            &spec.delivery.as_str(),
            &spec.capacity,
            &spec.systems,
            &spec.tags,
        ],
    )
    .await
    .map_err(|e| name_taken(e, &spec.name))?;
    one(apply(db, &[BotChange::new(id, BotCause::Declared(spec.status))]).await?)
}

/// The one bot `apply` changed.
fn one(bots: Vec<Bot>) -> Result<Bot, RepoError> {
    bots.into_iter().next().ok_or(RepoError::NotFound("bot"))
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
    pub prefetch: i32,
    pub systems: Vec<String>,
    pub tags: Vec<String>,
}

/// Creates the agent's bot, or takes over the bot of the same name (an agent
/// restarting keeps its id, its queue and its jobs).
/// Registers (or takes over) the agent bot named in `reg`, held from now on
/// by the token `holder` that registered it.
pub async fn register_agent(
    db: &impl GenericClient,
    customer: CustomerId,
    reg: &Registration,
    holder: uuid::Uuid,
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
        "UPDATE bots SET ip_address = $2, capacity = $3, systems = $4, tags = $5, token_id = $6,
                prefetch = $7, updated_at = now()
          WHERE id = $1",
        &[
            &id,
            &reg.ip_address,
            &reg.capacity,
            &reg.systems,
            &reg.tags,
            &holder,
            &reg.prefetch,
        ],
    )
    .await?;
    heartbeat(db, customer, BotId(id)).await
}

/// A bot by its id or, failing that, its name.
pub async fn find_by_name_or_id(
    db: &impl GenericClient,
    customer: CustomerId,
    key: &str,
) -> Result<Option<Bot>, RepoError> {
    if let Ok(id) = key.parse::<uuid::Uuid>() {
        match get(db, customer, BotId(id)).await {
            Ok(bot) => return Ok(Some(bot)),
            Err(RepoError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let sql = format!("SELECT {COLUMNS} FROM bots WHERE customer_id = $1 AND name = $2");
    query_opt(db, &sql, &[&customer.0, &key])
        .await?
        .map(|r| from_row(&r))
        .transpose()
}

/// The token that holds the bot (`None`: no token does; only admins may
/// change it).
pub async fn holder(
    db: &impl GenericClient,
    customer: CustomerId,
    id: BotId,
) -> Result<Option<uuid::Uuid>, RepoError> {
    query_opt(
        db,
        "SELECT token_id FROM bots WHERE id = $1 AND customer_id = $2",
        &[&id.0, &customer.0],
    )
    .await?
    .map(|r| r.get(0))
    .ok_or(RepoError::NotFound("bot"))
}

/// Makes `token` the one that holds the bot (the previous holder, if any,
/// no longer does).
pub async fn hold(
    db: &impl GenericClient,
    customer: CustomerId,
    id: BotId,
    token: uuid::Uuid,
) -> Result<(), RepoError> {
    let n = execute(
        db,
        "UPDATE bots SET token_id = $3, updated_at = now() WHERE id = $1 AND customer_id = $2",
        &[&id.0, &customer.0, &token],
    )
    .await?;
    if n == 0 {
        return Err(RepoError::NotFound("bot"));
    }
    Ok(())
}

/// Records that the bot is alive and recomputes its status from its load.
pub async fn heartbeat(
    db: &impl GenericClient,
    customer: CustomerId,
    id: BotId,
) -> Result<Bot, RepoError> {
    lock(db, customer, id).await?;
    one(apply(db, &[BotChange::new(id, BotCause::Heartbeat)]).await?)
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

/// A bot is lost (`why`: a delivery to it failed, it went silent, it left
/// the broker): UNAVAILABLE until heard from. Whoever owns it.
pub async fn lose(db: &impl GenericClient, id: BotId, why: &'static str) -> Result<(), RepoError> {
    apply(db, &[BotChange::new(id, BotCause::Lost(why))]).await?;
    Ok(())
}

/// What happens to a bot, for `apply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BotCause {
    /// It heartbeated or registered: alive, and heard from now.
    Heartbeat,
    /// Its load moved by `delta` jobs; `assigned` when the matcher gave it work.
    Load { delta: i32, assigned: bool },
    /// Lost, and why.
    Lost(&'static str),
    /// An admin, or a legacy bot itself, declared its status.
    Declared(BotStatus),
}

impl BotCause {
    fn describe(self) -> String {
        match self {
            BotCause::Heartbeat => "heard from".into(),
            BotCause::Load { .. } => "load".into(),
            BotCause::Lost(why) => format!("lost: {why}"),
            BotCause::Declared(s) => format!("declared {s}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BotChange {
    pub bot: BotId,
    pub cause: BotCause,
}

impl BotChange {
    pub fn new(bot: BotId, cause: BotCause) -> BotChange {
        BotChange { bot, cause }
    }
}

/// A locked bot while changes are applied to it.
struct LockedBot {
    from_status: BotStatus,
    from_active: i32,
    status: BotStatus,
    active: i32,
    /// Its capacity plus its prefetch: the load at which it is full.
    capacity: i32,
    heard: bool,
    assigned: bool,
}

/// The one write path of bots' status and load (see the module's head):
/// returns the changed bots as they are now. Unknown bots are skipped.
pub(crate) async fn apply(
    db: &impl GenericClient,
    changes: &[BotChange],
) -> Result<Vec<Bot>, RepoError> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids: Vec<uuid::Uuid> = changes.iter().map(|c| c.bot.0).collect();
    ids.sort();
    ids.dedup();
    let rows = query(
        db,
        "SELECT id, status, active_jobs, capacity + prefetch FROM bots
          WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        &[&ids],
    )
    .await?;
    let mut bots: std::collections::BTreeMap<uuid::Uuid, LockedBot> = Default::default();
    for r in &rows {
        let status: BotStatus = parse_col(r.get::<_, &str>(1))?;
        let active: i32 = r.get(2);
        bots.insert(
            r.get(0),
            LockedBot {
                from_status: status,
                from_active: active,
                status,
                active,
                capacity: r.get(3),
                heard: false,
                assigned: false,
            },
        );
    }
    let mut history: Vec<(uuid::Uuid, BotStatus, BotStatus, String)> = Vec::new();
    for c in changes {
        let Some(b) = bots.get_mut(&c.bot.0) else {
            continue;
        };
        let event = match c.cause {
            BotCause::Heartbeat => {
                b.heard = true;
                BotEvent::Heartbeat {
                    full: b.active >= b.capacity,
                }
            }
            BotCause::Load { delta, assigned } => {
                b.active = (b.active + delta).max(0);
                b.assigned |= assigned;
                BotEvent::LoadChanged {
                    full: b.active >= b.capacity,
                }
            }
            BotCause::Lost(_) => BotEvent::Silent,
            BotCause::Declared(s) => BotEvent::Declared(s),
        };
        let next = bot_transition(b.status, event);
        if next != b.status && !matches!(c.cause, BotCause::Load { .. }) {
            history.push((c.bot.0, b.status, next, c.cause.describe()));
        }
        b.status = next;
    }
    let ids: Vec<uuid::Uuid> = bots.keys().copied().collect();
    let status: Vec<&str> = bots.values().map(|b| b.status.as_str()).collect();
    let active: Vec<i32> = bots.values().map(|b| b.active).collect();
    let heard: Vec<bool> = bots.values().map(|b| b.heard).collect();
    let assigned: Vec<bool> = bots.values().map(|b| b.assigned).collect();
    let from_status: Vec<&str> = bots.values().map(|b| b.from_status.as_str()).collect();
    let from_active: Vec<i32> = bots.values().map(|b| b.from_active).collect();
    let sql = format!(
        "UPDATE bots b SET status = u.status, active_jobs = u.active,
                last_heartbeat_at = CASE WHEN u.heard THEN now() ELSE b.last_heartbeat_at END,
                last_assigned_at = CASE WHEN u.assigned THEN now() ELSE b.last_assigned_at END,
                updated_at = now()
           FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::bool[], $5::bool[], $6::text[],
                       $7::int4[]) AS u(id, status, active, heard, assigned, from_status, from_active)
          WHERE b.id = u.id AND b.status = u.from_status AND b.active_jobs = u.from_active
          RETURNING {B_COLUMNS}"
    );
    let updated = query(
        db,
        &sql,
        &[
            &ids,
            &status,
            &active,
            &heard,
            &assigned,
            &from_status,
            &from_active,
        ],
    )
    .await?;
    if updated.len() != ids.len() {
        // Impossible while the rows are locked; refuse rather than half-apply.
        return Err(RepoError::Conflict("a bot changed concurrently".into()));
    }
    if !history.is_empty() {
        let ev_ids: Vec<uuid::Uuid> = history.iter().map(|_| uuid::Uuid::now_v7()).collect();
        let bots: Vec<uuid::Uuid> = history.iter().map(|h| h.0).collect();
        let from: Vec<&str> = history.iter().map(|h| h.1.as_str()).collect();
        let to: Vec<&str> = history.iter().map(|h| h.2.as_str()).collect();
        let cause: Vec<&str> = history.iter().map(|h| h.3.as_str()).collect();
        execute(
            db,
            "INSERT INTO bot_events (id, bot_id, from_status, to_status, cause)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[])",
            &[&ev_ids, &bots, &from, &to, &cause],
        )
        .await?;
    }
    // In the order the changes named them.
    let mut by_id: std::collections::HashMap<uuid::Uuid, Bot> = updated
        .iter()
        .map(|r| from_row(r).map(|b| (b.id.0, b)))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(by_id.len());
    for c in changes {
        if let Some(b) = by_id.remove(&c.bot.0) {
            out.push(b);
        }
    }
    Ok(out)
}

/// Marks agent bots silent since `before` UNAVAILABLE — those in `present`
/// (connected to RabbitMQ now) only when silent since `present_before` —
/// in batches claimed with `SKIP LOCKED` so concurrent reapers split the
/// work. Returns the ids, including bots already UNAVAILABLE that still
/// hold jobs (marked so by a failed delivery, say): the caller takes those
/// jobs back.
pub async fn expire_silent(
    db: &impl GenericClient,
    before: OffsetDateTime,
    present: &[BotId],
    present_before: OffsetDateTime,
    limit: i64,
) -> Result<Vec<BotId>, RepoError> {
    let present: Vec<uuid::Uuid> = present.iter().map(|b| b.0).collect();
    let rows = query(
        db,
        "SELECT id, status FROM bots
              WHERE delivery = 'agent' AND last_heartbeat_at < $1
                AND (NOT id = ANY($3) OR last_heartbeat_at < $4)
                AND (status <> 'UNAVAILABLE' OR active_jobs > 0)
              ORDER BY last_heartbeat_at LIMIT $2
              FOR UPDATE SKIP LOCKED",
        &[&before, &limit, &present, &present_before],
    )
    .await?;
    mark_lost(db, &rows, "no heartbeat for the silence window").await
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
    mark_lost(db, &rows, "gone from RabbitMQ").await
}

/// Rows of `id, …`, locked: each becomes UNAVAILABLE.
async fn mark_lost(
    db: &impl GenericClient,
    rows: &[Row],
    why: &'static str,
) -> Result<Vec<BotId>, RepoError> {
    let changes: Vec<BotChange> = rows
        .iter()
        .map(|r| BotChange::new(BotId(r.get(0)), BotCause::Lost(why)))
        .collect();
    apply(db, &changes).await?;
    Ok(changes.iter().map(|c| c.bot).collect())
}
