//! Fault injection: the switches every connection consults, and the `/control` HTTP API
//! that flips them at run time. All switches are atomics (or a lock held briefly).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::protocol::REJECT_REASONS;

/// How to drop every open connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropMode {
    /// Send a close frame, then close.
    Close,
    /// Close the TCP connection without a close frame.
    Abrupt,
}

/// What the server keeps sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stall {
    /// Normal.
    None,
    /// No application messages (ticks, replies), but pings are still answered.
    Data,
    /// Nothing at all: not even pongs; the connection stays open.
    All,
}

/// The fault switches, shared by the control API and every connection.
pub struct Faults {
    stall: AtomicU8,
    malformed_every: AtomicU64,
    delay_ms: AtomicU64,
    reject_next: AtomicU64,
    reject_reason: Mutex<String>,
    refuse_auth: AtomicBool,
    refuse_connections: AtomicBool,
    tick_interval_ms: AtomicU64,
    drops: broadcast::Sender<DropMode>,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Orders received since start.
    pub orders_received: AtomicU64,
    /// Sessions the client ended with a close frame.
    pub clean_closes: AtomicU64,
}

impl Faults {
    pub fn new(tick_interval: Duration) -> Self {
        let (drops, _) = broadcast::channel(16);
        Self {
            stall: AtomicU8::new(0),
            malformed_every: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            reject_next: AtomicU64::new(0),
            reject_reason: Mutex::new(REJECT_REASONS[0].to_owned()),
            refuse_auth: AtomicBool::new(false),
            refuse_connections: AtomicBool::new(false),
            tick_interval_ms: AtomicU64::new(tick_interval.as_millis().max(1) as u64),
            drops,
            connections_total: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            orders_received: AtomicU64::new(0),
            clean_closes: AtomicU64::new(0),
        }
    }

    /// Drops every open connection.
    pub fn drop_connections(&self, mode: DropMode) {
        let _ = self.drops.send(mode);
    }

    pub fn subscribe_drops(&self) -> broadcast::Receiver<DropMode> {
        self.drops.subscribe()
    }

    pub fn set_stall(&self, stall: Stall) {
        let v = match stall {
            Stall::None => 0,
            Stall::Data => 1,
            Stall::All => 2,
        };
        self.stall.store(v, Ordering::Release);
    }

    pub fn stall(&self) -> Stall {
        match self.stall.load(Ordering::Acquire) {
            1 => Stall::Data,
            2 => Stall::All,
            _ => Stall::None,
        }
    }

    /// Every `n`th outgoing message is replaced by a malformed or unknown frame (0: off).
    pub fn set_malformed_every(&self, n: u64) {
        self.malformed_every.store(n, Ordering::Release);
    }

    pub fn malformed_every(&self) -> u64 {
        self.malformed_every.load(Ordering::Acquire)
    }

    /// Delays every outgoing message.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Release);
    }

    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::Acquire))
    }

    /// Rejects the next `count` orders with `reason` (one of [`REJECT_REASONS`]).
    pub fn reject_next(&self, count: u64, reason: &str) -> Result<(), String> {
        if !REJECT_REASONS.contains(&reason) {
            return Err(format!(
                "unknown reason {reason:?}; one of {REJECT_REASONS:?}"
            ));
        }
        if let Ok(mut r) = self.reject_reason.lock() {
            *r = reason.to_owned();
        }
        self.reject_next.store(count, Ordering::Release);
        Ok(())
    }

    /// Takes one pending rejection, if any: the reason to reject this order with.
    pub fn take_rejection(&self) -> Option<String> {
        self.reject_next
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .ok()
            .map(|_| {
                self.reject_reason
                    .lock()
                    .map(|r| r.clone())
                    .unwrap_or_default()
            })
    }

    pub fn set_refuse_auth(&self, refuse: bool) {
        self.refuse_auth.store(refuse, Ordering::Release);
    }

    pub fn refuse_auth(&self) -> bool {
        self.refuse_auth.load(Ordering::Acquire)
    }

    pub fn set_refuse_connections(&self, refuse: bool) {
        self.refuse_connections.store(refuse, Ordering::Release);
    }

    pub fn refuse_connections(&self) -> bool {
        self.refuse_connections.load(Ordering::Acquire)
    }

    pub fn set_tick_interval(&self, interval: Duration) {
        self.tick_interval_ms
            .store(interval.as_millis().max(1) as u64, Ordering::Release);
    }

    pub fn tick_interval(&self) -> Duration {
        Duration::from_millis(self.tick_interval_ms.load(Ordering::Acquire))
    }

    /// Turns every fault off.
    pub fn reset(&self) {
        self.set_stall(Stall::None);
        self.set_malformed_every(0);
        self.set_delay(Duration::ZERO);
        self.reject_next.store(0, Ordering::Release);
        self.set_refuse_auth(false);
        self.set_refuse_connections(false);
    }

    fn state(&self) -> Value {
        json!({
            "stall": self.stall(),
            "malformedEvery": self.malformed_every(),
            "delayMs": self.delay().as_millis() as u64,
            "rejectNext": self.reject_next.load(Ordering::Acquire),
            "refuseAuth": self.refuse_auth(),
            "refuseConnections": self.refuse_connections(),
            "tickIntervalMs": self.tick_interval().as_millis() as u64,
            "connectionsTotal": self.connections_total.load(Ordering::Relaxed),
            "connectionsOpen": self.connections_open.load(Ordering::Relaxed),
            "ordersReceived": self.orders_received.load(Ordering::Relaxed),
            "cleanCloses": self.clean_closes.load(Ordering::Relaxed),
        })
    }
}

type Shared = std::sync::Arc<Faults>;

/// The `/control` routes.
pub fn router(faults: Shared) -> Router {
    Router::new()
        .route(
            "/control/state",
            get(|State(f): State<Shared>| async move { Json(f.state()) }),
        )
        .route(
            "/control/reset",
            post(|State(f): State<Shared>| async move {
                f.reset();
                Json(f.state())
            }),
        )
        .route("/control/drop", post(drop_connections))
        .route("/control/stall", post(stall))
        .route("/control/malformed", post(malformed))
        .route("/control/delay", post(delay))
        .route("/control/reject", post(reject))
        .route("/control/auth", post(auth))
        .route("/control/connections", post(connections))
        .route("/control/ticks", post(ticks))
        .with_state(faults)
}

#[derive(Deserialize)]
struct ModeBody<T> {
    mode: T,
}

#[derive(Deserialize)]
struct RefuseBody {
    refuse: bool,
}

async fn drop_connections(
    State(f): State<Shared>,
    Json(b): Json<ModeBody<DropMode>>,
) -> Json<Value> {
    f.drop_connections(b.mode);
    Json(f.state())
}

async fn stall(State(f): State<Shared>, Json(b): Json<ModeBody<Stall>>) -> Json<Value> {
    f.set_stall(b.mode);
    Json(f.state())
}

#[derive(Deserialize)]
struct EveryBody {
    every: u64,
}

async fn malformed(State(f): State<Shared>, Json(b): Json<EveryBody>) -> Json<Value> {
    f.set_malformed_every(b.every);
    Json(f.state())
}

#[derive(Deserialize)]
struct DelayBody {
    ms: u64,
}

async fn delay(State(f): State<Shared>, Json(b): Json<DelayBody>) -> Json<Value> {
    f.set_delay(Duration::from_millis(b.ms));
    Json(f.state())
}

#[derive(Deserialize)]
struct RejectBody {
    count: u64,
    reason: String,
}

async fn reject(
    State(f): State<Shared>,
    Json(b): Json<RejectBody>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    f.reject_next(b.count, &b.reason).map_err(|e| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": e })),
        )
    })?;
    Ok(Json(f.state()))
}

async fn auth(State(f): State<Shared>, Json(b): Json<RefuseBody>) -> Json<Value> {
    f.set_refuse_auth(b.refuse);
    Json(f.state())
}

async fn connections(State(f): State<Shared>, Json(b): Json<RefuseBody>) -> Json<Value> {
    f.set_refuse_connections(b.refuse);
    Json(f.state())
}

#[derive(Deserialize)]
struct TicksBody {
    interval_ms: u64,
}

async fn ticks(State(f): State<Shared>, Json(b): Json<TicksBody>) -> Json<Value> {
    f.set_tick_interval(Duration::from_millis(b.interval_ms.max(1)));
    Json(f.state())
}
