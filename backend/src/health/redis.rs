//! Redis checks: `redis:connection` + `redis:responseTime` (PING), `redis:memory` and
//! `redis:connections` (from `INFO`), and `redis:pubsub` (subscriber up, and a probe
//! message published on this instance's channel comes back).
//!
//! `INFO` is parsed leniently: a missing or malformed field is reported as a warning with
//! the field's name, never a panic.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::{Check, CheckFuture, CheckInfo, ComponentType, Observation, Status, round2};
use crate::redis_client::Redis;
use crate::redis_client::subscriber::{ProbeOutcome, Subscriber};

/// `redis:connection` and `redis:responseTime`.
pub struct ConnectionCheck {
    pub redis: Redis,
    pub latency_warn: Duration,
    pub critical: bool,
}

impl Check for ConnectionCheck {
    fn info(&self) -> CheckInfo {
        CheckInfo {
            keys: &["redis:connection", "redis:responseTime"],
            component_type: ComponentType::Datastore,
            critical: self.critical,
        }
    }
    fn run(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let started = Instant::now();
            let reply = self.redis.query::<String>(&redis::cmd("PING")).await;
            let elapsed = started.elapsed();
            let ms = round2(elapsed.as_secs_f64() * 1000.0);
            let target = self.redis.display_url();
            match reply {
                Ok(_) => {
                    let mut latency = Observation::pass("redis:responseTime").value(ms, "ms");
                    if elapsed > self.latency_warn {
                        latency = latency.worsen(
                            Status::Warn,
                            format!(
                                "PING took {ms}ms (warn above {}ms)",
                                self.latency_warn.as_millis()
                            ),
                        );
                    }
                    vec![
                        Observation::pass("redis:connection")
                            .value(true, "connected")
                            .field("target", target),
                        latency,
                    ]
                }
                Err(e) => {
                    let reason = format!("PING failed: {e:#}");
                    vec![
                        Observation::fail("redis:connection", reason.clone())
                            .value(false, "connected")
                            .field("target", target),
                        Observation::fail("redis:responseTime", reason).value(ms, "ms"),
                    ]
                }
            }
        })
    }
}

/// `redis:memory`: used_memory against maxmemory.
pub struct MemoryCheck {
    pub redis: Redis,
    pub warn_percent: f64,
    pub fail_percent: f64,
    pub critical: bool,
}

impl Check for MemoryCheck {
    fn info(&self) -> CheckInfo {
        CheckInfo {
            keys: &["redis:memory"],
            component_type: ComponentType::Datastore,
            critical: self.critical,
        }
    }
    fn run(&self) -> CheckFuture<'_> {
        Box::pin(observe_info(
            &self.redis,
            "redis:memory",
            "memory",
            |info| memory_observation(info, self.warn_percent, self.fail_percent),
        ))
    }
}

/// Runs `INFO <section>` and judges it with `observe`; when the command fails, `key`
/// fails with the error.
async fn observe_info(
    redis: &Redis,
    key: &'static str,
    section: &str,
    observe: impl FnOnce(&Info<'_>) -> Observation,
) -> Vec<Observation> {
    match redis.query::<String>(redis::cmd("INFO").arg(section)).await {
        Ok(text) => vec![observe(&Info::parse(&text))],
        Err(e) => vec![Observation::fail(
            key,
            format!("INFO {section} failed: {e:#}"),
        )],
    }
}

fn memory_observation(info: &Info<'_>, warn: f64, fail: f64) -> Observation {
    let mut obs = Observation::pass("redis:memory");
    let mut problems = Vec::new();
    let used = info.number("used_memory", &mut problems);
    let max = info.number("maxmemory", &mut problems);
    let rss = info.number("used_memory_rss", &mut problems);
    let fragmentation = info.float("mem_fragmentation_ratio", &mut problems);
    if let Some(used) = used {
        obs = obs.value(used, "bytes");
    }
    obs = obs
        .field("usedMemory", json!(used))
        .field("maxMemory", json!(max))
        .field("usedMemoryRss", json!(rss))
        .field("fragmentationRatio", json!(fragmentation));
    match (used, max) {
        (Some(used), Some(max)) if max > 0 => {
            let percent = used as f64 * 100.0 / max as f64;
            obs = obs.field("usedPercent", round2(percent));
            if percent > fail {
                obs = obs.worsen(
                    Status::Fail,
                    format!("{:.1}% of maxmemory used (fail above {fail}%)", percent),
                );
            } else if percent > warn {
                obs = obs.worsen(
                    Status::Warn,
                    format!("{:.1}% of maxmemory used (warn above {warn}%)", percent),
                );
            }
        }
        (_, Some(0)) => {
            obs = obs
                .field("usedPercent", json!(null))
                .field("note", "no maxmemory limit set")
        }
        _ => {}
    }
    for problem in problems {
        obs = obs.worsen(Status::Warn, problem);
    }
    obs
}

/// `redis:connections`: connected and blocked clients against maxclients.
pub struct ClientsCheck {
    pub redis: Redis,
    pub warn_percent: f64,
    pub critical: bool,
}

impl Check for ClientsCheck {
    fn info(&self) -> CheckInfo {
        CheckInfo {
            keys: &["redis:connections"],
            component_type: ComponentType::Datastore,
            critical: self.critical,
        }
    }
    fn run(&self) -> CheckFuture<'_> {
        Box::pin(observe_info(
            &self.redis,
            "redis:connections",
            "clients",
            |info| clients_observation(info, self.warn_percent),
        ))
    }
}

fn clients_observation(info: &Info<'_>, warn: f64) -> Observation {
    let mut problems = Vec::new();
    let connected = info.number("connected_clients", &mut problems);
    let blocked = info.number("blocked_clients", &mut problems);
    let max = info.number("maxclients", &mut problems);
    let mut obs = Observation::pass("redis:connections")
        .field("connectedClients", json!(connected))
        .field("blockedClients", json!(blocked))
        .field("maxClients", json!(max));
    if let Some(connected) = connected {
        obs = obs.value(connected, "clients");
    }
    if let (Some(connected), Some(max)) = (connected, max)
        && max > 0
    {
        let percent = connected as f64 * 100.0 / max as f64;
        obs = obs.field("usedPercent", round2(percent));
        if percent > warn {
            obs = obs.worsen(
                Status::Warn,
                format!("{connected} of {max} clients ({percent:.1}%, warn above {warn}%)"),
            );
        }
    }
    for problem in problems {
        obs = obs.worsen(Status::Warn, problem);
    }
    obs
}

/// `redis:pubsub`: subscriber connected, and a probe's round trip.
pub struct PubSubCheck {
    pub redis: Redis,
    pub subscriber: Subscriber,
    pub roundtrip_warn: Duration,
    /// How long to wait for the probe to come back.
    pub wait: Duration,
    pub critical: bool,
}

impl Check for PubSubCheck {
    fn info(&self) -> CheckInfo {
        CheckInfo {
            keys: &["redis:pubsub"],
            component_type: ComponentType::Component,
            critical: self.critical,
        }
    }
    fn run(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let outcome = self.subscriber.probe(&self.redis, self.wait).await;
            let view = self.subscriber.view();
            let mut obs = Observation::pass("redis:pubsub")
                .field("subscriberConnected", view.connected)
                .field("channels", view.channels)
                .field("disconnects", view.disconnects)
                .field("orderEventsReceived", view.order_events)
                .field("probeChannel", self.subscriber.probe_channel())
                .field(
                    "lastMessageAgeSeconds",
                    json!(view.last_message_age.map(|a| round2(a.as_secs_f64()))),
                );
            match outcome {
                ProbeOutcome::RoundTrip(rtt) => {
                    let ms = round2(rtt.as_secs_f64() * 1000.0);
                    obs = obs.value(ms, "ms");
                    if rtt > self.roundtrip_warn {
                        obs = obs.worsen(
                            Status::Warn,
                            format!(
                                "probe round trip {ms}ms (warn above {}ms)",
                                self.roundtrip_warn.as_millis()
                            ),
                        );
                    }
                }
                ProbeOutcome::SubscriberDown => {
                    obs = obs.worsen(Status::Fail, "subscriber not connected")
                }
                ProbeOutcome::PublishFailed(e) => {
                    obs = obs.worsen(Status::Fail, format!("publishing the probe failed: {e}"))
                }
                ProbeOutcome::Lost { waited, receivers } => obs = obs.worsen(
                    Status::Fail,
                    format!(
                        "probe not received within {}ms (server reported {receivers} receivers)",
                        waited.as_millis()
                    ),
                ),
            }
            vec![obs]
        })
    }
}

/// The `field:value` lines of an `INFO` reply.
struct Info<'a> {
    fields: HashMap<&'a str, &'a str>,
}

impl<'a> Info<'a> {
    fn parse(text: &'a str) -> Self {
        let fields = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(|line| line.split_once(':'))
            .collect();
        Self { fields }
    }

    fn number(&self, name: &str, problems: &mut Vec<String>) -> Option<u64> {
        let raw = self.raw(name, problems)?;
        raw.parse()
            .map_err(|_| problems.push(format!("INFO field {name} is not a whole number: {raw:?}")))
            .ok()
    }

    fn float(&self, name: &str, problems: &mut Vec<String>) -> Option<f64> {
        let raw = self.raw(name, problems)?;
        raw.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .or_else(|| {
                problems.push(format!("INFO field {name} is not a number: {raw:?}"));
                None
            })
    }

    fn raw(&self, name: &str, problems: &mut Vec<String>) -> Option<&'a str> {
        let value = self.fields.get(name).copied();
        if value.is_none() {
            problems.push(format!("INFO field {name} missing"));
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMORY: &str = "# Memory\r\nused_memory:800\r\nused_memory_rss:2000\r\nmaxmemory:1000\r\nmem_fragmentation_ratio:2.50\r\n";

    #[test]
    fn memory_thresholds() {
        let obs = memory_observation(&Info::parse(MEMORY), 80.0, 95.0);
        assert_eq!(obs.status, Status::Pass, "{:?}", obs.output);
        let obs = memory_observation(&Info::parse(MEMORY), 70.0, 95.0);
        assert_eq!(obs.status, Status::Warn);
        let obs = memory_observation(&Info::parse(MEMORY), 50.0, 75.0);
        assert_eq!(obs.status, Status::Fail);
        assert_eq!(obs.fields["usedPercent"], json!(80.0));
    }

    #[test]
    fn no_maxmemory_means_no_ratio() {
        let text =
            "used_memory:800\nused_memory_rss:900\nmaxmemory:0\nmem_fragmentation_ratio:1.1\n";
        let obs = memory_observation(&Info::parse(text), 80.0, 95.0);
        assert_eq!(obs.status, Status::Pass);
        assert_eq!(obs.fields["usedPercent"], json!(null));
    }

    #[test]
    fn missing_and_odd_fields_are_reported_not_panicked_on() {
        let text = "used_memory:lots\nmaxmemory:1000\n";
        let obs = memory_observation(&Info::parse(text), 80.0, 95.0);
        assert_eq!(obs.status, Status::Warn);
        let output = obs.output.unwrap_or_default();
        assert!(
            output.contains("used_memory is not a whole number"),
            "{output}"
        );
        assert!(output.contains("used_memory_rss missing"), "{output}");
        let obs = clients_observation(&Info::parse(""), 80.0);
        assert_eq!(obs.status, Status::Warn);
        let obs = clients_observation(
            &Info::parse(":::\n\u{0}garbage\nconnected_clients:-3"),
            80.0,
        );
        assert_eq!(obs.status, Status::Warn);
    }

    #[test]
    fn clients_thresholds() {
        let text = "connected_clients:900\nblocked_clients:1\nmaxclients:1000\n";
        assert_eq!(
            clients_observation(&Info::parse(text), 80.0).status,
            Status::Warn
        );
        let text = "connected_clients:10\nblocked_clients:0\nmaxclients:1000\n";
        assert_eq!(
            clients_observation(&Info::parse(text), 80.0).status,
            Status::Pass
        );
    }
}
