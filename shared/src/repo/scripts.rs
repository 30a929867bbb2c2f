//! Scripts: the files task definitions run, per customer, addressed by id
//! and identified by the SHA-256 of their content (agents cache by it).

use base64::Engine;
use deadpool_postgres::GenericClient;
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::{Page, RepoError, execute, query, query_one, query_opt};
use crate::domain::{CustomerId, ScriptId};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq)]
pub struct Script {
    pub id: ScriptId,
    pub name: String,
    pub filename: String,
    pub description: String,
    pub checksum: String,
    pub size: i64,
    /// The content as text when it is UTF-8 (only on single reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The content in base64 when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

const COLUMNS: &str = "id, name, filename, description, checksum, octet_length(content)::int8 AS size, created_at, updated_at";

fn from_row(r: &Row) -> Script {
    Script {
        id: ScriptId(r.get("id")),
        name: r.get("name"),
        filename: r.get("filename"),
        description: r.get("description"),
        checksum: r.get("checksum"),
        size: r.get("size"),
        content: None,
        content_base64: None,
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

pub fn checksum(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

/// A script as an admin writes it.
#[derive(Debug, Clone)]
pub struct ScriptSpec {
    pub name: String,
    pub filename: String,
    pub description: String,
    pub content: Vec<u8>,
}

fn name_taken(e: RepoError, name: &str) -> RepoError {
    if e.is_unique_violation() {
        RepoError::Conflict(format!("a script named {name:?} already exists"))
    } else {
        e
    }
}

pub async fn insert(
    db: &impl GenericClient,
    customer: CustomerId,
    spec: &ScriptSpec,
) -> Result<Script, RepoError> {
    let sql = format!(
        "INSERT INTO scripts (id, customer_id, name, filename, description, content, checksum)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    );
    let row = query_one(
        db,
        &sql,
        &[
            &ScriptId::new().0,
            &customer.0,
            &spec.name,
            &spec.filename,
            &spec.description,
            &spec.content,
            &checksum(&spec.content),
        ],
    )
    .await
    .map_err(|e| name_taken(e, &spec.name))?;
    Ok(from_row(&row))
}

pub async fn update(
    db: &impl GenericClient,
    customer: CustomerId,
    id: ScriptId,
    spec: &ScriptSpec,
) -> Result<Script, RepoError> {
    let sql = format!(
        "UPDATE scripts SET name = $3, filename = $4, description = $5, content = $6,
                checksum = $7, updated_at = now()
          WHERE id = $1 AND customer_id = $2 RETURNING {COLUMNS}"
    );
    let row = query_opt(
        db,
        &sql,
        &[
            &id.0,
            &customer.0,
            &spec.name,
            &spec.filename,
            &spec.description,
            &spec.content,
            &checksum(&spec.content),
        ],
    )
    .await
    .map_err(|e| name_taken(e, &spec.name))?
    .ok_or(RepoError::NotFound("script"))?;
    Ok(from_row(&row))
}

/// One script, with its content.
pub async fn get(
    db: &impl GenericClient,
    customer: CustomerId,
    id: ScriptId,
) -> Result<Script, RepoError> {
    let (script, content) = get_raw(db, customer, id).await?;
    let (text, b64) = match String::from_utf8(content) {
        Ok(text) => (Some(text), None),
        Err(e) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
        ),
    };
    Ok(Script {
        content: text,
        content_base64: b64,
        ..script
    })
}

/// One script and its raw bytes.
pub async fn get_raw(
    db: &impl GenericClient,
    customer: CustomerId,
    id: ScriptId,
) -> Result<(Script, Vec<u8>), RepoError> {
    let sql = format!("SELECT {COLUMNS}, content FROM scripts WHERE id = $1 AND customer_id = $2");
    let row = query_opt(db, &sql, &[&id.0, &customer.0])
        .await?
        .ok_or(RepoError::NotFound("script"))?;
    Ok((from_row(&row), row.get("content")))
}

pub async fn list(
    db: &impl GenericClient,
    customer: CustomerId,
    page: Page,
) -> Result<Vec<Script>, RepoError> {
    let (cmp, dir) = page.order_sql();
    let sql = format!(
        "SELECT {COLUMNS} FROM scripts
          WHERE customer_id = $1 AND ($2::uuid IS NULL OR id {cmp} $2)
          ORDER BY id {dir} LIMIT $3"
    );
    let rows = query(db, &sql, &[&customer.0, &page.after, &page.limit]).await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Deletes a script no task runs.
pub async fn delete(
    db: &impl GenericClient,
    customer: CustomerId,
    id: ScriptId,
) -> Result<(), RepoError> {
    let used = query_one(
        db,
        "SELECT count(*) FROM task_defs WHERE script_id = $1 AND customer_id = $2",
        &[&id.0, &customer.0],
    )
    .await?
    .get::<_, i64>(0);
    if used > 0 {
        return Err(RepoError::Conflict(format!(
            "{used} task(s) run this script; change or delete them first"
        )));
    }
    let n = execute(
        db,
        "DELETE FROM scripts WHERE id = $1 AND customer_id = $2",
        &[&id.0, &customer.0],
    )
    .await?;
    if n == 0 {
        return Err(RepoError::NotFound("script"));
    }
    Ok(())
}

/// The id and checksum of the customer's script of that name.
pub async fn find_by_name(
    db: &impl GenericClient,
    customer: CustomerId,
    name: &str,
) -> Result<Option<(ScriptId, String)>, RepoError> {
    let row = query_opt(
        db,
        "SELECT id, checksum FROM scripts WHERE customer_id = $1 AND name = $2",
        &[&customer.0, &name],
    )
    .await?;
    Ok(row.map(|r| (ScriptId(r.get(0)), r.get(1))))
}
