//! `eagate`: parses the command line and starts things; the work is in the
//! library.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use eagate_gateway::cli::{self, ApiArgs, DeviceCommand, SignalCommand};
use eagate_gateway::config::ServeConfig;
use eagate_gateway::http::tokens::{Scope, create_token};
use eagate_gateway::server::Gateway;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "eagate",
    version,
    about = "Gateway between MetaTrader EAs, trading bots and a signal platform"
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "EAGATE_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway on the embedded store (no other service needed).
    Serve(ServeConfig),
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Devices, through a running gateway's sidecar.
    Device {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Signals, through a running gateway's sidecar.
    Signal {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: SignalCommand,
    },
    /// API bearer tokens for the HTTP sidecar.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token, print it once, and keep only its hash. Works while
    /// the gateway runs; it picks the token up at once.
    Create {
        /// What the token may do.
        #[arg(long, value_enum)]
        scope: Scope,
        /// The gateway's data directory.
        #[arg(long, env = "EAGATE_DATA_DIR", default_value = "eagate-data")]
        data_dir: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration, secrets masked.
    Show(ServeConfig),
}

fn main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    let filter = EnvFilter::try_from_env("EAGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if cli.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    match cli.command {
        Command::Config {
            command: ConfigCommand::Show(config),
        } => {
            let show = matches
                .subcommand_matches("config")
                .and_then(|m| m.subcommand_matches("show"))
                .expect("config show was parsed");
            print!("{}", config.with_file(show)?.show());
            Ok(())
        }
        Command::Serve(config) => {
            let serve_matches = matches
                .subcommand_matches("serve")
                .expect("serve was parsed");
            serve(config.with_file(serve_matches)?)
        }
        Command::Device { api, command } => run_client(cli::device(&api, command)),
        Command::Signal { api, command } => run_client(cli::signal(&api, command)),
        Command::Token {
            command: TokenCommand::Create { scope, data_dir },
        } => {
            let token = create_token(&data_dir, scope)?;
            println!("{}", token.as_str());
            eprintln!(
                "This token is shown once; only its hash is kept. Send it as: Authorization: Bearer <token>"
            );
            Ok(())
        }
    }
}

fn run_client(result: Result<String, cli::CliError>) -> anyhow::Result<()> {
    match result {
        Ok(output) => {
            print!("{output}");
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let gateway = Gateway::start(&config).await?;
        println!("eagate gateway");
        println!("  data directory:   {}", config.data_dir.display());
        println!(
            "  QUIC (devices):   {} (ALPN eagate/1)",
            gateway.quic_addr()
        );
        println!("  HTTP (admin API): http://{}", gateway.http_addr());
        println!("  TLS fingerprint:  SHA256 {}", gateway.fingerprint());
        println!("Pin this fingerprint in your EAs and bots. Ctrl-C stops the gateway.");
        shutdown_signal().await;
        tracing::info!("shutting down");
        gateway.shutdown().await;
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
