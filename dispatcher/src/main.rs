use clap::Parser;
use orq_shared::config::Settings;
use std::path::PathBuf;

/// Orquestra's dispatcher: matches waiting jobs to bots and applies reports.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML configuration file (defaults < file < ORQ_* environment).
    #[arg(long, env = "ORQ_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration, secrets redacted, and exit.
    #[arg(long)]
    print_config: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    if cli.print_config {
        println!("{}", settings.redacted_json());
        return Ok(());
    }
    orq_shared::telemetry::init(&settings.log);
    let shutdown = orq_shared::shutdown::on_signals();
    let app = dispatcher::App::build(settings, shutdown).await?;
    tracing::info!("dispatcher running");
    app.run_until_stopped().await
}
