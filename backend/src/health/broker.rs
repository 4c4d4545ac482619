//! `broker:connection`: one entry per broker (`componentId` = its name), read from the
//! supervisors' shared stats without I/O.
//!
//! live -> pass; stale data (transport alive) -> warn; disconnected -> warn for the grace
//! period, then fail; error rate over the window > 1 % warn, > 5 % fail. Each broker is
//! critical only when named in `BROKER_CRITICAL`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, json};

use super::{Check, CheckFuture, CheckInfo, ComponentType, Observation, Status, round2, time};
use crate::brokers::stats::{BrokerStats, State};

/// Error-rate thresholds, in percent.
const ERROR_RATE_WARN: f64 = 1.0;
const ERROR_RATE_FAIL: f64 = 5.0;

pub struct BrokerCheck {
    /// (stats, critical) per broker.
    pub brokers: Vec<(Arc<BrokerStats>, bool)>,
    pub stale_after: Duration,
    pub down_grace: Duration,
}

fn secs(d: Option<Duration>) -> serde_json::Value {
    json!(d.map(|d| round2(d.as_secs_f64())))
}

impl BrokerCheck {
    fn observe(&self, stats: &BrokerStats, critical: bool) -> Observation {
        let v = stats.view();
        let errors: Map<String, serde_json::Value> = v
            .errors
            .iter()
            .map(|(k, n)| ((*k).to_owned(), json!(n)))
            .collect();
        let mut obs = Observation::pass("broker:connection")
            .component(stats.name())
            .critical(critical)
            .value(v.state.as_str(), "state")
            .field("state", v.state.as_str())
            .field(
                "connectedSince",
                json!(v.connected_since.map(time::rfc3339)),
            )
            .field(
                "lastMessageTime",
                json!(v.last_message_at.map(time::rfc3339)),
            )
            .field("lastMessageAgeSeconds", secs(v.last_frame_age))
            .field("lastDataAgeSeconds", secs(v.last_data_age))
            .field("messagesReceived", v.messages)
            .field("reconnects", v.reconnects)
            .field("errors", errors)
            .field("errorRatePercent", json!(v.error_rate.map(round2)))
            .field(
                "errorWindow",
                json!({"messages": v.window_messages, "errors": v.window_errors}),
            )
            .field("lastError", json!(v.last_error))
            .field(
                "pingRttMs",
                json!(v.ping_rtt.map(|d| round2(d.as_secs_f64() * 1000.0))),
            )
            .field(
                "recentBackoffMs",
                json!(
                    v.recent_backoffs
                        .iter()
                        .map(|d| d.as_millis() as u64)
                        .collect::<Vec<_>>()
                ),
            );
        if v.state.connected() {
            if let Some(age) = v.last_data_age.filter(|a| *a > self.stale_after) {
                obs = obs.worsen(
                    Status::Warn,
                    format!(
                        "stale: no data for {:.1}s (stale after {:.1}s), transport alive",
                        age.as_secs_f64(),
                        self.stale_after.as_secs_f64()
                    ),
                );
            }
        } else {
            let down = v.disconnected_for.unwrap_or_default();
            let status = if v.state == State::Stopped || down > self.down_grace {
                Status::Fail
            } else {
                Status::Warn
            };
            obs = obs.worsen(
                status,
                format!(
                    "{} for {:.1}s (fail after {:.1}s)",
                    v.state.as_str(),
                    down.as_secs_f64(),
                    self.down_grace.as_secs_f64()
                ),
            );
        }
        if let Some(rate) = v.error_rate {
            if rate > ERROR_RATE_FAIL {
                obs = obs.worsen(
                    Status::Fail,
                    format!("error rate {rate:.1}% (fail above {ERROR_RATE_FAIL}%)"),
                );
            } else if rate > ERROR_RATE_WARN {
                obs = obs.worsen(
                    Status::Warn,
                    format!("error rate {rate:.1}% (warn above {ERROR_RATE_WARN}%)"),
                );
            }
        }
        obs
    }
}

impl Check for BrokerCheck {
    fn info(&self) -> CheckInfo {
        CheckInfo {
            keys: &["broker:connection"],
            component_type: ComponentType::Component,
            // Critical when any broker is (for a timeout or panic of the check itself).
            critical: self.brokers.iter().any(|(_, critical)| *critical),
        }
    }
    fn run(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            self.brokers
                .iter()
                .map(|(stats, critical)| self.observe(stats, *critical))
                .collect()
        })
    }
}
