use clap::{Parser, Subcommand};
use orq_shared::config::ConfigArgs;
use orq_shared::domain::Role;

/// Orquestra's HTTP API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
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
    /// Print the OpenAPI document (what `GET /openapi.json` serves) and exit;
    /// needs no configuration.
    Openapi,
}

#[derive(Subcommand)]
enum Admin {
    /// Create a customer and print its first admin token.
    CreateCustomer { name: String },
    /// Issue a token for an existing customer.
    CreateToken {
        #[arg(long)]
        customer: String,
        /// viewer, user, admin, bot or worker (a field worker: --name is
        /// their e-mail).
        #[arg(long)]
        role: Role,
        /// Who holds it (e.g. an e-mail): a task whose `acls` list names
        /// shows only to those names (and to admins).
        #[arg(long)]
        name: Option<String>,
        /// With --role bot: the bot (name or id) this token holds. It may
        /// then set that bot's status, and nothing else of it; a bot token
        /// without --bot may not change any bot (an agent's holds the bot
        /// it registers).
        #[arg(long)]
        bot: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::Openapi)) {
        println!("{}", gateway::openapi::document_json()?);
        return Ok(());
    }
    let Some(settings) = cli.config.load()? else {
        return Ok(());
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let shutdown = orq_shared::shutdown::on_signals();
            let app = gateway::App::build(settings, shutdown).await?;
            // Its own target, so a quiet log level can still show where it listens
            // (the test harness reads the port it was given from this line).
            tracing::info!(target: "gateway::listening", addr = %app.local_addr()?, "gateway listening");
            app.run_until_stopped().await
        }
        Command::Openapi => Ok(()),
        Command::Admin(Admin::CreateCustomer { name }) => {
            println!(
                "{}",
                gateway::admin::create_customer(&settings, &name).await?
            );
            Ok(())
        }
        Command::Admin(Admin::CreateToken {
            customer,
            role,
            name,
            bot,
        }) => {
            println!(
                "{}",
                gateway::admin::create_token(
                    &settings,
                    &customer,
                    role,
                    name.as_deref(),
                    bot.as_deref()
                )
                .await?
            );
            Ok(())
        }
    }
}
