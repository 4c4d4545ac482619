//! Dependency failures injected through the fault proxy: readiness turns 503 naming the
//! dependency within interval + timeout, liveness stays 200, probes stay fast while the
//! dependency hangs, and everything recovers without a restart.

use std::time::{Duration, Instant};

use crate::helpers::{INTERVAL, Options, TIMEOUT, TestApp, spawn_app_with};
use crate::proxy::Mode;

/// Detection bound: one interval (plus jitter) for the next round, its timeout, and slack
/// for a loaded CI machine.
fn detection_deadline() -> Duration {
    INTERVAL.mul_f64(1.1) + TIMEOUT + Duration::from_millis(1500)
}

async fn proxied(postgres: bool, redis: bool) -> TestApp {
    let app = spawn_app_with(Options {
        postgres_proxy: postgres,
        redis_proxy: redis,
        ..Options::default()
    })
    .await;
    app.wait_ready_status(200, Duration::from_secs(10)).await;
    app
}

/// Readiness must fail naming `dependency` within the detection deadline, while every
/// probe answers fast and liveness stays 200.
async fn assert_detected(app: &TestApp, dependency: &str) {
    let started = Instant::now();
    let (status, body) = app
        .wait_for("/health/ready", detection_deadline(), |s, _| s == 503)
        .await;
    assert_eq!(
        status,
        503,
        "not detected within {:?}: {body:#}",
        detection_deadline()
    );
    let output = body["output"].as_str().unwrap_or_default();
    assert!(
        output.contains(dependency),
        "output should name {dependency}: {output}"
    );
    assert!(started.elapsed() <= detection_deadline());
    let (live, _) = app.get_json("/health/live").await;
    assert_eq!(live, 200, "liveness must not depend on {dependency}");
}

/// Every probe answers in under 100 ms while the dependency hangs.
async fn assert_probes_fast(app: &TestApp) {
    let mut slowest = Duration::ZERO;
    for path in [
        "/health/ready",
        "/health/live",
        "/health/details",
        "/health/startup",
        "/health",
    ]
    .repeat(8)
    {
        let started = Instant::now();
        let _ = app.get(path).await;
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(100),
        "slowest probe took {slowest:?}"
    );
}

async fn assert_recovers(app: &TestApp) {
    let body = app.wait_ready_status(200, Duration::from_secs(15)).await;
    assert!(body.get("output").is_none(), "{body:#}");
}

#[tokio::test]
async fn postgres_refused_fails_readiness_then_recovers() {
    let app = proxied(true, false).await;
    app.pg_proxy().set(Mode::Refuse);
    assert_detected(&app, "postgres:connection").await;
    let check = app
        .wait_check("postgres:connection", "fail", Duration::from_secs(2))
        .await;
    assert!(check["output"].is_string(), "details say why: {check:#}");
    assert_eq!(app.metrics().await["health_ready"], 0.0);
    app.pg_proxy().set(Mode::Pass);
    assert_recovers(&app).await;
    assert_eq!(app.metrics().await["health_ready"], 1.0);
}

#[tokio::test]
async fn postgres_blackholed_fails_readiness_without_slowing_probes() {
    let app = proxied(true, false).await;
    app.pg_proxy().set(Mode::Blackhole);
    assert_detected(&app, "postgres:connection").await;
    assert_probes_fast(&app).await;
    let check = app
        .wait_check("postgres:connection", "fail", Duration::from_secs(2))
        .await;
    assert!(
        check["output"].as_str().unwrap().contains("timed out"),
        "{check:#}"
    );
    app.pg_proxy().set(Mode::Pass);
    assert_recovers(&app).await;
}

#[tokio::test]
async fn redis_refused_fails_readiness_and_pubsub_then_recovers() {
    let app = proxied(false, true).await;
    app.redis_proxy().set(Mode::Refuse);
    assert_detected(&app, "redis:connection").await;
    let pubsub = app
        .wait_check("redis:pubsub", "fail", Duration::from_secs(3))
        .await;
    assert_eq!(pubsub["subscriberConnected"], false, "{pubsub:#}");
    // Excluding redis makes readiness ignore it.
    let (status, body) = app.get_json("/health/ready?exclude=redis").await;
    assert_eq!(status, 200, "{body:#}");
    app.redis_proxy().set(Mode::Pass);
    assert_recovers(&app).await;
    let pubsub = app
        .wait_check("redis:pubsub", "pass", Duration::from_secs(5))
        .await;
    assert!(pubsub["disconnects"].as_u64().unwrap() >= 1, "{pubsub:#}");
}

#[tokio::test]
async fn redis_blackholed_fails_readiness_without_slowing_probes() {
    let app = proxied(false, true).await;
    app.redis_proxy().set(Mode::Blackhole);
    assert_detected(&app, "redis").await;
    assert_probes_fast(&app).await;
    app.redis_proxy().set(Mode::Pass);
    assert_recovers(&app).await;
}

#[tokio::test]
async fn a_redis_restart_is_detected_by_the_subscriber_and_recovered() {
    let app = proxied(false, true).await;
    let before = app
        .wait_check("redis:pubsub", "pass", Duration::from_secs(5))
        .await;
    assert_eq!(before["disconnects"], 0);
    // Like a server restart: every open connection is reset, new ones are accepted.
    app.redis_proxy().reset_connections();
    let (_, body) = app
        .wait_for("/health/details", Duration::from_secs(10), |_, b| {
            let p = &b["checks"]["redis:pubsub"][0];
            p["disconnects"].as_u64().unwrap_or(0) >= 1
                && p["status"] == "pass"
                && p["subscriberConnected"] == true
        })
        .await;
    let pubsub = &body["checks"]["redis:pubsub"][0];
    assert!(
        pubsub["disconnects"].as_u64().unwrap() >= 1,
        "disconnect detected: {pubsub:#}"
    );
    assert_eq!(
        pubsub["status"], "pass",
        "probe flows again after resubscribing: {pubsub:#}"
    );
    let (status, _) = app.get_json("/health/ready").await;
    assert_eq!(status, 200);
}
