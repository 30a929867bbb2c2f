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
) -> Result<String, RepoError> {
    let token = token::generate();
    execute(
        db,
        "INSERT INTO tokens (id, customer_id, role, token_hash) VALUES ($1, $2, $3, $4)",
        &[
            &Uuid::now_v7(),
            &customer.0,
            &role.as_str(),
            &token::hash(&token),
        ],
    )
    .await?;
    Ok(token)
}

pub async fn authenticate(
    db: &impl GenericClient,
    presented: &str,
) -> Result<Option<Principal>, RepoError> {
    let row = query_opt(
        db,
        "SELECT t.customer_id, c.name, t.role FROM tokens t
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
        })
    })
    .transpose()
}
