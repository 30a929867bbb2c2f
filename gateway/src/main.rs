use clap::{Parser, Subcommand};
use orq_shared::config::Settings;
use orq_shared::domain::Role;
use std::path::PathBuf;

/// Orquestra's HTTP API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML configuration file (defaults < file < ORQ_* environment).
    #[arg(long, env = "ORQ_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration, secrets redacted, and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Administration.
    #[command(subcommand)]
    Admin(Admin),
}

#[derive(Subcommand)]
enum Admin {
    /// Create a customer and print its first admin token.
    CreateCustomer { name: String },
    /// Issue a token for an existing customer.
    CreateToken {
        #[arg(long)]
        customer: String,
        /// viewer, user, admin or bot.
        #[arg(long)]
        role: Role,
    },
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
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let shutdown = orq_shared::shutdown::on_signals();
            let app = gateway::App::build(settings, shutdown).await?;
            tracing::info!(addr = %app.local_addr()?, "gateway listening");
            app.run_until_stopped().await
        }
        Command::Admin(Admin::CreateCustomer { name }) => {
            println!(
                "{}",
                gateway::admin::create_customer(&settings, &name).await?
            );
            Ok(())
        }
        Command::Admin(Admin::CreateToken { customer, role }) => {
            println!(
                "{}",
                gateway::admin::create_token(&settings, &customer, role).await?
            );
            Ok(())
        }
    }
}
