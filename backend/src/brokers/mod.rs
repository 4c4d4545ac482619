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

use crate::config::{BrokerSource, BrokerSpec, Config};
use crate::core::metrics::BrokerMetrics;
use crate::core::tasks::Tasks;
use session::{SessionSettings, Supervisor};
use stats::BrokerStats;

/// One configured broker and its live stats.
pub struct Broker {
    pub spec: BrokerSpec,
    pub stats: Arc<BrokerStats>,
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
            .map(|spec| Broker {
                stats: Arc::new(BrokerStats::new(
                    &spec.name,
                    config.broker_error_window,
                    metrics.clone(),
                )),
                spec,
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

    /// The embedded paper broker's address, if it runs.
    pub fn embedded(&self) -> Option<&PaperBroker> {
        self.embedded.as_ref()
    }

    /// Starts one owned supervisor task per broker.
    pub fn spawn(&self, tasks: &mut Tasks) {
        for broker in &self.brokers {
            let supervisor = Supervisor {
                stats: Arc::clone(&broker.stats),
                url: broker.spec.url.clone(),
                settings: self.settings.clone(),
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
