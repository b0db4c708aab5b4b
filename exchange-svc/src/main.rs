//! `meshpass-exchange`: the token-exchange service and its admin commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meshpass_exchange::config::{Config, LogFormat};
use meshpass_exchange::server::ServeError;

// Every request allocates (hyper's buffers, the form, claims, JSON): with the C
// library's malloc that was 14 % of a true-cold exchange's CPU under `perf` on glibc
// (bench/notes.md), and the OCI image links musl's, slower still.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "meshpass-exchange",
    version,
    about = "RFC 8693 token exchange minting Vault-signed participant tokens"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the service.
    Serve {
        /// TOML configuration file (every key can be overridden by MESHPASS__SECTION__KEY).
        #[arg(long, short = 'c', env = "MESHPASS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Loads and validates a configuration file, then exits (0: valid).
    CheckConfig {
        /// TOML configuration file.
        file: PathBuf,
    },
}

const SQLX_PG_OPTIONS: &str = "sqlx_postgres::options=error";

fn init_logging(cfg: &Config) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // sqlx-postgres logs a malformed `.pgpass` line whole (the password in it) and any
    // URL parameter it ignores with its value, at WARN: never shown.
    if let Ok(quiet) = SQLX_PG_OPTIONS.parse() {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match cfg.log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(Some(&file)) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: invalid configuration: {e}", file.display());
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(meshpass_exchange::server::serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "meshpass-exchange stopped");
                    // 2, as for a file that does not parse: the configuration is at fault.
                    match e {
                        ServeError::Config(_) | ServeError::Seed(_) => ExitCode::from(2),
                        _ => ExitCode::FAILURE,
                    }
                }
            }
        }
    }
}
