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

fn main() -> anyhow::Result<()> {
    // The agent starts each run through itself (`bot_agent::guard`).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == bot_agent::guard::ARG) {
        std::process::exit(bot_agent::guard::main(&args[2..]));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    orq_shared::service::main(Cli::parse().config, async |settings, shutdown| {
        let agent = bot_agent::Agent::build(settings, shutdown.clone()).await?;
        agent.run_until_stopped(shutdown).await
    })
    .await
}
