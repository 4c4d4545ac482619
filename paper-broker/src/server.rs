//! One WebSocket session: hello, auth, subscribe, ticks, orders; every fault switch is
//! consulted here. Pings are answered by the WebSocket layer while the session reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::faults::{DropMode, Faults, Stall};
use crate::protocol::{ClientMessage, ServerMessage, codes, valid_symbol};

/// Why a session ended early (the socket is closed either way).
struct Ended;

struct Session {
    socket: WebSocket,
    faults: Arc<Faults>,
    /// Messages sent, for "malformed every N".
    sent: u64,
    authenticated: bool,
    prices: HashMap<String, f64>,
    next_order: u64,
}

/// Decrements the open-connection count however the session ends.
struct OpenGuard(Arc<Faults>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub async fn serve(socket: WebSocket, faults: Arc<Faults>, shutdown: CancellationToken) {
    faults.connections_total.fetch_add(1, Ordering::Relaxed);
    faults.connections_open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(Arc::clone(&faults));
    let mut drops = faults.subscribe_drops();
    let mut session = Session {
        socket,
        faults,
        sent: 0,
        authenticated: false,
        prices: HashMap::new(),
        next_order: 1,
    };
    let hello = ServerMessage::Hello {
        server: "paper-broker".into(),
        protocol: 1,
    };
    if session.send(&hello).await.is_err() {
        return;
    }
    let mut next_tick = Instant::now() + session.faults.tick_interval();
    loop {
        if session.faults.stall() == Stall::All {
            // Neither read nor write: no pongs either. The socket stays open.
            tokio::select! {
                drop = drops.recv() => if session.dropped(drop).await { return },
                () = shutdown.cancelled() => return session.close(1001, "server shutting down").await,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            continue;
        }
        tokio::select! {
            drop = drops.recv() => if session.dropped(drop).await { return },
            () = shutdown.cancelled() => return session.close(1001, "server shutting down").await,
            message = session.socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    if session.handle(text.as_str()).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) => {
                    session.faults.clean_closes.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {} // ping (answered by the WebSocket layer), pong, binary
            },
            () = tokio::time::sleep_until(next_tick) => {
                next_tick = Instant::now() + session.faults.tick_interval();
                if session.ticks().await.is_err() {
                    return;
                }
            }
        }
    }
}

impl Session {
    /// Sends one application message, applying stall, delay and malformed faults.
    async fn send(&mut self, message: &ServerMessage) -> Result<(), Ended> {
        if self.faults.stall() != Stall::None {
            return Ok(()); // data stalled: application messages are swallowed
        }
        let delay = self.faults.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.sent += 1;
        let every = self.faults.malformed_every();
        let text = if every > 0 && self.sent.is_multiple_of(every) {
            // Alternate between broken JSON and a well-formed unknown type.
            if (self.sent / every).is_multiple_of(2) {
                r#"{"type":"tick","symbol":"#.to_owned()
            } else {
                r#"{"type":"mystery","payload":42}"#.to_owned()
            }
        } else {
            serde_json::to_string(message).map_err(|_| Ended)?
        };
        self.socket
            .send(Message::Text(text.into()))
            .await
            .map_err(|_| Ended)
    }

    async fn error(&mut self, code: &str, message: impl Into<String>) -> Result<(), Ended> {
        self.send(&ServerMessage::Error {
            code: code.into(),
            message: message.into(),
        })
        .await
    }

    async fn close(mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.socket.send(Message::Close(Some(frame))),
        )
        .await;
    }

    /// Handles a control-API drop; true when the session is over.
    async fn dropped(&mut self, drop: Result<DropMode, RecvError>) -> bool {
        match drop {
            Ok(DropMode::Close) => {
                let frame = CloseFrame {
                    code: 1001,
                    reason: "dropped by the control API".into(),
                };
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    self.socket.send(Message::Close(Some(frame))),
                )
                .await;
                true
            }
            // Returning drops the socket: the TCP connection closes with no close frame.
            Ok(DropMode::Abrupt) => true,
            Err(RecvError::Lagged(_)) => false,
            Err(RecvError::Closed) => true,
        }
    }

    async fn ticks(&mut self) -> Result<(), Ended> {
        if !self.authenticated {
            return Ok(());
        }
        let symbols: Vec<String> = self.prices.keys().cloned().collect();
        for symbol in symbols {
            let price = self.prices.entry(symbol.clone()).or_insert(100.0);
            *price = (*price * (1.0 + (fastrand::f64() - 0.5) * 0.002)).max(0.01);
            let tick = ServerMessage::Tick {
                symbol,
                price: (*price * 100.0).round() / 100.0,
                ts: now_ms(),
            };
            self.send(&tick).await?;
        }
        Ok(())
    }

    async fn handle(&mut self, text: &str) -> Result<(), Ended> {
        let message = match serde_json::from_str::<ClientMessage>(text) {
            Ok(m) => m,
            Err(e) => {
                let known_shape = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned));
                return match known_shape {
                    Some(kind) if !["auth", "subscribe", "order"].contains(&kind.as_str()) => {
                        self.error(
                            codes::UNKNOWN_TYPE,
                            format!("unknown message type {kind:?}"),
                        )
                        .await
                    }
                    _ => self.error(codes::BAD_REQUEST, e.to_string()).await,
                };
            }
        };
        match message {
            ClientMessage::Auth { .. } if self.faults.refuse_auth() => {
                self.error(codes::AUTH_FAILED, "credentials refused")
                    .await?;
                let _ = self
                    .socket
                    .send(Message::Close(Some(CloseFrame {
                        code: 1008,
                        reason: "auth failed".into(),
                    })))
                    .await;
                Err(Ended)
            }
            ClientMessage::Auth { .. } => {
                self.authenticated = true;
                self.send(&ServerMessage::AuthOk).await
            }
            _ if !self.authenticated => {
                self.error(codes::NOT_AUTHENTICATED, "send auth first")
                    .await
            }
            ClientMessage::Subscribe { symbols } => {
                if let Some(bad) = symbols.iter().find(|s| !valid_symbol(s)) {
                    return self
                        .error(codes::INVALID_SYMBOL, format!("invalid symbol {bad:?}"))
                        .await;
                }
                for symbol in &symbols {
                    self.prices
                        .entry(symbol.clone())
                        .or_insert(100.0 + fastrand::f64() * 100.0);
                }
                self.send(&ServerMessage::Subscribed { symbols }).await
            }
            ClientMessage::Order {
                client_order_id,
                symbol,
                quantity,
                limit_price,
                ..
            } => {
                self.faults.orders_received.fetch_add(1, Ordering::Relaxed);
                if let Some(reason) = self.faults.take_rejection() {
                    return self
                        .send(&ServerMessage::Reject {
                            client_order_id,
                            reason,
                        })
                        .await;
                }
                if !valid_symbol(&symbol) {
                    let reason = "invalid_symbol".to_owned();
                    return self
                        .send(&ServerMessage::Reject {
                            client_order_id,
                            reason,
                        })
                        .await;
                }
                let broker_order_id = format!("P-{}", self.next_order);
                self.next_order += 1;
                self.send(&ServerMessage::Ack {
                    client_order_id: client_order_id.clone(),
                    broker_order_id: broker_order_id.clone(),
                })
                .await?;
                let market = *self.prices.entry(symbol).or_insert(100.0);
                let price = limit_price
                    .and_then(|p| p.parse().ok())
                    .unwrap_or((market * 100.0).round() / 100.0);
                self.send(&ServerMessage::Fill {
                    client_order_id,
                    broker_order_id,
                    price,
                    quantity,
                })
                .await
            }
        }
    }
}
