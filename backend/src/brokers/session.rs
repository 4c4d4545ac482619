//! One broker's supervisor: connects, authenticates, subscribes, reads with an idle limit,
//! pings on the heartbeat interval, and reconnects with exponential backoff and full
//! jitter (500 ms base, 30 s cap; reset only after a session stayed live 10 s).
//!
//! Transport liveness (any frame, pongs included) and data freshness (application
//! messages) are tracked separately: a peer silent for 3 heartbeats is dead and dropped;
//! one that answers pings but sends no data is `stale`. Malformed frames are counted and
//! logged (at most every 10 s), never fatal.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use paper_broker::protocol::{ClientMessage, ServerMessage};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::stats::{BrokerStats, ErrorKind, State};
use super::{BrokerEvent, OutboundOrder};
use crate::core::backoff::Backoff;
use crate::core::redact::{redact_text, redact_url};
use tokio::sync::mpsc;

/// A session must stay live this long before the backoff resets.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Largest message or frame accepted from a broker.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
const MAX_FRAME_BYTES: usize = 256 * 1024;
/// At most one "malformed frame" log line per this interval.
const MALFORMED_LOG_EVERY: Duration = Duration::from_secs(10);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Timings of every session.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    pub heartbeat: Duration,
    pub stale_after: Duration,
    pub connect_timeout: Duration,
    pub symbols: Vec<String>,
}

/// How a session ended.
enum Ended {
    /// Shutdown was requested; the close handshake was sent.
    Shutdown,
    /// The session failed or was dropped; `live_for` is how long it had been live.
    Failed { live_for: Duration },
}

/// One broker's supervisor.
pub struct Supervisor {
    pub stats: Arc<BrokerStats>,
    pub url: String,
    pub settings: SessionSettings,
    /// Orders to send while a session is live.
    pub outbound: mpsc::Receiver<OutboundOrder>,
    /// Where order replies go (the `order-events` task).
    pub events: mpsc::Sender<BrokerEvent>,
}

impl Supervisor {
    /// Runs sessions until `cancel` fires, reconnecting with backoff.
    pub async fn run(mut self, cancel: CancellationToken) {
        let name = self.stats.name().to_owned();
        let shown_url = redact_url(&self.url);
        tracing::info!(task = "broker", broker = %name, url = %shown_url, "broker supervisor started");
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        let mut was_live = false;
        let mut malformed_log = MalformedLog::default();
        loop {
            match self.session(&cancel, was_live, &mut malformed_log).await {
                Ended::Shutdown => break,
                Ended::Failed { live_for } => {
                    if live_for > Duration::ZERO {
                        was_live = true;
                    }
                    if live_for >= STABLE_AFTER {
                        backoff.reset();
                    }
                }
            }
            if cancel.is_cancelled() {
                break;
            }
            let delay = backoff.next_delay();
            self.stats.backoff(delay);
            self.stats.set_state(State::Backoff);
            tracing::info!(task = "broker", broker = %name, retry_in_ms = delay.as_millis() as u64, "broker reconnect scheduled");
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.stats.set_state(State::Stopped);
        tracing::info!(task = "broker", broker = %name, "broker supervisor stopped");
    }

    fn fail(&self, kind: ErrorKind, detail: &str, live_since: Option<Instant>) -> Ended {
        let detail = redact_text(detail);
        tracing::warn!(task = "broker", broker = %self.stats.name(), kind = kind.as_str(), error = %detail, "broker session failed");
        self.stats.error(kind, &detail);
        Ended::Failed {
            live_for: live_since.map_or(Duration::ZERO, |t| t.elapsed()),
        }
    }

    /// The URL to dial (credentials removed) and the credentials for `auth`.
    fn endpoint(&self) -> (String, String, String) {
        match Url::parse(&self.url) {
            Ok(mut url) => {
                let key = url.username().to_owned();
                let secret = url.password().unwrap_or_default().to_owned();
                let _ = url.set_username("");
                let _ = url.set_password(None);
                (url.to_string(), key, secret)
            }
            Err(_) => (self.url.clone(), String::new(), String::new()),
        }
    }

    async fn session(
        &mut self,
        cancel: &CancellationToken,
        was_live: bool,
        malformed_log: &mut MalformedLog,
    ) -> Ended {
        let timeout = self.settings.connect_timeout;
        self.stats.set_state(State::Connecting);
        let (url, key, secret) = self.endpoint();
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let connect =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true);
        let mut ws = tokio::select! {
            () = cancel.cancelled() => return Ended::Shutdown,
            connected = tokio::time::timeout(timeout, connect) => match connected {
                Ok(Ok((ws, _response))) => ws,
                Ok(Err(e)) => return self.fail(ErrorKind::Connect, &e.to_string(), None),
                Err(_) => return self.fail(ErrorKind::Timeout, &format!("connect timed out after {}ms", timeout.as_millis()), None),
            },
        };

        self.stats.set_state(State::Authenticating);
        let handshake = async {
            let stats = &self.stats;
            expect(
                &mut ws,
                stats,
                timeout,
                |m| matches!(m, ServerMessage::Hello { .. }),
                "hello",
            )
            .await?;
            send(&mut ws, &ClientMessage::Auth { key, secret }, timeout).await?;
            expect(
                &mut ws,
                stats,
                timeout,
                |m| matches!(m, ServerMessage::AuthOk),
                "auth_ok",
            )
            .await?;
            let symbols = self.settings.symbols.clone();
            send(&mut ws, &ClientMessage::Subscribe { symbols }, timeout).await?;
            expect(
                &mut ws,
                stats,
                timeout,
                |m| matches!(m, ServerMessage::Subscribed { .. }),
                "subscribed",
            )
            .await
        };
        let handshake = tokio::select! {
            () = cancel.cancelled() => {
                close(&mut ws).await;
                return Ended::Shutdown;
            }
            result = handshake => result,
        };
        if let Err((kind, detail)) = handshake {
            close(&mut ws).await;
            return self.fail(kind, &detail, None);
        }

        let live_since = Instant::now();
        self.stats.session_live(was_live);
        tracing::info!(task = "broker", broker = %self.stats.name(), reconnected = was_live, "broker session live");
        let heartbeat = self.settings.heartbeat;
        let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ping_sent: Option<Instant> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => {
                    close(&mut ws).await;
                    return Ended::Shutdown;
                }
                _ = ticker.tick() => {
                    let silent = self.stats.since_last_frame();
                    if silent > heartbeat * 3 {
                        return self.fail(
                            ErrorKind::Timeout,
                            &format!("peer silent for {:.1}s (3 heartbeats); dropping the session", silent.as_secs_f64()),
                            Some(live_since),
                        );
                    }
                    let stale = self.stats.since_last_data() > self.settings.stale_after;
                    match (self.stats.state(), stale) {
                        (State::Live, true) => {
                            tracing::warn!(task = "broker", broker = %self.stats.name(), "broker feed stale: transport alive, no data");
                            self.stats.set_state(State::Stale);
                        }
                        (State::Stale, false) => self.stats.set_state(State::Live),
                        _ => {}
                    }
                    let ping = tokio::time::timeout(heartbeat, ws.send(Message::Ping(Vec::new().into()))).await;
                    match ping {
                        Ok(Ok(())) => ping_sent = Some(Instant::now()),
                        Ok(Err(e)) => return self.fail(ErrorKind::Connect, &format!("sending a ping: {e}"), Some(live_since)),
                        Err(_) => return self.fail(ErrorKind::Timeout, "sending a ping timed out", Some(live_since)),
                    }
                }
                                Some(order) = self.outbound.recv() => {
                    if Instant::now() > order.deadline {
                        tracing::warn!(task = "broker", broker = %self.stats.name(), "order not sent: its ack deadline passed while queued");
                        continue;
                    }
                    let sent = match serde_json::to_string(&order.message) {
                        Ok(text) => tokio::time::timeout(heartbeat, ws.send(Message::Text(text.into()))).await,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot encode an order");
                            continue;
                        }
                    };
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return self.fail(ErrorKind::Connect, &format!("sending an order: {e}"), Some(live_since)),
                        Err(_) => return self.fail(ErrorKind::Timeout, "sending an order timed out", Some(live_since)),
                    }
                }
                frame = ws.next() => {
                    let frame = match frame {
                        None => return self.fail(ErrorKind::Closed, "connection ended without a close frame", Some(live_since)),
                        Some(Err(e)) => {
                            let kind = match e {
                                tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => ErrorKind::Closed,
                                tungstenite::Error::Capacity(_) | tungstenite::Error::Protocol(_) => ErrorKind::Protocol,
                                _ => ErrorKind::Closed,
                            };
                            return self.fail(kind, &e.to_string(), Some(live_since));
                        }
                        Some(Ok(frame)) => frame,
                    };
                    self.stats.frame();
                    match frame {
                        Message::Text(text) => match serde_json::from_str::<ServerMessage>(text.as_str()) {
                            Ok(ServerMessage::Error { code, message }) => {
                                self.stats.message();
                                self.stats.error(ErrorKind::BrokerError, &format!("{code}: {message}"));
                            }
                                                        Ok(message @ (ServerMessage::Ack { .. } | ServerMessage::Fill { .. } | ServerMessage::Reject { .. })) => {
                                self.stats.message();
                                let event = BrokerEvent { broker: self.stats.name().to_owned(), message };
                                tokio::select! {
                                    () = cancel.cancelled() => {
                                        close(&mut ws).await;
                                        return Ended::Shutdown;
                                    }
                                    sent = self.events.send(event) => if sent.is_err() {
                                        tracing::error!(task = "broker", "order events receiver gone; order reply dropped");
                                    },
                                }
                            }
                            Ok(_message) => self.stats.message(),
                            Err(e) => {
                                self.stats.error(ErrorKind::Protocol, &format!("malformed frame: {e}"));
                                malformed_log.record(self.stats.name(), &e.to_string());
                            }
                        },
                        Message::Pong(_) => {
                            if let Some(sent) = ping_sent.take() {
                                self.stats.ping_rtt(sent.elapsed());
                            }
                        }
                        Message::Close(frame) => {
                            let why = frame.map_or_else(|| "no reason".to_owned(), |f| format!("{} {}", u16::from(f.code), f.reason));
                            return self.fail(ErrorKind::Closed, &format!("closed by the broker: {why}"), Some(live_since));
                        }
                        // Pings are answered by tungstenite; make sure the pong leaves now.
                        Message::Ping(_) => {
                            let _ = tokio::time::timeout(heartbeat, ws.flush()).await;
                        }
                        Message::Binary(_) => {
                            self.stats.error(ErrorKind::Protocol, "unexpected binary frame");
                            malformed_log.record(self.stats.name(), "unexpected binary frame");
                        }
                        Message::Frame(_) => {}
                    }
                }
            }
        }
    }
}

/// Sends one message under `timeout`.
async fn send(
    ws: &mut Socket,
    message: &ClientMessage,
    timeout: Duration,
) -> Result<(), (ErrorKind, String)> {
    let text = serde_json::to_string(message).map_err(|e| (ErrorKind::Protocol, e.to_string()))?;
    match tokio::time::timeout(timeout, ws.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err((ErrorKind::Connect, e.to_string())),
        Err(_) => Err((ErrorKind::Timeout, "sending timed out".into())),
    }
}

/// Waits (up to `timeout`) for the handshake message `what`. An `error` message fails the
/// handshake; malformed frames are counted and skipped; other messages are ignored.
async fn expect(
    ws: &mut Socket,
    stats: &BrokerStats,
    timeout: Duration,
    wanted: impl Fn(&ServerMessage) -> bool,
    what: &str,
) -> Result<(), (ErrorKind, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let frame = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                return Err((
                    ErrorKind::Timeout,
                    format!("no {what} within {}ms", timeout.as_millis()),
                ));
            }
            Ok(None) => {
                return Err((
                    ErrorKind::Closed,
                    format!("connection ended while waiting for {what}"),
                ));
            }
            Ok(Some(Err(e))) => return Err((ErrorKind::Closed, e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Message::Text(text) = frame else {
            continue; // pings and pongs during the handshake
        };
        match serde_json::from_str::<ServerMessage>(text.as_str()) {
            Ok(message) if wanted(&message) => return Ok(()),
            Ok(ServerMessage::Error { code, message }) => {
                let kind = if code == paper_broker::protocol::codes::AUTH_FAILED {
                    ErrorKind::Auth
                } else {
                    ErrorKind::BrokerError
                };
                return Err((kind, format!("{code}: {message}")));
            }
            // Ticks may race the handshake replies; anything else is ignored until then.
            Ok(_) => {}
            Err(e) => stats.error(
                ErrorKind::Protocol,
                &format!("malformed frame while waiting for {what}: {e}"),
            ),
        }
    }
}

/// Sends a close frame and waits briefly for the broker's reply.
async fn close(ws: &mut Socket) {
    let frame = tungstenite::protocol::CloseFrame {
        code: CloseCode::Away,
        reason: "backend shutting down".into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
}

/// Rate-limits the "malformed frame" log line.
#[derive(Default)]
struct MalformedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl MalformedLog {
    fn record(&mut self, broker: &str, detail: &str) {
        if self.last.is_some_and(|t| t.elapsed() < MALFORMED_LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(task = "broker", %broker, error = %redact_text(detail), suppressed = self.suppressed, "malformed frame from broker");
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::metrics::Metrics;

    /// Every connect is refused: delays double from 500 ms up to the 30 s cap, each drawn
    /// at random below its ceiling, and attempts are spaced by them (no storm).
    #[tokio::test(start_paused = true)]
    async fn refused_connections_back_off_with_growing_jittered_capped_delays() {
        let stats = Arc::new(BrokerStats::new(
            "down",
            Duration::from_secs(300),
            Metrics::new(|_| {}).brokers,
        ));
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        }; // closed again: nothing listens there
        let supervisor = Supervisor {
            stats: Arc::clone(&stats),
            url: format!("ws://127.0.0.1:{port}/ws"),
            settings: SessionSettings {
                heartbeat: Duration::from_secs(1),
                stale_after: Duration::from_secs(3),
                connect_timeout: Duration::from_secs(1),
                symbols: vec!["AAPL".into()],
            },
            outbound: mpsc::channel(1).1,
            events: mpsc::channel(1).0,
        };
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let task = tokio::spawn(supervisor.run(cancel.clone()));
        while stats.view().recent_backoffs.len() < 12 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cancel.cancel();
        task.await.unwrap();

        let view = stats.view();
        let delays = view.recent_backoffs;
        for (attempt, delay) in delays.iter().enumerate() {
            let ceiling = (BACKOFF_BASE * 2u32.pow(attempt as u32)).min(BACKOFF_CAP);
            assert!(
                *delay <= ceiling,
                "attempt {attempt}: {delay:?} above {ceiling:?}"
            );
        }
        assert!(
            delays[6..].iter().any(|d| *d > Duration::from_secs(4)),
            "delays grow: {delays:?}"
        );
        let mut distinct = delays.clone();
        distinct.dedup();
        assert!(distinct.len() >= 10, "jittered: {delays:?}");
        // Twelve failed attempts, spaced by at least the sum of the delays before them.
        let failures: u64 = view
            .errors
            .iter()
            .filter(|(k, _)| matches!(*k, "connect" | "timeout"))
            .map(|(_, n)| n)
            .sum();
        assert!(
            (12..=13).contains(&failures),
            "{failures} attempts: {:?}",
            view.errors
        );
        let slept: Duration = delays[..11].iter().sum();
        assert!(
            started.elapsed() >= slept,
            "{:?} < {slept:?}",
            started.elapsed()
        );
        assert_eq!(view.state, State::Stopped);
    }
}
