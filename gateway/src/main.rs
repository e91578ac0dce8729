//! `eagate`: parses the command line and starts things; the work is in the
//! library.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use eagate_gateway::cli::{self, ApiArgs, DeviceCommand, PayoutsCommand, SignalCommand};
use eagate_gateway::config::ServeConfig;
use eagate_gateway::http::tokens::{Scope, create_token};
use eagate_gateway::server::{Gateway, Role};
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
    /// Run everything in one process: devices and the HTTP sidecar, on the
    /// embedded store (no other service needed), or on Redis with
    /// --redis-url.
    Serve(ServeConfig),
    /// Serve devices only, as one of several gateways sharing a Redis
    /// (--redis-url required).
    Gateway(ServeConfig),
    /// Serve the HTTP sidecar only, beside gateways sharing a Redis
    /// (--redis-url required).
    Sidecar(ServeConfig),
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
    /// Affiliate payouts, through a running sidecar.
    Payouts {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: PayoutsCommand,
    },
    /// The affiliate ledger's audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the affiliate ledger's hash chain and name the first entry
    /// altered, removed or reordered (exit status 1 then). Run it while the
    /// sidecar is stopped (it holds the ledger), or read GET /v1/audit.
    Verify {
        /// The gateway's data directory.
        #[arg(long, env = "EAGATE_DATA_DIR", default_value = "eagate-data")]
        data_dir: std::path::PathBuf,
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
            .with_writer(std::io::stderr)
            .init();
    } else {
        // Logs on stderr: stdout carries the addresses and fingerprint,
        // which scripts and supervisors read.
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
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
        Command::Serve(config) => serve(config, &matches, "serve", Role::All),
        Command::Gateway(config) => serve(config, &matches, "gateway", Role::Devices),
        Command::Sidecar(config) => serve(config, &matches, "sidecar", Role::Sidecar),
        Command::Device { api, command } => run_client(cli::device(&api, command)),
        Command::Signal { api, command } => run_client(cli::signal(&api, command)),
        Command::Payouts { api, command } => run_client(cli::payouts(&api, command)),
        Command::Audit {
            command: AuditCommand::Verify { data_dir },
        } => {
            let ledger = data_dir.join(eagate_gateway::affiliates::LEDGER_DIR);
            if !ledger.exists() {
                anyhow::bail!("no affiliate ledger at {}", ledger.display());
            }
            let report = eagate_affiliates::verify_journal(&ledger)
                .map_err(|e| anyhow::anyhow!("{e} (is the sidecar still running?)"))?;
            if !report.started {
                println!(
                    "audit trail not started: the ledger's {} entries were written before it; the sidecar chains them when it next starts",
                    report.entries
                );
                return Ok(());
            }
            match report.problem {
                None => {
                    println!(
                        "audit trail holds: {} entries, head {}",
                        report.entries, report.head
                    );
                    Ok(())
                }
                Some(problem) => {
                    println!("audit trail broken: {problem}");
                    std::process::exit(1);
                }
            }
        }
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

fn serve(
    config: ServeConfig,
    matches: &clap::ArgMatches,
    command: &str,
    role: Role,
) -> anyhow::Result<()> {
    let own = matches
        .subcommand_matches(command)
        .expect("the command was parsed");
    let config = config.with_file(own)?;
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut stop = StopSignals::listen()?;
        // A stop asked for while starting (a Redis slow to answer) is
        // honoured at once.
        let gateway = tokio::select! {
            started = Gateway::start_as(&config, role) => started?,
            () = stop.received() => {
                tracing::info!("stopped while starting");
                return Ok(());
            }
        };
        println!("eagate {command}");
        println!("  data directory:   {}", config.data_dir.display());
        match &config.redis_url {
            Some(_) => println!(
                "  store:            Redis, key prefix {}",
                config.redis_prefix
            ),
            None => println!("  store:            embedded (sled)"),
        }
        if let Some(addr) = gateway.quic_addr() {
            let endpoints = gateway.connections_per_endpoint().len();
            let shared = if endpoints > 1 {
                format!(", {endpoints} endpoints sharing the port")
            } else {
                String::new()
            };
            println!("  QUIC (devices):   {addr} (ALPN eagate/1{shared})");
        }
        if let Some(buffers) = gateway.socket_buffers() {
            println!(
                "  UDP buffers:      receive {} KiB, send {} KiB (as the kernel granted)",
                buffers.receive / 1024,
                buffers.send / 1024
            );
        }
        if let Some(addr) = gateway.device_https_addr() {
            println!("  HTTPS (devices):  https://{addr} (signed requests, for EAs without a DLL)");
        }
        if let Some(addr) = gateway.http_addr() {
            println!("  HTTP (admin API): http://{addr}");
        }
        if let Some(fingerprint) = gateway.fingerprint() {
            println!("  TLS fingerprint:  SHA256 {fingerprint}");
            println!("Pin this fingerprint in your EAs and bots.");
        }
        println!("Ctrl-C stops it.");
        stop.received().await;
        tracing::info!("shutting down");
        gateway.shutdown().await;
        Ok(())
    })
}

/// SIGINT and SIGTERM, listened for from creation: made before the
/// readiness lines are printed, so a supervisor that signals as soon as it
/// reads them still gets a graceful stop.
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn received(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Raises the soft limit on open files to the hard one, as far as the
/// system lets a process: every HTTP connection holds a descriptor, and
/// the soft limit most shells and service managers set (1024) is soon
/// reached by a few hundred slow clients, after which the store cannot
/// reconnect either. The sidecar's own bounds (`--max-http-connections`)
/// keep well below what is raised to.
fn raise_open_files_limit() {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        // No hard limit (macOS says so): as many as a process is usually
        // let open there.
        let hard = limit.maximum.unwrap_or(10_240);
        if limit.current.is_some_and(|soft| soft < hard) {
            let raised = rustix::process::Rlimit {
                current: Some(hard),
                maximum: limit.maximum,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => {
                    tracing::debug!(from = ?limit.current, to = hard, "raised the open files limit")
                }
                Err(e) => {
                    tracing::warn!(error = %e, soft = ?limit.current, "could not raise the open files limit")
                }
            }
        }
    }
}
