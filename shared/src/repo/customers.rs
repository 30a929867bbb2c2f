//! Customers and their access tokens.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::{RepoError, execute, parse_col, query_opt};
use crate::domain::{CustomerId, Role};
use crate::token;

#[derive(Debug, Clone)]
pub struct Principal {
    pub customer_id: CustomerId,
    pub customer: String,
    pub role: Role,
    /// Who holds the token (e.g. an e-mail), matched against a task's `acls`.
    pub name: Option<String>,
    /// The token's row: what scopes the caller's idempotency keys.
    pub token_id: Uuid,
}

pub async fn create(db: &impl GenericClient, name: &str) -> Result<CustomerId, RepoError> {
    let id = CustomerId::new();
    execute(
        db,
        "INSERT INTO customers (id, name) VALUES ($1, $2)",
        &[&id.0, &name],
    )
    .await?;
    Ok(id)
}

pub async fn find_by_name(
    db: &impl GenericClient,
    name: &str,
) -> Result<Option<CustomerId>, RepoError> {
    let row = query_opt(db, "SELECT id FROM customers WHERE name = $1", &[&name]).await?;
    Ok(row.map(|r| CustomerId(r.get(0))))
}

/// Issues a token and returns it; only its hash is stored.
pub async fn issue_token(
    db: &impl GenericClient,
    customer: CustomerId,
    role: Role,
    name: Option<&str>,
) -> Result<(Uuid, String), RepoError> {
    let token = token::generate();
    let id = Uuid::now_v7();
    execute(
        db,
        "INSERT INTO tokens (id, customer_id, role, token_hash, name) VALUES ($1, $2, $3, $4, $5)",
        &[
            &id,
            &customer.0,
            &role.as_str(),
            &token::hash(&token),
            &name,
        ],
    )
    .await?;
    Ok((id, token))
}

/// Issues a field worker's token, bound to their e-mail: it is signed (see
/// `human::WorkerTokens`), so a finish can be accepted without the
/// database, and stored like any token (hashed) so it can be revoked.
pub async fn issue_worker_token(
    db: &impl GenericClient,
    customer: CustomerId,
    email: &str,
    tokens: &crate::human::WorkerTokens,
) -> Result<(Uuid, String), RepoError> {
    let id = Uuid::now_v7();
    let token = tokens.mint(&crate::human::WorkerClaims {
        token_id: id,
        customer,
        email: email.to_string(),
    });
    execute(
        db,
        "INSERT INTO tokens (id, customer_id, role, token_hash, name) VALUES ($1, $2, 'worker', $3, $4)",
        &[&id, &customer.0, &token::hash(&token), &email],
    )
    .await?;
    Ok((id, token))
}

/// Revokes every token of a worker; returns how many there were.
pub async fn revoke_worker(
    db: &impl GenericClient,
    customer: CustomerId,
    email: &str,
) -> Result<u64, RepoError> {
    execute(
        db,
        "UPDATE tokens SET revoked_at = now()
          WHERE customer_id = $1 AND role = 'worker' AND name = $2 AND revoked_at IS NULL",
        &[&customer.0, &email],
    )
    .await
}

pub async fn authenticate(
    db: &impl GenericClient,
    presented: &str,
) -> Result<Option<Principal>, RepoError> {
    let row = query_opt(
        db,
        "SELECT t.customer_id, c.name, t.role, t.name, t.id FROM tokens t
               JOIN customers c ON c.id = t.customer_id
              WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
        &[&token::hash(presented)],
    )
    .await?;
    row.map(|r| {
        Ok(Principal {
            customer_id: CustomerId(r.get(0)),
            customer: r.get(1),
            role: parse_col(r.get::<_, &str>(2))?,
            name: r.get(3),
            token_id: r.get(4),
        })
    })
    .transpose()
}

/// Names a customer may not take: they are the first segment of other
/// routes (`/{customer}/task` sits beside `/tasks`, `/job`, ...).
pub const RESERVED_NAMES: &[&str] = &[
    "activity_manager",
    "agent",
    "api",
    "bots",
    "dashboard",
    "healthz",
    "job",
    "jobs",
    "metrics",
    "micro_task",
    "openapi.json",
    "readyz",
    "scripts",
    "static",
    "tasks",
];

/// A customer's name as it may be: it appears in URLs (`/{customer}/task`).
/// Only `CustomerName::parse` makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerName(String);

impl CustomerName {
    /// Trims `text`; refused unless it can be a path segment beside the
    /// other routes.
    pub fn parse(text: &str) -> Result<CustomerName, String> {
        let name = text.trim();
        check_name(name)?;
        Ok(CustomerName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if !valid {
        return Err(format!(
            "customer name {name:?} must be 1-100 letters, digits, '-', '_' or '.' (it is part of URLs)"
        ));
    }
    if RESERVED_NAMES.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "customer name {name:?} is reserved (it is a route)"
        ));
    }
    Ok(())
}

/// The customer of that name, for the anonymous secret-key routes.
pub async fn id_by_name(db: &impl GenericClient, name: &str) -> Result<CustomerId, RepoError> {
    find_by_name(db, name)
        .await?
        .ok_or(RepoError::NotFound("customer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_names_fit_in_urls_and_avoid_routes() {
        assert!(check_name("acme-1_x.y").is_ok());
        assert_eq!(
            CustomerName::parse(" acme ").map(|n| n.as_str().to_string()),
            Ok("acme".to_string())
        );
        assert!(check_name("tasks").is_err());
        assert!(check_name("Job").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("").is_err());
        assert!(check_name(".hidden").is_err());
    }
}
