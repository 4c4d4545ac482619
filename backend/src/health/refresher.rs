//! The background refresher and the [`Health`] handle the endpoints read.
//!
//! Every interval (with ±10 % jitter) the refresher runs all checks concurrently, each in
//! its own task under the hard timeout, so a hanging check is cut off and a panicking one
//! is reported as failed; neither stops the refresher. The new [`Snapshot`] is published
//! through a `watch` channel; readers never wait on I/O. Each status change is logged once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{Check, CheckInfo, CheckResult, Evaluation, Observation, Snapshot, Status};
use crate::core::metrics::HealthMetrics;

/// Identity of this instance, shown in every health body.
#[derive(Clone, Debug)]
pub struct ServiceInfo {
    pub version: &'static str,
    pub release_id: String,
    /// Unique per running process: `<hostname>:<pid>:<random>`.
    pub service_id: String,
}

impl ServiceInfo {
    pub fn current() -> Self {
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        Self {
            version: env!("CARGO_PKG_VERSION"),
            release_id: env!("CARGO_PKG_VERSION").to_owned(),
            service_id: format!("{host}:{}:{:04x}", std::process::id(), fastrand::u16(..)),
        }
    }
}

/// Timing of the refresher.
#[derive(Clone, Copy, Debug)]
pub struct HealthSettings {
    pub interval: Duration,
    pub timeout: Duration,
    /// A result (or the refresher's heartbeat) older than this counts as failed.
    pub stale_after: Duration,
}

/// Cheap-to-clone handle on the health state: the latest snapshot and the lifecycle flags.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    checks: Vec<Arc<dyn Check>>,
    settings: HealthSettings,
    info: ServiceInfo,
    metrics: HealthMetrics,
    snapshot: watch::Sender<Arc<Snapshot>>,
    started: Instant,

    /// Milliseconds since `started` at the refresher's last sign of life.
    heartbeat_ms: AtomicU64,
    migrations_ready: AtomicBool,
    /// Rounds completed when migrations became ready: start-up waits for a later one.
    ready_after_round: AtomicU64,
    /// Wakes the refresher for an immediate round.
    refresh_now: Notify,
    /// A round is being measured right now.
    in_round: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    pub fn new(
        checks: Vec<Arc<dyn Check>>,
        settings: HealthSettings,
        info: ServiceInfo,
        metrics: HealthMetrics,
    ) -> Self {
        let (snapshot, _) = watch::channel(Arc::new(Snapshot::default()));
        Self {
            inner: Arc::new(Inner {
                checks,
                settings,
                info,
                metrics,
                snapshot,
                started: Instant::now(),

                heartbeat_ms: AtomicU64::new(0),
                migrations_ready: AtomicBool::new(false),
                ready_after_round: AtomicU64::new(0),
                refresh_now: Notify::new(),
                in_round: AtomicBool::new(false),
                draining: AtomicBool::new(false),
            }),
        }
    }

    pub fn info(&self) -> &ServiceInfo {
        &self.inner.info
    }

    pub fn settings(&self) -> HealthSettings {
        self.inner.settings
    }

    pub fn checks(&self) -> &[Arc<dyn Check>] {
        &self.inner.checks
    }

    /// The latest published snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot.borrow().clone()
    }

    /// A receiver that sees every published snapshot (used to wait for a round).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.inner.snapshot.subscribe()
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Called once migrations are applied (or when the service does not run them).
    /// Start-up then completes after the next round, which starts at once: results
    /// measured before the schema existed must not count.
    pub fn set_migrations_ready(&self) {
        // A round in flight may have measured before the schema existed: skip it too.
        let round = self.inner.snapshot.borrow().round
            + u64::from(self.inner.in_round.load(Ordering::Acquire));
        self.inner.ready_after_round.store(round, Ordering::Release);
        self.inner.migrations_ready.store(true, Ordering::Release);
        self.inner.refresh_now.notify_one();
    }

    /// Why start-up is not complete yet, or `None` once it is.
    pub fn startup_pending(&self) -> Option<&'static str> {
        if !self.inner.migrations_ready.load(Ordering::Acquire) {
            Some("starting: database migrations not applied yet")
        } else if self.inner.snapshot.borrow().round
            <= self.inner.ready_after_round.load(Ordering::Acquire)
        {
            Some("starting: first round of health checks not done yet")
        } else {
            None
        }
    }

    /// Readiness turns 503 from now on; liveness is unaffected.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Why `/health/ready` answers 503 given `evaluation`, or `None` when it answers 200:
    /// draining first, then start-up, then the failing critical checks. Never error text.
    pub fn not_ready_reason(&self, evaluation: &Evaluation) -> Option<String> {
        if self.is_draining() {
            Some("draining: shutting down".to_owned())
        } else if let Some(reason) = self.startup_pending() {
            Some(reason.to_owned())
        } else if evaluation.status == Status::Fail {
            let failing = evaluation.failing_names(true).join(", ");
            Some(format!("not ready: failing {failing}"))
        } else {
            None
        }
    }

    /// Whether a plain `/health/ready` would answer 200 now.
    pub fn is_ready(&self) -> bool {
        let snapshot = self.snapshot();
        let evaluation = snapshot.evaluate(Instant::now(), self.inner.settings.stale_after, &[]);
        self.not_ready_reason(&evaluation).is_none()
    }

    /// `Err(reason)` when the refresher has shown no sign of life for `stale_after`.
    pub fn liveness(&self) -> Result<(), String> {
        let now_ms = self.inner.started.elapsed().as_millis() as u64;
        let age = Duration::from_millis(
            now_ms.saturating_sub(self.inner.heartbeat_ms.load(Ordering::Acquire)),
        );
        if age > self.inner.settings.stale_after {
            Err(format!(
                "health refresher silent for {:.1}s",
                age.as_secs_f64()
            ))
        } else {
            Ok(())
        }
    }

    fn beat(&self) {
        let ms = self.inner.started.elapsed().as_millis() as u64;
        self.inner.heartbeat_ms.store(ms, Ordering::Release);
    }

    /// Runs rounds until `cancel` fires. The first round starts at once.
    pub async fn run_refresher(self, cancel: CancellationToken) {
        let interval = self.inner.settings.interval;
        tracing::info!(
            task = "health-refresher",
            interval_ms = interval.as_millis() as u64,
            checks = self.inner.checks.len(),
            "health refresher started"
        );
        loop {
            self.beat();
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.run_round() => {}
            }
            self.beat();
            let jitter = 0.9 + fastrand::f64() * 0.2;
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(interval.mul_f64(jitter)) => {}
                () = self.inner.refresh_now.notified() => {}
            }
        }
        tracing::info!(task = "health-refresher", "health refresher stopped");
    }

    /// Runs every check once, concurrently, and publishes the new snapshot.
    pub async fn run_round(&self) {
        self.inner.in_round.store(true, Ordering::Release);
        let timeout = self.inner.settings.timeout;
        let handles: Vec<_> = self
            .inner
            .checks
            .iter()
            .map(|check| {
                let check = Arc::clone(check);
                let started = Instant::now();
                let handle = tokio::spawn(async move {
                    let observations = tokio::time::timeout(timeout, check.run()).await;
                    (observations, started.elapsed())
                });
                (started, handle)
            })
            .collect();

        let mut results = Vec::with_capacity(handles.len());
        for (check, (started, mut handle)) in self.inner.checks.iter().zip(handles) {
            let info = check.info();
            // The inner timeout cancels a hanging future; this outer one guards against a
            // check that blocks its thread instead of yielding.
            let outer = timeout + Duration::from_millis(500);
            let (observations, duration) =
                match tokio::time::timeout_at(started + outer, &mut handle).await {
                    Ok(Ok((Ok(observations), duration))) => (observations, duration),
                    Ok(Ok((Err(_), duration))) => (
                        failed_all(info, &format!("timed out after {}ms", timeout.as_millis())),
                        duration,
                    ),
                    Ok(Err(join_error)) => {
                        let reason = if join_error.is_panic() {
                            "check panicked"
                        } else {
                            "check was cancelled"
                        };
                        tracing::error!(check = info.name(), "{reason}");
                        (failed_all(info, reason), started.elapsed())
                    }
                    Err(_) => {
                        handle.abort();
                        (
                            failed_all(info, "check blocked past its timeout"),
                            started.elapsed(),
                        )
                    }
                };
            results.push(CheckResult {
                name: info.name(),
                component_type: info.component_type,
                critical: info.critical,
                observations,
                measured_at: SystemTime::now(),
                measured: Instant::now(),
                duration,
            });
        }

        let previous = self.snapshot();
        log_changes(&previous, &results);
        self.record_metrics(&results);
        let next = Snapshot {
            round: previous.round + 1,
            results,
        };
        self.inner.snapshot.send_replace(Arc::new(next));
        self.inner.in_round.store(false, Ordering::Release);
    }
}

impl Health {
    /// Exports each check's duration and each key's status (the worst of its entries).
    fn record_metrics(&self, results: &[CheckResult]) {
        let metrics = &self.inner.metrics;
        for result in results {
            metrics.observe_duration(result.name, result.duration.as_secs_f64());
            let mut worst: Vec<(&'static str, Status)> = Vec::new();
            for obs in &result.observations {
                match worst.iter_mut().find(|(key, _)| *key == obs.key) {
                    Some((_, status)) => *status = (*status).max(obs.status),
                    None => worst.push((obs.key, obs.status)),
                }
            }
            for (key, status) in worst {
                metrics.set_status(key, status);
            }
        }
    }
}

fn failed_all(info: CheckInfo, reason: &str) -> Vec<Observation> {
    info.keys
        .iter()
        .map(|key| Observation::fail(key, reason))
        .collect()
}

/// Logs each observation whose status differs from the previous round's (or that is not
/// passing in the first round), once.
fn log_changes(previous: &Snapshot, results: &[CheckResult]) {
    let before: HashMap<(&str, Option<&str>), Status> = previous
        .results
        .iter()
        .flat_map(|r| r.observations.iter())
        .map(|o| ((o.key, o.component_id.as_deref()), o.status))
        .collect();
    for result in results {
        for obs in &result.observations {
            let was = before.get(&(obs.key, obs.component_id.as_deref())).copied();
            if was == Some(obs.status) || (was.is_none() && obs.status == Status::Pass) {
                continue;
            }
            let output = obs
                .output
                .as_deref()
                .map(crate::core::redact::redact_text)
                .unwrap_or_default();
            let from = was.map_or("none", Status::as_str);
            let check = match &obs.component_id {
                Some(id) => format!("{}[{id}]", obs.key),
                None => obs.key.to_owned(),
            };
            match obs.status {
                Status::Pass => tracing::info!(%check, from, to = "pass", "health check recovered"),
                Status::Warn => {
                    tracing::warn!(%check, from, to = "warn", critical = result.critical, %output, "health check degraded")
                }
                Status::Fail => {
                    tracing::warn!(%check, from, to = "fail", critical = result.critical, %output, "health check failing")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{CheckFuture, CheckInfo, ComponentType};

    struct Fixed(Status);
    struct Hangs;
    struct Panics;

    impl Check for Fixed {
        fn info(&self) -> CheckInfo {
            CheckInfo {
                keys: &["fixed:x"],
                component_type: ComponentType::Component,
                critical: true,
            }
        }
        fn run(&self) -> CheckFuture<'_> {
            let status = self.0;
            Box::pin(async move { vec![Observation::pass("fixed:x").worsen(status, "set")] })
        }
    }

    impl Check for Hangs {
        fn info(&self) -> CheckInfo {
            CheckInfo {
                keys: &["hangs:x", "hangs:y"],
                component_type: ComponentType::Component,
                critical: true,
            }
        }
        fn run(&self) -> CheckFuture<'_> {
            Box::pin(std::future::pending())
        }
    }

    impl Check for Panics {
        fn info(&self) -> CheckInfo {
            CheckInfo {
                keys: &["panics:x"],
                component_type: ComponentType::Component,
                critical: false,
            }
        }
        fn run(&self) -> CheckFuture<'_> {
            Box::pin(async { panic!("boom") })
        }
    }

    fn health(checks: Vec<Arc<dyn Check>>) -> Health {
        Health::new(
            checks,
            HealthSettings {
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                stale_after: Duration::from_secs(15),
            },
            ServiceInfo::current(),
            crate::core::metrics::Metrics::new(|_| {}).health,
        )
    }

    fn status_of(snapshot: &Snapshot, key: &str) -> Vec<(Status, Option<String>)> {
        snapshot
            .results
            .iter()
            .flat_map(|r| r.observations.iter())
            .filter(|o| o.key == key)
            .map(|o| (o.status, o.output.clone()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_check_times_out_and_the_others_still_report() {
        let h = health(vec![Arc::new(Hangs), Arc::new(Fixed(Status::Pass))]);
        let started = tokio::time::Instant::now();
        h.run_round().await;
        // The round ends at the timeout, not later.
        assert!(
            started.elapsed() <= Duration::from_millis(2100),
            "{:?}",
            started.elapsed()
        );
        let snap = h.snapshot();
        assert_eq!(snap.round, 1);
        for key in ["hangs:x", "hangs:y"] {
            let got = status_of(&snap, key);
            assert_eq!(got.len(), 1, "{key}");
            assert_eq!(got[0].0, Status::Fail);
            assert!(got[0].1.as_deref().unwrap_or("").contains("timed out"));
        }
        assert_eq!(status_of(&snap, "fixed:x")[0].0, Status::Pass);
    }

    #[tokio::test]
    async fn a_panicking_check_is_reported_failed_and_rounds_continue() {
        let h = health(vec![Arc::new(Panics), Arc::new(Fixed(Status::Warn))]);
        h.run_round().await;
        h.run_round().await;
        let snap = h.snapshot();
        assert_eq!(snap.round, 2);
        let got = status_of(&snap, "panics:x");
        assert_eq!(got[0].0, Status::Fail);
        assert_eq!(got[0].1.as_deref(), Some("check panicked"));
        assert_eq!(status_of(&snap, "fixed:x")[0].0, Status::Warn);
    }

    #[tokio::test(start_paused = true)]
    async fn the_refresher_keeps_its_heartbeat_and_stops_on_cancel() {
        let h = health(vec![Arc::new(Fixed(Status::Pass))]);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(h.clone().run_refresher(cancel.clone()));
        let mut rx = h.subscribe();
        for round in 1..=3 {
            rx.wait_for(|s| s.round >= round).await.unwrap();
            assert!(h.liveness().is_ok());
        }
        cancel.cancel();
        task.await.unwrap();
        // Silent refresher: liveness fails once the heartbeat is older than stale_after.
        tokio::time::advance(Duration::from_secs(16)).await;
        assert!(h.liveness().is_err());
    }

    #[test]
    fn startup_waits_for_migrations_and_the_first_round() {
        let h = health(vec![]);
        assert!(h.startup_pending().unwrap().contains("migrations"));
        // A round measured before migrations were applied does not count.
        let round = |n| {
            Arc::new(Snapshot {
                round: n,
                results: vec![],
            })
        };
        h.inner.snapshot.send_replace(round(1));
        h.set_migrations_ready();
        assert!(h.startup_pending().unwrap().contains("first round"));
        h.inner.snapshot.send_replace(round(2));
        assert!(h.startup_pending().is_none());
    }
}
