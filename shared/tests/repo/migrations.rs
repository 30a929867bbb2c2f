//! Migrating: several services starting at once against a new database.

use orq_e2e::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_apply_each_migration_once() -> anyhow::Result<()> {
    let db = TestDb::unmigrated("migrate").await?;
    let runs: Vec<_> = (0..6)
        .map(|_| {
            let s = db.settings.clone();
            tokio::spawn(async move { orq_shared::db::migrate(&s).await })
        })
        .collect();
    for r in runs {
        r.await??;
    }
    let applied: i64 = db
        .scalar("SELECT count(*) FROM refinery_schema_history")
        .await?;
    let embedded = orq_shared::db::migrations::runner().get_migrations().len() as i64;
    assert_eq!(applied, embedded);
    db.cleanup().await
}
