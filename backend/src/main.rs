//! The `backend` command: `serve` (the default), `healthcheck` and `migrate`.
//! Parses the CLI, sets up logging, and hands the validated config to the library.

use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use backend::Application;
use backend::config::{Config, LogFormat, parse_duration};
use backend::db::Database;
use backend::db::migrations::Migrations;
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Trading backend: health checks and monitoring.
///
/// Every setting can be given as a flag before the command or as the environment variable
/// shown beside it.
#[derive(Parser)]
#[command(name = "backend", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Probe a running instance over HTTP; exit 0 when it answers 2xx, 1 otherwise.
    Healthcheck {
        /// Path to probe.
        #[arg(long, default_value = "/health/live")]
        path: String,
        /// Address to probe (default: BIND_ADDR, with a wildcard host replaced by loopback).
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Give up after this long.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Apply the embedded database migrations and exit.
    Migrate,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line naming the setting and the problem.
            let text = e.render().to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
                .collect();
            eprintln!("{}", line.join(" "));
            return ExitCode::from(2);
        }
    };
    let config = cli.config;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Healthcheck {
            path,
            addr,
            timeout,
        } => {
            let addr = addr.unwrap_or_else(|| loopback_for(config.bind_addr));
            run_async(healthcheck(addr, path, timeout))
        }
        Command::Serve => {
            if let Err(e) = config.validate() {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            init_tracing(config.log_format);
            run_async(serve(config))
        }
        Command::Migrate => {
            if let Err(e) = config.validate() {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            init_tracing(config.log_format);
            run_async(migrate(config))
        }
    }
}

fn run_async(work: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(work),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn serve(config: Config) -> ExitCode {
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let handle = app.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: shutting down gracefully (send it again to stop at once)");
        handle.trigger();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without waiting");
        std::process::exit(1);
    });
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "service failed");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; only Ctrl-C will stop the service");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn migrate(config: Config) -> ExitCode {
    let errors = backend::core::metrics::Errors::default();
    let db = match Database::connect_lazy(
        &config.database_url,
        1,
        config.database_acquire_timeout,
        errors,
    ) {
        Ok(db) => db,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot migrate");
            return ExitCode::FAILURE;
        }
    };
    match Migrations::embedded()
        .run_once(&db, config.database_acquire_timeout)
        .await
    {
        Ok(()) => {
            tracing::info!(database = db.display_url(), "database migrations applied");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %backend::core::redact::redact_text(&format!("{e:#}")), "applying database migrations failed");
            ExitCode::FAILURE
        }
    }
}

/// The address to probe for a listener bound to `bind`: a wildcard host becomes loopback.
fn loopback_for(bind: SocketAddr) -> SocketAddr {
    match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), bind.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), bind.port())
        }
        _ => bind,
    }
}

/// A minimal HTTP/1.1 GET: enough for a container HEALTHCHECK without curl.
async fn healthcheck(addr: SocketAddr, path: String, timeout: Duration) -> ExitCode {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: backend-healthcheck\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..n]).into_owned())
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(head)) => {
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            println!("GET http://{addr}{path} -> {status}");
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Ok(Err(e)) => {
            println!("GET http://{addr}{path} failed: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            println!(
                "GET http://{addr}{path} timed out after {}ms",
                timeout.as_millis()
            );
            ExitCode::FAILURE
        }
    }
}
