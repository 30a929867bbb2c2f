use clap::Parser;
use orq_shared::config::ConfigArgs;

/// Orquestra's bot agent: runs the work sent to this bot. The configuration
/// file's `[agent.systems]` table maps system names to automation argv.
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
    let agent = bot_agent::Agent::build(settings, shutdown.clone()).await?;
    agent.run_until_stopped(shutdown).await
}
