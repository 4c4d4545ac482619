//! `paper-broker --bind 127.0.0.1:9100`: the simulator as a process.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// WebSocket broker simulator with fault injection (see README.md).
#[derive(Parser)]
#[command(name = "paper-broker", version)]
struct Cli {
    /// Address for `/ws` and `/control`.
    #[arg(long, env = "PAPER_BROKER_BIND", default_value = "127.0.0.1:9100")]
    bind: SocketAddr,
    /// Milliseconds between two ticks of each subscribed symbol.
    #[arg(long, env = "PAPER_BROKER_TICK_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..))]
    tick_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = paper_broker::Config {
        bind: cli.bind,
        tick_interval: Duration::from_millis(cli.tick_ms),
    };
    let broker = match paper_broker::PaperBroker::start(config).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot listen on {} (--bind): {e}", cli.bind);
            return ExitCode::from(2);
        }
    };
    println!(
        "paper broker: {} (control: {})",
        broker.ws_url(),
        broker.control_url()
    );
    wait_for_signal().await;
    broker.stop().await;
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
