use clap::Parser;
use orq_shared::config::ConfigArgs;

/// Orquestra's timeout reaper: expires leases whose deadline passed.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orq_shared::service::main(Cli::parse().config, async |settings, shutdown| {
        let app = timeout_reaper::App::build(settings, shutdown).await?;
        tracing::info!("timeout-reaper running");
        app.run_until_stopped().await
    })
    .await
}
