//! The pub/sub subscriber: a dedicated RESP3 connection that resubscribes by itself after
//! Redis restarts, and the probe that proves messages flow end to end.
//!
//! Push messages are handled in a callback that only updates atomics and a `watch`
//! channel, so a slow reader can never back up the connection. The `redis-subscriber`
//! task (re)establishes the subscription and nudges the connection while it is down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::ConnectionManager;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Redis, client, manager_config};
use crate::core::backoff::Backoff;
use crate::core::metrics::{Component, ErrorKind, Errors};
use crate::core::redact::redact_text;

/// What the subscriber knows, updated from push messages without I/O.
pub struct SubscriberState {
    /// Subscribed and no disconnection seen since (a `watch` so a probe can wait for it).
    connected: watch::Sender<bool>,
    /// Channels currently subscribed (from the server's confirmations).
    channels: AtomicU64,
    /// Disconnections seen since start.
    disconnects: AtomicU64,
    /// When the last pub/sub message arrived.
    last_message: Mutex<Option<Instant>>,
    /// Order events received on `orders:events` (from every instance).
    order_events: AtomicU64,
    /// Highest probe sequence number received back.
    probe_seen: watch::Sender<u64>,
    /// The probe channel, unique to this instance.
    probe_channel: String,
    errors: Errors,
}

impl SubscriberState {
    fn on_push(&self, push: PushInfo) {
        match push.kind {
            PushKind::Disconnection if self.connected.send_replace(false) => {
                self.disconnects.fetch_add(1, Ordering::Relaxed);
                self.errors.inc(Component::Redis, ErrorKind::Disconnect);
                tracing::warn!(task = "redis-subscriber", "pub/sub connection lost");
            }
            PushKind::Subscribe => {
                if let Some(count) = push.data.get(1).and_then(as_u64) {
                    self.channels.store(count, Ordering::Relaxed);
                }
                if !self.connected.send_replace(true) {
                    tracing::info!(task = "redis-subscriber", "pub/sub subscribed");
                }
            }
            PushKind::Unsubscribe => {
                if let Some(count) = push.data.get(1).and_then(as_u64) {
                    self.channels.store(count, Ordering::Relaxed);
                }
            }
            PushKind::Message => {
                if let Ok(mut last) = self.last_message.lock() {
                    *last = Some(Instant::now());
                }
                let channel = push.data.first().and_then(as_text);
                if channel.as_deref() == Some(crate::orders::EVENTS_CHANNEL) {
                    self.order_events.fetch_add(1, Ordering::Relaxed);
                }
                if channel.as_deref() == Some(self.probe_channel.as_str())
                    && let Some(seq) = push
                        .data
                        .get(1)
                        .and_then(as_text)
                        .and_then(|p| p.parse::<u64>().ok())
                {
                    self.probe_seen.send_if_modified(|seen| {
                        let newer = seq > *seen;
                        if newer {
                            *seen = seq;
                        }
                        newer
                    });
                }
            }
            _ => {}
        }
    }
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A point-in-time view of the subscriber, for the `redis:pubsub` check.
#[derive(Debug, Clone)]
pub struct SubscriberView {
    pub connected: bool,
    pub channels: u64,
    pub disconnects: u64,
    pub order_events: u64,
    pub last_message_age: Option<Duration>,
}

/// Outcome of one probe.
#[derive(Debug)]
pub enum ProbeOutcome {
    /// The probe came back after this long.
    RoundTrip(Duration),
    /// The subscriber is not connected; nothing was sent.
    SubscriberDown,
    /// PUBLISH failed.
    PublishFailed(String),
    /// Published, never came back within the wait.
    Lost { waited: Duration, receivers: i64 },
}

/// The pub/sub subscriber: cheap to clone.
#[derive(Clone)]
pub struct Subscriber {
    manager: ConnectionManager,
    state: Arc<SubscriberState>,
    next_probe: Arc<AtomicU64>,
    timeout: Duration,
}

impl Subscriber {
    /// Builds the subscriber without connecting. `instance` makes the probe channel unique.
    pub fn connect_lazy(
        url: &str,
        timeout: Duration,
        instance: &str,
        errors: Errors,
    ) -> anyhow::Result<Self> {
        let (probe_seen, _) = watch::channel(0);
        let (connected, _) = watch::channel(false);
        let state = Arc::new(SubscriberState {
            connected,
            channels: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            order_events: AtomicU64::new(0),
            last_message: Mutex::new(None),
            probe_seen,
            probe_channel: format!("health:pubsub-probe:{instance}"),
            errors,
        });
        let on_push = Arc::clone(&state);
        let config = manager_config(timeout)
            .set_push_sender(move |push: PushInfo| {
                on_push.on_push(push);
                Ok::<(), redis::aio::SendError>(())
            })
            .set_automatic_resubscription();
        let manager = ConnectionManager::new_lazy_with_config(client(url, true)?, config)
            .context("creating the Redis pub/sub connection")?;
        Ok(Self {
            manager,
            state,
            next_probe: Arc::new(AtomicU64::new(1)),
            timeout,
        })
    }

    pub fn probe_channel(&self) -> &str {
        &self.state.probe_channel
    }

    pub fn view(&self) -> SubscriberView {
        SubscriberView {
            connected: *self.state.connected.borrow(),
            channels: self.state.channels.load(Ordering::Relaxed),
            disconnects: self.state.disconnects.load(Ordering::Relaxed),
            order_events: self.state.order_events.load(Ordering::Relaxed),
            last_message_age: self
                .state
                .last_message
                .lock()
                .ok()
                .and_then(|l| l.map(|t| t.elapsed())),
        }
    }

    /// Keeps the subscription alive until `cancel` fires: subscribes once, then while the
    /// connection is down sends PING so the manager reconnects and resubscribes.
    pub async fn run(self, cancel: CancellationToken, check_every: Duration) {
        let mut subscribed_once = false;
        let mut backoff = Backoff::new(
            Duration::from_millis(200),
            check_every.max(Duration::from_secs(1)),
        );
        loop {
            let mut wait = check_every;
            if !*self.state.connected.borrow() {
                let mut conn = self.manager.clone();
                let attempt = async {
                    if subscribed_once {
                        redis::cmd("PING").query_async::<()>(&mut conn).await
                    } else {
                        conn.subscribe(&[
                            self.state.probe_channel.as_str(),
                            crate::orders::EVENTS_CHANNEL,
                        ])
                        .await
                    }
                };
                match tokio::time::timeout(self.timeout, attempt).await {
                    Ok(Ok(())) => {
                        subscribed_once = true;
                        backoff.reset();
                        wait = Duration::from_millis(50); // let the confirmation arrive
                    }
                    Ok(Err(e)) => {
                        wait = backoff.next_delay();
                        tracing::debug!(task = "redis-subscriber", error = %redact_text(&e.to_string()), "pub/sub not connected yet");
                    }
                    Err(_) => wait = backoff.next_delay(),
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!(task = "redis-subscriber", "pub/sub subscriber stopped");
    }

    /// Publishes a numbered probe on this instance's channel through `publisher` and waits
    /// (up to `wait` in all) until the subscriber has received it. A subscriber that is
    /// (re)connecting gets up to half of `wait` to come up first.
    pub async fn probe(&self, publisher: &Redis, wait: Duration) -> ProbeOutcome {
        let started = Instant::now();
        let mut connected = self.state.connected.subscribe();
        if tokio::time::timeout(wait / 2, connected.wait_for(|c| *c))
            .await
            .is_err()
        {
            return ProbeOutcome::SubscriberDown;
        }
        let seq = self.next_probe.fetch_add(1, Ordering::Relaxed);
        let mut seen = self.state.probe_seen.subscribe();
        let sent = Instant::now();
        let receivers: i64 = match publisher
            .query(
                redis::cmd("PUBLISH")
                    .arg(&self.state.probe_channel)
                    .arg(seq),
            )
            .await
        {
            Ok(n) => n,
            Err(e) => return ProbeOutcome::PublishFailed(format!("{e:#}")),
        };
        let remaining = wait.saturating_sub(started.elapsed());
        match tokio::time::timeout(remaining, seen.wait_for(|s| *s >= seq)).await {
            Ok(Ok(_)) => ProbeOutcome::RoundTrip(sent.elapsed()),
            _ => ProbeOutcome::Lost {
                waited: started.elapsed(),
                receivers,
            },
        }
    }
}
