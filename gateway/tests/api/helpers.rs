//! `spawn_app`: a gateway in this process, on its own database and prefix.

use orq_e2e::{Api, Env, client_with};
use orq_shared::CancellationToken;
use orq_shared::config::Settings;
use orq_shared::domain::{CustomerId, Role};
use orq_shared::repo::customers;
use serde_json::Value;

pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub customer: String,
    pub admin_token: String,
    env: Env,
    shutdown: CancellationToken,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The gateway's database, migrated by `App::build`: customers and
    /// tokens are made through the repository (the admin commands would
    /// migrate and open a pool each time).
    pool: deadpool_postgres::Pool,
    customer_id: CustomerId,
}

/// A gateway with the default settings.
pub async fn spawn_app(label: &str) -> anyhow::Result<TestApp> {
    spawn_app_with(label, |_| {}).await
}

/// A gateway whose settings `adjust` changes first (limits, deny lists).
pub async fn spawn_app_with(
    label: &str,
    adjust: impl FnOnce(&mut Settings),
) -> anyhow::Result<TestApp> {
    let env = Env::bare(label).await?;
    let mut settings = env.settings()?;
    settings.gateway.listen = "127.0.0.1:0".into();
    // `stop` need not wait for the test's clients: their idle keep-alive
    // connections would otherwise hold it for the whole budget (5 s).
    settings.gateway.shutdown_grace_ms = 200;
    adjust(&mut settings);
    let shutdown = CancellationToken::new();
    let app = gateway::App::build(settings.clone(), shutdown.clone()).await?;
    let url = format!("http://{}", app.local_addr()?);
    let served = tokio::spawn(app.run_until_stopped());
    // As a started binary is: ready (its broker connected) before a test
    // talks to it; what needs RabbitMQ would answer 503 until then.
    orq_e2e::eventually(
        std::time::Duration::from_secs(30),
        "the gateway ready",
        || async {
            let ready = reqwest::get(format!("{url}/readyz")).await;
            Ok(ready.is_ok_and(|r| r.status().is_success()).then_some(()))
        },
    )
    .await?;
    let pool = orq_shared::db::pool(&settings.database)?;
    let customer = env.customer.clone();
    let (customer_id, admin_token) = new_customer(&pool, &customer).await?;
    Ok(TestApp {
        url,
        customer,
        admin_token,
        env,
        shutdown,
        served,
        pool,
        customer_id,
    })
}

/// A customer named `name` and its admin's token.
async fn new_customer(
    pool: &deadpool_postgres::Pool,
    name: &str,
) -> anyhow::Result<(CustomerId, String)> {
    let db = pool.get().await?;
    let id = customers::create(&db, name).await?;
    let (_, token) = customers::issue_token(&db, id, Role::Admin, None).await?;
    Ok((id, token))
}

impl TestApp {
    /// A client sending the admin token.
    pub fn admin(&self) -> reqwest::Client {
        client_with(&self.admin_token)
    }

    /// The customer's calls (TheEye, human tasks) as its admin.
    pub fn api(&self) -> Api {
        Api::new(&self.url, &self.customer, &self.admin_token)
    }

    /// A new token of `role` for the customer (as `gateway admin
    /// create-token` makes it).
    pub async fn token(&self, role: Role) -> anyhow::Result<String> {
        self.issue(role, None).await
    }

    /// A new token of `role` with a name (a viewer's e-mail, for `acls`).
    pub async fn token_named(&self, role: Role, name: &str) -> anyhow::Result<String> {
        self.issue(role, Some(name)).await
    }

    async fn issue(&self, role: Role, name: Option<&str>) -> anyhow::Result<String> {
        let db = self.pool.get().await?;
        let (_, token) = customers::issue_token(&db, self.customer_id, role, name).await?;
        Ok(token)
    }

    /// Another customer of the same deployment, named after this one
    /// with `suffix`; its name and its admin's token.
    pub async fn other_customer(&self, suffix: &str) -> anyhow::Result<(String, String)> {
        let name = format!("{}{suffix}", self.customer);
        let (_, token) = new_customer(&self.pool, &name).await?;
        Ok((name, token))
    }

    /// A connection to the gateway's database.
    pub async fn db(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.env.db().await
    }

    /// The count `sql` (one row, one `int8` column) returns.
    pub async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        Ok(self.pool.get().await?.query_one(sql, &[]).await?.get(0))
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// `POST path body` as admin, which must answer 201: the id made.
    pub async fn create(&self, path: &str, body: &Value) -> anyhow::Result<String> {
        let r = self.admin().post(self.at(path)).json(body).send().await?;
        let status = r.status();
        let v: Value = r.json().await?;
        anyhow::ensure!(status == 201, "POST {path}: {status} {v}");
        Ok(v["id"].as_str().unwrap_or_default().to_string())
    }

    /// Stops the gateway and removes the database and queues.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.pool.close();
        self.shutdown.cancel();
        self.served.await??;
        self.env.cleanup().await
    }
}

/// `(status, error code, details.field)` of a request.
pub async fn answer(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, String, String)> {
    let r = request.send().await?;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    Ok((
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        body["error"]["details"]["field"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ))
}
