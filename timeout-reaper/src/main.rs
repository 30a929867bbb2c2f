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
    let Some(settings) = Cli::parse().config.load()? else {
        return Ok(());
    };
    let shutdown = orq_shared::shutdown::on_signals();
    let app = timeout_reaper::App::build(settings, shutdown).await?;
    tracing::info!("timeout-reaper running");
    app.run_until_stopped().await
}
