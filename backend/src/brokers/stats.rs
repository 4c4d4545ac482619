//! What is known about one broker session, shared between its supervisor (the only
//! writer) and readers (the health check, /metrics) that never do I/O. Counters and times
//! are atomics; the error-rate window and the last error sit behind locks held briefly.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::core::metrics::{BrokerKindLabels, BrokerLabels, BrokerMetrics};
use crate::core::redact::redact_text;

/// The session's state (DESIGN section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Connecting,
    Authenticating,
    Live,
    /// Transport alive, but no application message for `BROKER_STALE_AFTER`.
    Stale,
    Backoff,
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Authenticating => "authenticating",
            State::Live => "live",
            State::Stale => "stale",
            State::Backoff => "backoff",
            State::Stopped => "stopped",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => State::Connecting,
            1 => State::Authenticating,
            2 => State::Live,
            3 => State::Stale,
            4 => State::Backoff,
            _ => State::Stopped,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            State::Connecting => 0,
            State::Authenticating => 1,
            State::Live => 2,
            State::Stale => 3,
            State::Backoff => 4,
            State::Stopped => 5,
        }
    }

    /// Whether the transport is up (a session exists).
    pub fn connected(self) -> bool {
        matches!(self, State::Live | State::Stale)
    }
}

/// Fixed kinds of broker errors (`broker_errors_total{kind}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP/WebSocket connect failed or the connection broke.
    Connect,
    /// The broker refused our credentials.
    Auth,
    /// A malformed or unknown frame.
    Protocol,
    /// An `error` message from the broker.
    BrokerError,
    /// No answer in time (handshake step, or a peer silent for 3 heartbeats).
    Timeout,
    /// The broker closed or dropped the session.
    Closed,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Connect,
        ErrorKind::Auth,
        ErrorKind::Protocol,
        ErrorKind::BrokerError,
        ErrorKind::Timeout,
        ErrorKind::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Auth => "auth",
            ErrorKind::Protocol => "protocol",
            ErrorKind::BrokerError => "broker_error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Closed => "closed",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }

    /// Errors inside a session that count towards the error rate. Connection-level
    /// failures do not: the state and the down grace period judge those.
    fn counts_in_rate(self) -> bool {
        matches!(self, ErrorKind::Protocol | ErrorKind::BrokerError)
    }
}

/// Messages and errors per second over the error window.
struct Window {
    /// (second since start, messages, errors), oldest first.
    buckets: VecDeque<(u64, u64, u64)>,
    span_secs: u64,
}

impl Window {
    fn add(&mut self, now_sec: u64, messages: u64, errors: u64) {
        match self.buckets.back_mut() {
            Some((sec, m, e)) if *sec == now_sec => {
                *m += messages;
                *e += errors;
            }
            _ => self.buckets.push_back((now_sec, messages, errors)),
        }
        self.trim(now_sec);
    }

    fn trim(&mut self, now_sec: u64) {
        while self
            .buckets
            .front()
            .is_some_and(|(sec, _, _)| now_sec.saturating_sub(*sec) >= self.span_secs)
        {
            self.buckets.pop_front();
        }
    }

    fn totals(&mut self, now_sec: u64) -> (u64, u64) {
        self.trim(now_sec);
        self.buckets
            .iter()
            .fold((0, 0), |(m, e), (_, bm, be)| (m + bm, e + be))
    }
}

/// A point-in-time copy of the stats, for the health check.
#[derive(Clone, Debug)]
pub struct StatsView {
    pub state: State,
    pub connected_for: Option<Duration>,
    pub connected_since: Option<SystemTime>,
    pub disconnected_for: Option<Duration>,
    pub last_frame_age: Option<Duration>,
    pub last_data_age: Option<Duration>,
    pub last_message_at: Option<SystemTime>,
    pub messages: u64,
    pub reconnects: u64,
    pub errors: Vec<(&'static str, u64)>,
    /// Errors / (messages + errors) in the window, in percent; `None` without traffic.
    pub error_rate: Option<f64>,
    pub window_messages: u64,
    pub window_errors: u64,
    pub last_error: Option<String>,
    pub ping_rtt: Option<Duration>,
    pub recent_backoffs: Vec<Duration>,
}

/// Shared stats of one broker.
pub struct BrokerStats {
    name: String,
    started: Instant,
    state: AtomicU8,
    /// Milliseconds since `started` (+1, so 0 means never).
    connected_at: AtomicU64,
    disconnected_at: AtomicU64,
    last_frame: AtomicU64,
    last_data: AtomicU64,
    messages: AtomicU64,
    reconnects: AtomicU64,
    errors: [AtomicU64; 6],
    ping_rtt_us: AtomicU64,
    window: Mutex<Window>,
    last_error: Mutex<Option<String>>,
    recent_backoffs: Mutex<VecDeque<Duration>>,
    metrics: BrokerMetrics,
    labels: BrokerLabels,
}

impl BrokerStats {
    pub fn new(name: &str, error_window: Duration, metrics: BrokerMetrics) -> Self {
        let labels = BrokerLabels {
            broker: name.to_owned(),
        };
        // Create every series at 0 so the broker shows on the first scrape.
        metrics.up.get_or_create(&labels).set(0);
        let _ = metrics.reconnects.get_or_create(&labels);
        let _ = metrics.messages_received.get_or_create(&labels);
        // 0 until the first message ("never").
        let _ = metrics.last_message_timestamp.get_or_create(&labels);
        for kind in ErrorKind::ALL {
            let _ = metrics.errors.get_or_create(&BrokerKindLabels {
                broker: name.to_owned(),
                kind: kind.as_str(),
            });
        }
        let started = Instant::now();
        Self {
            name: name.to_owned(),
            started,
            state: AtomicU8::new(State::Connecting.to_u8()),
            connected_at: AtomicU64::new(0),
            disconnected_at: AtomicU64::new(1), // disconnected since start
            last_frame: AtomicU64::new(0),
            last_data: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            errors: Default::default(),
            ping_rtt_us: AtomicU64::new(0),
            window: Mutex::new(Window {
                buckets: VecDeque::new(),
                span_secs: error_window.as_secs().max(1),
            }),
            last_error: Mutex::new(None),
            recent_backoffs: Mutex::new(VecDeque::new()),
            metrics,
            labels,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    fn age(&self, stamp: &AtomicU64) -> Option<Duration> {
        match stamp.load(Ordering::Acquire) {
            0 => None,
            at => Some(Duration::from_millis(self.now_ms().saturating_sub(at))),
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, state: State) {
        let previous = State::from_u8(self.state.swap(state.to_u8(), Ordering::AcqRel));
        if previous.connected() && !state.connected() {
            self.disconnected_at.store(self.now_ms(), Ordering::Release);
            self.connected_at.store(0, Ordering::Release);
        }
        self.metrics
            .up
            .get_or_create(&self.labels)
            .set(i64::from(state.connected()));
    }

    /// The session completed its handshake. `reconnected` when an earlier one was live.
    pub fn session_live(&self, reconnected: bool) {
        let now = self.now_ms();
        self.connected_at.store(now, Ordering::Release);
        self.disconnected_at.store(0, Ordering::Release);
        self.last_frame.store(now, Ordering::Release);
        self.last_data.store(now, Ordering::Release);
        if reconnected {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            self.metrics.reconnects.get_or_create(&self.labels).inc();
        }
        self.set_state(State::Live);
    }

    /// Any frame arrived (transport alive).
    pub fn frame(&self) {
        self.last_frame.store(self.now_ms(), Ordering::Release);
    }

    /// An application message arrived (data fresh).
    pub fn message(&self) {
        self.last_data.store(self.now_ms(), Ordering::Release);
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .messages_received
            .get_or_create(&self.labels)
            .inc();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.metrics
            .last_message_timestamp
            .get_or_create(&self.labels)
            .set(unix);
        if let Ok(mut w) = self.window.lock() {
            w.add(self.now_ms() / 1000, 1, 0);
        }
        if self.state() == State::Stale {
            self.set_state(State::Live);
        }
    }

    pub fn error(&self, kind: ErrorKind, detail: &str) {
        self.errors[kind.index()].fetch_add(1, Ordering::Relaxed);
        self.metrics
            .errors
            .get_or_create(&BrokerKindLabels {
                broker: self.name.clone(),
                kind: kind.as_str(),
            })
            .inc();
        if kind.counts_in_rate()
            && let Ok(mut w) = self.window.lock()
        {
            w.add(self.now_ms() / 1000, 0, 1);
        }
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(format!("{}: {}", kind.as_str(), redact_text(detail)));
        }
    }

    pub fn since_last_frame(&self) -> Duration {
        self.age(&self.last_frame).unwrap_or(Duration::MAX)
    }

    pub fn since_last_data(&self) -> Duration {
        self.age(&self.last_data).unwrap_or(Duration::MAX)
    }

    pub fn ping_rtt(&self, rtt: Duration) {
        self.ping_rtt_us
            .store(rtt.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn backoff(&self, delay: Duration) {
        if let Ok(mut recent) = self.recent_backoffs.lock() {
            if recent.len() == 16 {
                recent.pop_front();
            }
            recent.push_back(delay);
        }
    }

    pub fn view(&self) -> StatsView {
        let now_wall = SystemTime::now();
        let connected_for = self.age(&self.connected_at);
        let last_data_age = self.age(&self.last_data);
        let (window_messages, window_errors) = self
            .window
            .lock()
            .map(|mut w| w.totals(self.now_ms() / 1000))
            .unwrap_or((0, 0));
        let total = window_messages + window_errors;
        StatsView {
            state: self.state(),
            connected_for,
            connected_since: connected_for.and_then(|d| now_wall.checked_sub(d)),
            disconnected_for: self.age(&self.disconnected_at),
            last_frame_age: self.age(&self.last_frame),
            last_data_age,
            last_message_at: last_data_age.and_then(|d| now_wall.checked_sub(d)),
            messages: self.messages.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            errors: ErrorKind::ALL
                .iter()
                .map(|k| (k.as_str(), self.errors[k.index()].load(Ordering::Relaxed)))
                .collect(),
            error_rate: (total > 0).then(|| window_errors as f64 * 100.0 / total as f64),
            window_messages,
            window_errors,
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            ping_rtt: match self.ping_rtt_us.load(Ordering::Relaxed) {
                0 => None,
                us => Some(Duration::from_micros(us)),
            },
            recent_backoffs: self
                .recent_backoffs
                .lock()
                .map(|r| r.iter().copied().collect())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::metrics::Metrics;

    fn stats() -> BrokerStats {
        BrokerStats::new(
            "paper",
            Duration::from_secs(300),
            Metrics::new(|_| {}).brokers,
        )
    }

    #[test]
    fn error_rate_counts_session_errors_against_messages() {
        let s = stats();
        assert_eq!(s.view().error_rate, None);
        for _ in 0..97 {
            s.message();
        }
        for _ in 0..3 {
            s.error(ErrorKind::Protocol, "bad frame");
        }
        s.error(ErrorKind::Connect, "refused"); // not in the rate
        let v = s.view();
        assert_eq!(v.error_rate, Some(3.0));
        assert_eq!(v.messages, 97);
        assert_eq!(v.last_error.as_deref(), Some("connect: refused"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_forgets_old_errors() {
        let s = BrokerStats::new(
            "paper",
            Duration::from_secs(10),
            Metrics::new(|_| {}).brokers,
        );
        s.error(ErrorKind::Protocol, "x");
        s.message();
        assert_eq!(s.view().error_rate, Some(50.0));
        tokio::time::advance(Duration::from_secs(11)).await;
        s.message();
        assert_eq!(s.view().error_rate, Some(0.0));
    }

    #[tokio::test(start_paused = true)]
    async fn state_changes_track_connection_times() {
        let s = stats();
        assert!(s.view().disconnected_for.is_some());
        s.session_live(false);
        let v = s.view();
        assert_eq!(v.state, State::Live);
        assert!(v.disconnected_for.is_none() && v.connected_for.is_some());
        tokio::time::advance(Duration::from_secs(3)).await;
        s.set_state(State::Backoff);
        tokio::time::advance(Duration::from_secs(2)).await;
        let v = s.view();
        assert_eq!(v.disconnected_for, Some(Duration::from_secs(2)));
        assert!(v.connected_for.is_none());
        s.session_live(true);
        assert_eq!(s.view().reconnects, 1);
    }
}
