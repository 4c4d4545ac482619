//! Broker connections: one supervised WebSocket session per configured broker, and the
//! embedded paper broker started in-process when `BROKERS` is unset.
//!
//! Each broker's [`stats::BrokerStats`] is shared with the `broker:connection` check and
//! the metrics, which read it without I/O.

pub mod session;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use paper_broker::PaperBroker;
use paper_broker::protocol::{ClientMessage, ServerMessage};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{BrokerSource, BrokerSpec, Config};
use crate::core::metrics::BrokerMetrics;
use crate::core::tasks::Tasks;
use session::{SessionSettings, Supervisor};
use stats::BrokerStats;

/// Orders waiting to be written to one broker's session.
const OUTBOUND_QUEUE: usize = 1024;

/// An order for a broker session to send.
#[derive(Debug)]
pub struct OutboundOrder {
    pub message: ClientMessage,
    /// Not sent after this (its ack timeout would already have expired).
    pub deadline: Instant,
}

/// An order reply (ack, fill, reject) received from a broker.
#[derive(Debug)]
pub struct BrokerEvent {
    pub broker: String,
    pub message: ServerMessage,
}

/// One configured broker and its live stats.
pub struct Broker {
    pub spec: BrokerSpec,
    pub stats: Arc<BrokerStats>,
    /// Queue into the broker's session.
    pub outbound: mpsc::Sender<OutboundOrder>,
    /// The session's end of `outbound`, handed to the supervisor at spawn.
    outbound_rx: Option<mpsc::Receiver<OutboundOrder>>,
}

/// Every configured broker.
pub struct Brokers {
    brokers: Vec<Broker>,
    settings: SessionSettings,
    /// The in-process paper broker, when `BROKERS` is unset.
    embedded: Option<PaperBroker>,
}

impl Brokers {
    /// Reads the broker settings and, when `BROKERS` is unset, starts the paper broker on a
    /// free loopback port. Nothing connects until [`Brokers::spawn`].
    pub async fn from_config(config: &Config, metrics: &BrokerMetrics) -> anyhow::Result<Self> {
        let (specs, embedded) = match config.broker_source()? {
            BrokerSource::Listed(specs) => (specs, None),
            BrokerSource::Embedded { critical } => {
                let paper = PaperBroker::start(paper_broker::Config::default())
                    .await
                    .context("starting the embedded paper broker")?;
                let spec = BrokerSpec {
                    name: "paper".into(),
                    url: paper.ws_url(),
                    critical,
                };
                tracing::info!(url = %spec.url, "embedded paper broker started (BROKERS is unset)");
                (vec![spec], Some(paper))
            }
        };
        let brokers = specs
            .into_iter()
            .map(|spec| {
                let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
                Broker {
                    stats: Arc::new(BrokerStats::new(
                        &spec.name,
                        config.broker_error_window,
                        metrics.clone(),
                    )),
                    spec,
                    outbound,
                    outbound_rx: Some(outbound_rx),
                }
            })
            .collect();
        Ok(Self {
            brokers,
            settings: SessionSettings {
                heartbeat: config.broker_heartbeat_interval,
                stale_after: config.broker_stale_after,
                connect_timeout: config.broker_connect_timeout,
                symbols: config.symbols()?,
            },
            embedded,
        })
    }

    pub fn list(&self) -> &[Broker] {
        &self.brokers
    }

    /// Starts one owned supervisor task per broker; order replies go to `events`.
    pub fn spawn(&mut self, tasks: &mut Tasks, events: &mpsc::Sender<BrokerEvent>) {
        for broker in &mut self.brokers {
            let Some(outbound) = broker.outbound_rx.take() else {
                continue; // already running
            };
            let supervisor = Supervisor {
                stats: Arc::clone(&broker.stats),
                url: broker.spec.url.clone(),
                settings: self.settings.clone(),
                outbound,
                events: events.clone(),
            };
            tasks.spawn("broker", move |cancel| supervisor.run(cancel));
        }
    }

    /// Stops the embedded paper broker (after the supervisors have closed their sessions).
    pub async fn stop(self, timeout: Duration) {
        if let Some(paper) = self.embedded {
            let _ = tokio::time::timeout(timeout, paper.stop()).await;
        }
    }
}
