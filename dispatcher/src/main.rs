use clap::Parser;
use orq_shared::config::ConfigArgs;

/// Orquestra's dispatcher: matches waiting jobs to bots and applies reports.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orq_shared::service::main(Cli::parse().config, async |settings, shutdown| {
        let app = dispatcher::App::build(settings, shutdown).await?;
        tracing::info!("dispatcher running");
        app.run_until_stopped().await
    })
    .await
}
