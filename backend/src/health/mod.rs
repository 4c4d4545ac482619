//! The health check framework: what a check is, how results aggregate into one status,
//! and how they render as IETF `application/health+json`.
//!
//! Checks run only in the background refresher ([`refresher`]); endpoints read the latest
//! [`Snapshot`] and never do I/O. Each check lives in its own file beside this one.

pub mod broker;
pub mod postgres;
pub mod redis;
mod refresher;
pub mod system;
pub(crate) mod time;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value, json};

pub use refresher::{Health, HealthSettings, ServiceInfo};

/// A check's verdict. Ordered by severity, so `max` is the worse of two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// The IETF `componentType` of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentType {
    Datastore,
    Component,
    System,
}

/// One measurement a check reports under a key such as `postgres:responseTime`.
#[derive(Clone, Debug)]
pub struct Observation {
    /// `component:measurement`, one of the check's declared keys.
    pub key: &'static str,
    /// Which instance of the component, when a key has several entries (`host`, a broker).
    pub component_id: Option<String>,
    pub status: Status,
    pub value: Option<Value>,
    pub unit: Option<&'static str>,
    /// Why the status is warn/fail. May hold error text: shown only on /health/details,
    /// redacted there.
    pub output: Option<String>,
    /// Extra observed fields, rendered beside the IETF ones on /health/details.
    pub fields: Map<String, Value>,
    /// Overrides the check's criticality for this entry (one broker of several).
    pub critical: Option<bool>,
}

impl Observation {
    pub fn pass(key: &'static str) -> Self {
        Self {
            key,
            component_id: None,
            status: Status::Pass,
            value: None,
            unit: None,
            output: None,
            fields: Map::new(),
            critical: None,
        }
    }

    pub fn fail(key: &'static str, output: impl Into<String>) -> Self {
        Self::pass(key).worsen(Status::Fail, output)
    }

    pub fn value(mut self, value: impl Into<Value>, unit: &'static str) -> Self {
        self.value = Some(value.into());
        self.unit = Some(unit);
        self
    }

    pub fn field(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(name.to_owned(), value.into());
        self
    }

    pub fn critical(mut self, critical: bool) -> Self {
        self.critical = Some(critical);
        self
    }

    pub fn component(mut self, id: impl Into<String>) -> Self {
        self.component_id = Some(id.into());
        self
    }

    /// Raises the status to `status` if that is worse, appending the reason to `output`.
    pub fn worsen(mut self, status: Status, reason: impl Into<String>) -> Self {
        if status == Status::Pass {
            return self;
        }
        self.status = self.status.max(status);
        let reason = reason.into();
        self.output = Some(match self.output.take() {
            Some(prev) => format!("{prev}; {reason}"),
            None => reason,
        });
        self
    }
}

/// The future a check's run returns.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Vec<Observation>> + Send + 'a>>;

/// A health check. Implementations measure one dependency or resource and report one or
/// more observations under their declared keys. They may assume the refresher enforces
/// the timeout and catches panics, and must reuse the application's pools and clients.
pub trait Check: Send + Sync + 'static {
    fn info(&self) -> CheckInfo;
    fn run(&self) -> CheckFuture<'_>;
}

/// What the refresher needs to know about a check besides running it.
#[derive(Clone, Copy, Debug)]
pub struct CheckInfo {
    /// Every key the check may report (a timeout or panic is reported under each). The
    /// first is the check's name in logs and metrics.
    pub keys: &'static [&'static str],
    pub component_type: ComponentType,
    /// Whether a failure makes the instance not ready.
    pub critical: bool,
}

impl CheckInfo {
    pub fn name(&self) -> &'static str {
        self.keys.first().copied().unwrap_or("unnamed")
    }
}

/// The latest outcome of one check.
#[derive(Clone, Debug)]
pub struct CheckResult {
    pub name: &'static str,
    pub component_type: ComponentType,
    pub critical: bool,
    pub observations: Vec<Observation>,
    /// Wall-clock time of the measurement (the IETF `time`).
    pub measured_at: SystemTime,
    /// Monotonic time of the measurement, for staleness.
    pub measured: Instant,
    pub duration: Duration,
}

/// Every check's latest result, published by the refresher after each round.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Completed rounds; 0 until the first round is done.
    pub round: u64,
    pub results: Vec<CheckResult>,
}

/// One observation as judged at read time (staleness applied).
pub struct Judged<'a> {
    pub result: &'a CheckResult,
    pub observation: &'a Observation,
    pub status: Status,
    pub output: Option<String>,
    /// The entry's criticality (its own, else its check's).
    pub critical: bool,
}

/// A snapshot judged at one instant, with exclusions applied.
pub struct Evaluation<'a> {
    pub status: Status,
    pub entries: Vec<Judged<'a>>,
}

impl Snapshot {
    /// Judges every observation at `now`: a result older than `stale_after` is a fail.
    /// Observations whose key or component is in `exclude` are left out. A failing
    /// critical check fails the whole; any other warn or fail makes it warn.
    pub fn evaluate<'a>(
        &'a self,
        now: Instant,
        stale_after: Duration,
        exclude: &[String],
    ) -> Evaluation<'a> {
        let mut status = Status::Pass;
        let mut entries = Vec::new();
        for result in &self.results {
            let age = now.saturating_duration_since(result.measured);
            let stale = age > stale_after;
            for observation in &result.observations {
                if is_excluded(observation.key, exclude) {
                    continue;
                }
                let (obs_status, output) = if stale {
                    (
                        Status::Fail,
                        Some(format!(
                            "stale: last measured {:.1}s ago",
                            age.as_secs_f64()
                        )),
                    )
                } else {
                    (observation.status, observation.output.clone())
                };
                let critical = observation.critical.unwrap_or(result.critical);
                let contribution = match (obs_status, critical) {
                    (Status::Fail, true) => Status::Fail,
                    (Status::Pass, _) => Status::Pass,
                    _ => Status::Warn,
                };
                status = status.max(contribution);
                entries.push(Judged {
                    result,
                    observation,
                    status: obs_status,
                    output,
                    critical,
                });
            }
        }
        Evaluation { status, entries }
    }

    /// Every name `?exclude=` accepts: each key and each component (the part before `:`).
    pub fn exclusion_names(checks: &[Arc<dyn Check>]) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = checks
            .iter()
            .flat_map(|c| c.info().keys.iter().copied())
            .flat_map(|key| [component_of(key), key])
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

fn component_of(key: &str) -> &str {
    key.split_once(':').map_or(key, |(component, _)| component)
}

fn is_excluded(key: &str, exclude: &[String]) -> bool {
    exclude.iter().any(|e| e == key || e == component_of(key))
}

/// How much of each check a response shows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Public endpoints: status, component and time only; never error text.
    StatusOnly,
    /// /health/details: observed values, output (redacted) and extra fields.
    Full,
}

impl Evaluation<'_> {
    /// The IETF `checks` object: `key` -> array of entries.
    pub fn render_checks(&self, detail: Detail) -> Map<String, Value> {
        let mut checks = Map::new();
        for judged in &self.entries {
            let obs = judged.observation;
            let mut entry = Map::new();
            if let Some(id) = &obs.component_id {
                entry.insert("componentId".into(), json!(id));
            }
            entry.insert("componentType".into(), json!(judged.result.component_type));
            if detail == Detail::Full {
                if let Some(value) = &obs.value {
                    entry.insert("observedValue".into(), value.clone());
                }
                if let Some(unit) = obs.unit {
                    entry.insert("observedUnit".into(), json!(unit));
                }
            }
            entry.insert("status".into(), json!(judged.status));
            entry.insert(
                "time".into(),
                json!(time::rfc3339(judged.result.measured_at)),
            );
            if detail == Detail::Full {
                if let Some(output) = &judged.output {
                    entry.insert(
                        "output".into(),
                        json!(crate::core::redact::redact_text(output)),
                    );
                }
                entry.insert("critical".into(), json!(judged.critical));
                entry.insert(
                    "durationMs".into(),
                    json!(round2(judged.result.duration.as_secs_f64() * 1000.0)),
                );
                for (name, value) in &obs.fields {
                    entry.insert(name.clone(), value.clone());
                }
            }
            match checks.get_mut(obs.key) {
                Some(Value::Array(list)) => list.push(Value::Object(entry)),
                _ => {
                    checks.insert(obs.key.to_owned(), Value::Array(vec![Value::Object(entry)]));
                }
            }
        }
        checks
    }

    /// One line per observation, Kubernetes `/readyz?verbose` style, without error text.
    pub fn verbose_notes(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|j| {
                let name = match &j.observation.component_id {
                    Some(id) => format!("{}[{id}]", j.observation.key),
                    None => j.observation.key.to_owned(),
                };
                let mark = if j.status == Status::Pass { '+' } else { '-' };
                let critical = if j.critical { "" } else { " (non-critical)" };
                format!("[{mark}]{name} {}{critical}", j.status.as_str())
            })
            .collect()
    }

    /// The names of the observations that are not passing, for a short public `output`.
    pub fn failing_names(&self, only_critical: bool) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self
            .entries
            .iter()
            .filter(|j| j.status == Status::Fail && (!only_critical || j.critical))
            .map(|j| j.observation.key)
            .collect();
        names.dedup();
        names
    }
}

/// Rounds to two decimals for display.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(
        name: &'static str,
        critical: bool,
        obs: Vec<Observation>,
        age: Duration,
    ) -> CheckResult {
        CheckResult {
            name,
            component_type: ComponentType::Datastore,
            critical,
            observations: obs,
            measured_at: SystemTime::now(),
            measured: Instant::now() - age,
            duration: Duration::from_millis(1),
        }
    }

    fn snapshot(results: Vec<CheckResult>) -> Snapshot {
        Snapshot { round: 1, results }
    }

    const STALE: Duration = Duration::from_secs(15);

    #[test]
    fn all_passing_is_pass() {
        let s = snapshot(vec![result(
            "a:x",
            true,
            vec![Observation::pass("a:x")],
            Duration::ZERO,
        )]);
        assert_eq!(s.evaluate(Instant::now(), STALE, &[]).status, Status::Pass);
    }

    #[test]
    fn critical_failure_fails_and_non_critical_failure_warns() {
        let critical = result(
            "a:x",
            true,
            vec![Observation::fail("a:x", "down")],
            Duration::ZERO,
        );
        let optional = result(
            "b:y",
            false,
            vec![Observation::fail("b:y", "down")],
            Duration::ZERO,
        );
        let s = snapshot(vec![critical.clone()]);
        assert_eq!(s.evaluate(Instant::now(), STALE, &[]).status, Status::Fail);
        let s = snapshot(vec![optional]);
        assert_eq!(s.evaluate(Instant::now(), STALE, &[]).status, Status::Warn);
    }

    #[test]
    fn critical_warning_only_warns() {
        let obs = Observation::pass("a:x").worsen(Status::Warn, "slow");
        let s = snapshot(vec![result("a:x", true, vec![obs], Duration::ZERO)]);
        assert_eq!(s.evaluate(Instant::now(), STALE, &[]).status, Status::Warn);
    }

    #[test]
    fn stale_results_fail() {
        let s = snapshot(vec![result(
            "a:x",
            true,
            vec![Observation::pass("a:x")],
            Duration::from_secs(16),
        )]);
        let e = s.evaluate(Instant::now(), STALE, &[]);
        assert_eq!(e.status, Status::Fail);
        assert!(
            e.entries[0]
                .output
                .as_deref()
                .unwrap_or("")
                .starts_with("stale")
        );
    }

    #[test]
    fn exclusion_by_component_or_key() {
        let s = snapshot(vec![result(
            "redis:connection",
            true,
            vec![
                Observation::fail("redis:connection", "down"),
                Observation::fail("redis:responseTime", "down"),
            ],
            Duration::ZERO,
        )]);
        let now = Instant::now();
        assert_eq!(
            s.evaluate(now, STALE, &["redis".into()]).status,
            Status::Pass
        );
        assert_eq!(
            s.evaluate(now, STALE, &["redis:connection".into()]).status,
            Status::Fail
        );
    }

    #[test]
    fn worsen_keeps_the_worst_status_and_every_reason() {
        let obs = Observation::pass("a:x")
            .worsen(Status::Fail, "one")
            .worsen(Status::Warn, "two");
        assert_eq!(obs.status, Status::Fail);
        assert_eq!(obs.output.as_deref(), Some("one; two"));
    }

    #[test]
    fn public_rendering_never_shows_output() {
        let s = snapshot(vec![result(
            "a:x",
            true,
            vec![Observation::fail("a:x", "password=hunter2 rejected").value(1, "ms")],
            Duration::ZERO,
        )]);
        let e = s.evaluate(Instant::now(), STALE, &[]);
        let public = Value::Object(e.render_checks(Detail::StatusOnly)).to_string();
        assert!(
            !public.contains("hunter2") && !public.contains("output"),
            "{public}"
        );
        let full = Value::Object(e.render_checks(Detail::Full)).to_string();
        assert!(
            full.contains("password=****") && !full.contains("hunter2"),
            "{full}"
        );
    }
}
