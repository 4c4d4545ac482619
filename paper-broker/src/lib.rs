//! A WebSocket broker simulator with fault injection, for tests, demos and the backend's
//! embedded default broker. The protocol and the control API are documented in README.md.
//!
//! [`PaperBroker::start`] serves `/ws` and `/control` on one address (port 0 for tests);
//! [`PaperBroker::faults`] flips the same switches as the control API, in-process.

pub mod faults;
pub mod protocol;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use faults::{DropMode, Faults, Stall};

/// Largest frame or message accepted from a client.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// How the simulator starts.
#[derive(Clone, Debug)]
pub struct Config {
    pub bind: SocketAddr,
    /// Interval between two ticks of each subscribed symbol.
    pub tick_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            tick_interval: Duration::from_millis(250),
        }
    }
}

#[derive(Clone)]
struct AppState {
    faults: Arc<Faults>,
    shutdown: CancellationToken,
}

/// A running simulator. Dropping it stops it.
pub struct PaperBroker {
    addr: SocketAddr,
    faults: Arc<Faults>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl PaperBroker {
    /// Binds and starts serving in the background.
    pub async fn start(config: Config) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.bind).await?;
        let addr = listener.local_addr()?;
        let faults = Arc::new(Faults::new(config.tick_interval));
        let shutdown = CancellationToken::new();
        let state = AppState {
            faults: Arc::clone(&faults),
            shutdown: shutdown.clone(),
        };
        let app = Router::new()
            .route("/ws", get(upgrade))
            .with_state(state)
            .merge(faults::router(Arc::clone(&faults)));
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "paper broker server failed");
            }
        });
        tracing::info!(%addr, "paper broker listening");
        Ok(Self {
            addr,
            faults,
            shutdown,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://<addr>/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://<addr>/control`
    pub fn control_url(&self) -> String {
        format!("http://{}/control", self.addr)
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Closes every session (with a close frame) and stops listening.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for PaperBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    if state.faults.refuse_connections() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "refusing new connections (control API)",
        )
            .into_response();
    }
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| server::serve(socket, state.faults, state.shutdown))
}
