//! Order execution: validate -> persist -> send -> track.
//!
//! [`Orders::submit`] stores the order before anything else (a repeated
//! `client_order_id` returns the stored order and sends nothing), sends it over the
//! broker's live session and waits for its outcome up to `ORDER_ACK_TIMEOUT`. The
//! `order-events` task applies the broker's ack/fill/reject messages and the ack
//! timeouts, one at a time and in order; every state change updates the row, the order
//! metrics, and is published on the Redis channel `orders:events` by the
//! `order-publisher` task (so a slow Redis never delays an order).

pub mod model;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paper_broker::protocol::{ClientMessage, ServerMessage};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::brokers::stats::BrokerStats;
use crate::brokers::{BrokerEvent, OutboundOrder};
use crate::core::metrics::{
    BrokerLabels, BrokerReasonLabels, Component, ErrorKind, Errors, OrderMetrics, SubmittedLabels,
};
use crate::db::Database;
use crate::redis_client::Redis;
use model::{NewOrder, Order, reject_reason};
use store::StoreError;

/// The Redis channel every order state change is published on.
pub const EVENTS_CHANNEL: &str = "orders:events";
/// Events waiting to be published; beyond this they are dropped (and counted).
const PUBLISH_QUEUE: usize = 4096;
/// How long an acknowledged order is tracked for its fill latency.
const TRACK_ACCEPTED_FOR: Duration = Duration::from_secs(3600);

/// The outcome of a submission.
pub enum Submitted {
    /// Stored and sent now; the order as it stands after waiting for the broker.
    Created(Order),
    /// The same `client_order_id` and request were stored before: nothing was sent.
    Existing(Order),
}

/// Why a submission did not go through.
#[derive(Debug)]
pub enum OrderError {
    /// The `client_order_id` is stored for a different order.
    Conflict(Order),
    /// The broker session is down: stored as rejected (`broker_unavailable`).
    BrokerUnavailable(Order),
    /// No acknowledgement within `ORDER_ACK_TIMEOUT`: stored as `timed_out`.
    TimedOut(Order),
    /// PostgreSQL failed or timed out (logged and counted).
    Storage(StoreError),
}

impl From<StoreError> for OrderError {
    fn from(e: StoreError) -> Self {
        OrderError::Storage(e)
    }
}

/// How the service reaches one broker.
pub struct BrokerLink {
    pub stats: Arc<BrokerStats>,
    pub outbound: mpsc::Sender<OutboundOrder>,
}

/// An order sent and not finished.
struct Pending {
    broker: String,
    sent_at: Instant,
    acknowledged: bool,
    status: watch::Sender<String>,
}

/// The order service. Cheap to clone.
#[derive(Clone)]
pub struct Orders {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    brokers: HashMap<String, BrokerLink>,
    pending: Mutex<HashMap<String, Pending>>,
    metrics: OrderMetrics,
    errors: Errors,
    ack_timeout: Duration,
    publish: mpsc::Sender<String>,
}

/// What the `order-publisher` task needs.
pub struct Publisher {
    redis: Redis,
    queue: mpsc::Receiver<String>,
    errors: Errors,
}

impl Orders {
    pub fn new(
        db: Database,
        redis: Redis,
        brokers: HashMap<String, BrokerLink>,
        metrics: OrderMetrics,
        errors: Errors,
        ack_timeout: Duration,
    ) -> (Self, Publisher) {
        let (publish, queue) = mpsc::channel(PUBLISH_QUEUE);
        // Every series exists from the start at 0 for each broker (fixed label sets).
        for broker in brokers.keys() {
            let labels = Self::labels(broker);
            for side in [model::Side::Buy, model::Side::Sell] {
                for kind in [model::OrderType::Market, model::OrderType::Limit] {
                    let _ = metrics.submitted.get_or_create(&SubmittedLabels {
                        broker: broker.clone(),
                        side: side.as_str(),
                        r#type: kind.as_str(),
                    });
                }
            }
            let _ = metrics.acknowledged.get_or_create(&labels);
            let _ = metrics.filled.get_or_create(&labels);
            let _ = metrics.cancelled.get_or_create(&labels);
            let _ = metrics.in_flight.get_or_create(&labels);
            let _ = metrics.ack_latency.get_or_create(&labels);
            let _ = metrics.fill_latency.get_or_create(&labels);
            for reason in model::REJECT_REASONS {
                let _ = metrics.rejected.get_or_create(&BrokerReasonLabels {
                    broker: broker.clone(),
                    reason,
                });
            }
        }
        let orders = Self {
            inner: Arc::new(Inner {
                db,
                brokers,
                pending: Mutex::new(HashMap::new()),
                metrics,
                errors: errors.clone(),
                ack_timeout,
                publish,
            }),
        };
        (
            orders,
            Publisher {
                redis,
                queue,
                errors,
            },
        )
    }

    pub fn broker_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.inner.brokers.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    pub async fn get(&self, id: &str) -> Result<Option<Order>, OrderError> {
        store::by_id(&self.inner.db, id)
            .await
            .map_err(|e| self.storage_failed(e))
    }

    fn storage_failed(&self, e: StoreError) -> OrderError {
        let kind = match e {
            StoreError::Timeout(_) => ErrorKind::Timeout,
            StoreError::Database(_) => ErrorKind::Query,
        };
        self.inner.errors.inc(Component::Orders, kind);
        tracing::error!(error = %crate::core::redact::redact_text(&e.to_string()), "order storage failed");
        OrderError::Storage(e)
    }

    /// Queues a state change for publication on `orders:events`.
    fn publish(&self, order: &Order) {
        let event = json!({
            "id": order.id,
            "client_order_id": order.client_order_id,
            "broker": order.broker,
            "status": order.status,
            "reject_reason": order.reject_reason,
            "at": order.updated_at,
        })
        .to_string();
        if self.inner.publish.try_send(event).is_err() {
            self.inner
                .errors
                .inc(Component::Orders, ErrorKind::Connection);
            tracing::warn!(client_order_id = %order.client_order_id, "order event dropped: publish queue full");
        }
    }

    fn labels(broker: &str) -> BrokerLabels {
        BrokerLabels {
            broker: broker.to_owned(),
        }
    }

    /// Stores, sends, and waits for the broker (up to the ack timeout).
    pub async fn submit(&self, new: NewOrder) -> Result<Submitted, OrderError> {
        let inner = &self.inner;
        let stored = store::insert(&inner.db, &new)
            .await
            .map_err(|e| self.storage_failed(e))?;
        let Some(order) = stored else {
            let existing = store::by_client_order_id(&inner.db, &new.client_order_id)
                .await
                .map_err(|e| self.storage_failed(e))?;
            return match existing {
                Some(existing) if existing.same_request(&new) => Ok(Submitted::Existing(existing)),
                Some(existing) => Err(OrderError::Conflict(existing)),
                // Deleted in between: not something this service does.
                None => Err(OrderError::Storage(StoreError::Database(
                    sqlx::Error::RowNotFound,
                ))),
            };
        };
        self.publish(&order);

        let Some(link) = inner.brokers.get(&order.broker) else {
            return self.unavailable(order).await;
        };
        if !link.stats.state().connected() {
            return self.unavailable(order).await;
        }
        let (status, mut watcher) = watch::channel(order.status.clone());
        let sent_at = Instant::now();
        if let Ok(mut pending) = inner.pending.lock() {
            pending.insert(
                order.client_order_id.clone(),
                Pending {
                    broker: order.broker.clone(),
                    sent_at,
                    acknowledged: false,
                    status,
                },
            );
        }
        let message = ClientMessage::Order {
            client_order_id: new.client_order_id.clone(),
            symbol: new.symbol.clone(),
            side: new.side.as_str().to_owned(),
            order_type: new.order_type.as_str().to_owned(),
            quantity: new.quantity.as_str().to_owned(),
            limit_price: new.limit_price.as_ref().map(|p| p.as_str().to_owned()),
        };
        let outbound = OutboundOrder {
            message,
            deadline: sent_at + inner.ack_timeout,
        };
        if link.outbound.try_send(outbound).is_err() {
            if let Ok(mut pending) = inner.pending.lock() {
                pending.remove(&order.client_order_id);
            }
            return self.unavailable(order).await;
        }
        inner
            .metrics
            .submitted
            .get_or_create(&SubmittedLabels {
                broker: order.broker.clone(),
                side: new.side.as_str(),
                r#type: new.order_type.as_str(),
            })
            .inc();
        inner
            .metrics
            .in_flight
            .get_or_create(&Self::labels(&order.broker))
            .inc();

        // The events task resolves the order; wait a little past its ack deadline.
        let finished = |s: &String| {
            matches!(
                s.as_str(),
                "filled" | "rejected" | "timed_out" | "cancelled"
            )
        };
        let _ = tokio::time::timeout(
            inner.ack_timeout + Duration::from_millis(500),
            watcher.wait_for(finished),
        )
        .await;
        let current = store::by_client_order_id(&inner.db, &order.client_order_id)
            .await
            .map_err(|e| self.storage_failed(e))?
            .unwrap_or(order);
        if current.status == "timed_out" {
            Err(OrderError::TimedOut(current))
        } else {
            Ok(Submitted::Created(current))
        }
    }

    async fn unavailable(&self, order: Order) -> Result<Submitted, OrderError> {
        let inner = &self.inner;
        inner.errors.inc(Component::Orders, ErrorKind::Connection);
        let rejected = store::rejected(&inner.db, &order.client_order_id, "broker_unavailable")
            .await
            .map_err(|e| self.storage_failed(e))?
            .unwrap_or(order);
        self.count_rejected(&rejected.broker, "broker_unavailable");
        self.publish(&rejected);
        tracing::warn!(client_order_id = %rejected.client_order_id, broker = %rejected.broker, "order rejected: broker unavailable");
        Err(OrderError::BrokerUnavailable(rejected))
    }

    fn count_rejected(&self, broker: &str, reason: &'static str) {
        self.inner
            .metrics
            .rejected
            .get_or_create(&BrokerReasonLabels {
                broker: broker.to_owned(),
                reason,
            })
            .inc();
    }

    /// The `order-events` task: applies broker messages and ack timeouts until cancelled.
    /// Row updates go through an ordered queue: if PostgreSQL fails, they wait there and
    /// are retried on every sweep, in order, so no acknowledgement or fill is lost.
    pub async fn run_events(
        self,
        mut events: mpsc::Receiver<BrokerEvent>,
        cancel: CancellationToken,
    ) {
        let every = (self.inner.ack_timeout / 4).max(Duration::from_millis(10));
        let mut sweep = tokio::time::interval(every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unwritten: VecDeque<Unwritten> = VecDeque::new();
        // After a storage failure, writes pause until then (events keep queueing in order).
        let mut paused_until: Option<Instant> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                event = events.recv() => match event {
                    Some(event) => unwritten.extend(self.apply(event)),
                    None => break,
                },
                _ = sweep.tick() => unwritten.extend(self.expire()),
            }
            if paused_until.is_none_or(|t| Instant::now() >= t) {
                paused_until = (!self.write(&mut unwritten).await).then(|| Instant::now() + every);
            }
        }
        if !unwritten.is_empty() {
            tracing::error!(
                task = "order-events",
                count = unwritten.len(),
                "stopping with order updates not written to PostgreSQL"
            );
        }
        tracing::info!(task = "order-events", "order events task stopped");
    }

    /// Writes queued transitions front to back; stops at the first storage failure and
    /// says whether everything was written.
    async fn write(&self, unwritten: &mut VecDeque<Unwritten>) -> bool {
        while unwritten.len() > MAX_UNWRITTEN {
            if let Some(dropped) = unwritten.pop_front() {
                tracing::error!(client_order_id = %dropped.transition.client_order_id(), "order update dropped: too many unwritten while PostgreSQL is down");
            }
        }
        while let Some(next) = unwritten.front() {
            match next.transition.write(&self.inner.db).await {
                Ok(written) => {
                    if let Some(order) = written {
                        self.publish(&order);
                        match &next.waiter {
                            Some(waiter) => {
                                waiter.send_replace(order.status.clone());
                            }
                            None => self.notify_pending(&order),
                        }
                    }
                    unwritten.pop_front();
                }
                Err(e) => {
                    let _ = self.storage_failed(e);
                    return false;
                }
            }
        }
        true
    }

    /// Tells the waiter of a still-pending order about its new status.
    fn notify_pending(&self, order: &Order) {
        if let Ok(pending) = self.inner.pending.lock()
            && let Some(p) = pending.get(&order.client_order_id)
        {
            p.status.send_replace(order.status.clone());
        }
    }

    /// Removes an order that reached a final state from the pending map.
    fn take_pending(&self, client_order_id: &str) -> Option<Pending> {
        self.inner
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(client_order_id))
    }

    /// Counts a broker message and returns the row update it calls for.
    fn apply(&self, event: BrokerEvent) -> Option<Unwritten> {
        let inner = &self.inner;
        let labels = Self::labels(&event.broker);
        match event.message {
            ServerMessage::Ack {
                client_order_id,
                broker_order_id,
            } => {
                let first_ack = inner.pending.lock().ok().and_then(|mut p| {
                    let entry = p.get_mut(&client_order_id)?;
                    if entry.acknowledged {
                        return None;
                    }
                    entry.acknowledged = true;
                    Some(entry.sent_at.elapsed())
                });
                inner.metrics.acknowledged.get_or_create(&labels).inc();
                match first_ack {
                    Some(latency) => {
                        inner.metrics.in_flight.get_or_create(&labels).dec();
                        inner
                            .metrics
                            .ack_latency
                            .get_or_create(&labels)
                            .observe(latency.as_secs_f64());
                    }
                    None => {
                        tracing::warn!(%client_order_id, "acknowledgement of an order not pending (timed out, or repeated)")
                    }
                }
                Some(Unwritten {
                    transition: Transition::Accepted {
                        client_order_id,
                        broker_order_id,
                    },
                    waiter: None,
                })
            }
            ServerMessage::Fill {
                client_order_id,
                broker_order_id,
                price,
                quantity,
            } => {
                let finished = self.take_pending(&client_order_id);
                inner.metrics.filled.get_or_create(&labels).inc();
                if let Some(p) = &finished {
                    inner
                        .metrics
                        .fill_latency
                        .get_or_create(&labels)
                        .observe(p.sent_at.elapsed().as_secs_f64());
                    if !p.acknowledged {
                        inner.metrics.in_flight.get_or_create(&labels).dec();
                    }
                }
                Some(Unwritten {
                    transition: Transition::Filled {
                        client_order_id,
                        broker_order_id,
                        quantity,
                        price,
                    },
                    waiter: finished.map(|p| p.status),
                })
            }
            ServerMessage::Reject {
                client_order_id,
                reason,
            } => {
                let finished = self.take_pending(&client_order_id);
                let reason = reject_reason(&reason);
                self.count_rejected(&event.broker, reason);
                if finished.as_ref().is_some_and(|p| !p.acknowledged) {
                    inner.metrics.in_flight.get_or_create(&labels).dec();
                }
                Some(Unwritten {
                    transition: Transition::Rejected {
                        client_order_id,
                        reason,
                    },
                    waiter: finished.map(|p| p.status),
                })
            }
            _ => None,
        }
    }

    /// Orders without an ack past the timeout become `timed_out`; acknowledged orders that
    /// never filled are forgotten after [`TRACK_ACCEPTED_FOR`].
    fn expire(&self) -> Vec<Unwritten> {
        let inner = &self.inner;
        let expired: Vec<(String, Pending)> = match inner.pending.lock() {
            Ok(mut pending) => {
                let due: Vec<String> = pending
                    .iter()
                    .filter(|(_, p)| {
                        let age = p.sent_at.elapsed();
                        (!p.acknowledged && age >= inner.ack_timeout) || age >= TRACK_ACCEPTED_FOR
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                due.into_iter()
                    .filter_map(|id| pending.remove(&id).map(|p| (id, p)))
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        expired
            .into_iter()
            .filter(|(_, p)| !p.acknowledged)
            .map(|(client_order_id, p)| {
                inner.metrics.in_flight.get_or_create(&Self::labels(&p.broker)).dec();
                self.count_rejected(&p.broker, "ack_timeout");
                inner.errors.inc(Component::Orders, ErrorKind::Timeout);
                tracing::warn!(%client_order_id, broker = %p.broker, timeout_ms = inner.ack_timeout.as_millis() as u64, "order not acknowledged in time: timed out");
                Unwritten {
                    transition: Transition::TimedOut { client_order_id },
                    waiter: Some(p.status),
                }
            })
            .collect()
    }
}

/// Most row updates kept while PostgreSQL is down; the oldest are dropped beyond it.
const MAX_UNWRITTEN: usize = 100_000;

/// A state change of a stored order, to write to its row.
#[derive(Debug)]
enum Transition {
    Accepted {
        client_order_id: String,
        broker_order_id: String,
    },
    Filled {
        client_order_id: String,
        broker_order_id: String,
        quantity: String,
        price: f64,
    },
    Rejected {
        client_order_id: String,
        reason: &'static str,
    },
    TimedOut {
        client_order_id: String,
    },
}

impl Transition {
    fn client_order_id(&self) -> &str {
        match self {
            Transition::Accepted {
                client_order_id, ..
            }
            | Transition::Filled {
                client_order_id, ..
            }
            | Transition::Rejected {
                client_order_id, ..
            }
            | Transition::TimedOut { client_order_id } => client_order_id,
        }
    }

    /// The updated row, or `None` when the order is not in a state this applies to.
    async fn write(&self, db: &Database) -> Result<Option<Order>, StoreError> {
        match self {
            Transition::Accepted {
                client_order_id,
                broker_order_id,
            } => store::accepted(db, client_order_id, broker_order_id).await,
            Transition::Filled {
                client_order_id,
                broker_order_id,
                quantity,
                price,
            } => store::filled(db, client_order_id, broker_order_id, quantity, *price).await,
            Transition::Rejected {
                client_order_id,
                reason,
            } => store::rejected(db, client_order_id, reason).await,
            Transition::TimedOut { client_order_id } => store::timed_out(db, client_order_id).await,
        }
    }
}

/// A transition waiting to be written, and who waits for its outcome.
struct Unwritten {
    transition: Transition,
    waiter: Option<watch::Sender<String>>,
}

impl Publisher {
    /// The `order-publisher` task: publishes queued events until cancelled, then drains
    /// what is left (each publish bounded by the Redis timeout).
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => break,
                event = self.queue.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
            };
            self.publish(event).await;
        }
        while let Ok(event) = self.queue.try_recv() {
            self.publish(event).await;
        }
        tracing::info!(task = "order-publisher", "order publisher stopped");
    }

    async fn publish(&self, event: String) {
        let sent = self
            .redis
            .query::<i64>(redis::cmd("PUBLISH").arg(EVENTS_CHANNEL).arg(&event))
            .await;
        if let Err(e) = sent {
            self.errors.inc(Component::Orders, ErrorKind::Connection);
            tracing::warn!(task = "order-publisher", error = %format!("{e:#}"), "publishing an order event failed");
        }
    }
}
