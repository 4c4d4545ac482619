//! Broker sessions against the real paper broker over real WebSocket connections:
//! live data, drops, stale feeds, dead peers, malformed frames, refused connections,
//! criticality and clean shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use paper_broker::{DropMode, PaperBroker, Stall};
use serde_json::Value;

use crate::helpers::{
    BROKER_HEARTBEAT as HEARTBEAT, Options, TestApp, paper_broker as paper, spawn_app_with,
    with_broker,
};

/// An app connected to `broker` as `paper` with fast broker timings.
async fn app_with(broker: &PaperBroker, critical: bool) -> TestApp {
    spawn_app_with(with_broker(broker, move |c| {
        if critical {
            c.broker_critical = "paper".into();
        }
    }))
    .await
}

/// The broker's details entry once `accept` holds (or the last one seen).
async fn wait_broker(app: &TestApp, deadline: Duration, accept: impl Fn(&Value) -> bool) -> Value {
    let (_, body) = app
        .wait_for("/health/details", deadline, |_, b| {
            accept(&b["checks"]["broker:connection"][0])
        })
        .await;
    let entry = body["checks"]["broker:connection"][0].clone();
    assert!(accept(&entry), "condition never held: {entry:#}");
    entry
}

fn live(e: &Value) -> bool {
    e["state"] == "live" && e["status"] == "pass"
}

#[tokio::test]
async fn a_session_goes_live_and_data_flows() {
    let broker = paper().await;
    let app = app_with(&broker, false).await;
    let first = wait_broker(&app, Duration::from_secs(5), live).await;
    assert_eq!(first["componentId"], "paper");
    assert!(
        first["lastDataAgeSeconds"].as_f64().unwrap() < 1.0,
        "{first:#}"
    );
    let later = wait_broker(&app, Duration::from_secs(5), |e| {
        e["messagesReceived"].as_u64() > first["messagesReceived"].as_u64()
    })
    .await;
    assert_eq!(later["reconnects"], 0);
    assert!(later["connectedSince"].is_string());
    let m = app.metrics().await;
    assert_eq!(m[r#"broker_up{broker="paper"}"#], 1.0);
    assert!(m[r#"broker_messages_received_total{broker="paper"}"#] > 0.0);
    // The credentials in the URL are used for auth and never shown.
    let details = app.get("/health/details").await.text().await.unwrap();
    assert!(!details.contains("Sup3rSecretKey"));
}

async fn assert_reconnects_after(mode: DropMode, expected_error: &str) {
    let broker = paper().await;
    let app = app_with(&broker, false).await;
    let before = wait_broker(&app, Duration::from_secs(5), live).await;
    broker.faults().drop_connections(mode);
    let after = wait_broker(&app, Duration::from_secs(5), |e| {
        e["reconnects"] == 1 && live(e)
    })
    .await;
    let last_error = after["lastError"].as_str().unwrap_or_default();
    assert!(
        last_error.starts_with(expected_error),
        "{mode:?}: {last_error}"
    );
    assert_eq!(
        after["recentBackoffMs"].as_array().unwrap().len(),
        1,
        "one backoff before reconnecting"
    );
    assert_eq!(broker.faults().connections_total.load(Ordering::Relaxed), 2);
    // Resubscribed: data flows again on the new session.
    wait_broker(&app, Duration::from_secs(5), |e| {
        e["messagesReceived"].as_u64().unwrap_or(0)
            > before["messagesReceived"].as_u64().unwrap_or(0) + 10
            && e["lastDataAgeSeconds"].as_f64().is_some_and(|a| a < 0.5)
    })
    .await;
    assert_eq!(
        app.metrics().await[r#"broker_reconnects_total{broker="paper"}"#],
        1.0
    );
}

#[tokio::test]
async fn an_abrupt_drop_is_reconnected_and_resubscribed() {
    assert_reconnects_after(DropMode::Abrupt, "closed:").await;
}

#[tokio::test]
async fn a_clean_close_is_reconnected_and_resubscribed() {
    assert_reconnects_after(DropMode::Close, "closed: closed by the broker: 1001").await;
}

#[tokio::test]
async fn a_feed_that_answers_pings_but_sends_no_data_is_stale() {
    let broker = paper().await;
    let app = app_with(&broker, false).await;
    wait_broker(&app, Duration::from_secs(5), live).await;
    broker.faults().set_stall(Stall::Data);
    // Stale within stale_after (600 ms) plus a round; the transport stays alive.
    let stale = wait_broker(&app, Duration::from_secs(3), |e| e["status"] == "warn").await;
    assert!(
        stale["output"].as_str().unwrap().starts_with("stale"),
        "{stale:#}"
    );
    assert!(
        stale["lastMessageAgeSeconds"].as_f64().unwrap() < 0.6,
        "pongs keep the transport alive: {stale:#}"
    );
    let (status, ready) = app.get_json("/health/ready").await;
    assert_eq!(
        (status, ready["status"].as_str()),
        (200, Some("warn")),
        "non-critical: only warn"
    );
    // Still the same session, then data again.
    wait_broker(&app, Duration::from_secs(2), |e| e["state"] == "stale").await;
    broker.faults().set_stall(Stall::None);
    let back = wait_broker(&app, Duration::from_secs(3), live).await;
    assert_eq!(back["reconnects"], 0, "never reconnected: {back:#}");
}

#[tokio::test]
async fn a_peer_that_goes_silent_is_declared_dead_and_reconnected() {
    let broker = paper().await;
    let app = app_with(&broker, false).await;
    wait_broker(&app, Duration::from_secs(5), live).await;
    broker.faults().set_stall(Stall::All);
    let started = std::time::Instant::now();
    let dead = wait_broker(&app, Duration::from_secs(3), |e| {
        e["errors"]["timeout"].as_u64() >= Some(1)
    })
    .await;
    // 3 heartbeats of silence, noticed at the next heartbeat.
    assert!(
        started.elapsed() >= HEARTBEAT * 3,
        "{:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < HEARTBEAT * 3 + Duration::from_millis(1500));
    assert!(
        dead["lastError"].as_str().unwrap().contains("peer silent"),
        "{dead:#}"
    );
    broker.faults().set_stall(Stall::None);
    let back = wait_broker(&app, Duration::from_secs(10), |e| {
        live(e) && e["reconnects"] == 1
    })
    .await;
    assert!(back["lastDataAgeSeconds"].as_f64().unwrap() < 1.0);
}

#[tokio::test]
async fn malformed_frames_raise_the_error_rate_without_killing_the_session() {
    let broker = paper().await;
    let app = app_with(&broker, false).await;
    wait_broker(&app, Duration::from_secs(5), live).await;
    // One frame in 40 broken: 2.5 %, between the warn (1 %) and fail (5 %) thresholds.
    broker.faults().set_malformed_every(40);
    let entry = wait_broker(&app, Duration::from_secs(10), |e| {
        e["errorWindow"]["errors"].as_u64() >= Some(3)
    })
    .await;
    let entry = if entry["status"] == "warn" {
        entry
    } else {
        wait_broker(&app, Duration::from_secs(5), |e| e["status"] == "warn").await
    };
    let rate = entry["errorRatePercent"].as_f64().unwrap();
    assert!(rate > 1.0 && rate < 5.0, "{entry:#}");
    assert!(
        entry["output"].as_str().unwrap().contains("error rate"),
        "{entry:#}"
    );
    assert_eq!(entry["state"], "live");
    assert_eq!(
        entry["reconnects"], 0,
        "the session survives malformed frames"
    );
    assert!(entry["errors"]["protocol"].as_u64().unwrap() >= 3);
    // One in 5: 20 % fails the check.
    broker.faults().set_malformed_every(5);
    let failing = wait_broker(&app, Duration::from_secs(10), |e| e["status"] == "fail").await;
    assert!(
        failing["errorRatePercent"].as_f64().unwrap() > 5.0,
        "{failing:#}"
    );
    assert_eq!(failing["reconnects"], 0);
}

#[tokio::test]
async fn a_critical_broker_outage_fails_readiness_after_the_grace_period() {
    let broker = paper().await;
    let app = app_with(&broker, true).await;
    wait_broker(&app, Duration::from_secs(5), live).await;
    app.wait_ready_status(200, Duration::from_secs(5)).await;
    broker.faults().set_refuse_connections(true);
    broker.faults().drop_connections(DropMode::Abrupt);
    // Within the grace period: reconnecting, warn only.
    let reconnecting = wait_broker(&app, Duration::from_secs(2), |e| e["status"] == "warn").await;
    assert_ne!(reconnecting["state"], "live");
    let (_, body) = app
        .wait_for("/health/ready", Duration::from_secs(5), |s, _| s == 503)
        .await;
    assert_eq!(
        body["output"], "not ready: failing broker:connection",
        "{body:#}"
    );
    let down = wait_broker(&app, Duration::from_secs(1), |e| e["status"] == "fail").await;
    assert_eq!(down["critical"], true);
    assert!(down["errors"]["connect"].as_u64().unwrap() >= 1, "{down:#}");
    broker.faults().set_refuse_connections(false);
    app.wait_ready_status(200, Duration::from_secs(40)).await;
}

#[tokio::test]
async fn a_non_critical_broker_outage_only_warns() {
    let broker = paper().await;
    let app = app_with(&broker, false).await;
    wait_broker(&app, Duration::from_secs(5), live).await;
    broker.faults().set_refuse_connections(true);
    broker.faults().drop_connections(DropMode::Abrupt);
    let down = wait_broker(&app, Duration::from_secs(5), |e| e["status"] == "fail").await;
    assert_eq!(down["critical"], false);
    let (status, body) = app.get_json("/health/ready").await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["status"], "warn");
    assert_eq!(app.get_json("/health/details").await.1["status"], "warn");
    assert_eq!(app.metrics().await[r#"broker_up{broker="paper"}"#], 0.0);
}

#[tokio::test]
async fn refused_auth_is_reported_and_retried() {
    let broker = paper().await;
    broker.faults().set_refuse_auth(true);
    let app = app_with(&broker, false).await;
    let entry = wait_broker(&app, Duration::from_secs(5), |e| {
        e["errors"]["auth"].as_u64() >= Some(2)
    })
    .await;
    assert!(
        entry["lastError"]
            .as_str()
            .unwrap()
            .starts_with("auth: auth_failed"),
        "{entry:#}"
    );
    broker.faults().set_refuse_auth(false);
    wait_broker(&app, Duration::from_secs(10), live).await;
}

#[tokio::test]
async fn shutdown_closes_broker_sessions_cleanly() {
    let broker = paper().await;
    let app = app_with(&broker, false).await;
    wait_broker(&app, Duration::from_secs(5), live).await;
    app.stop().await.unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while broker.faults().connections_open.load(Ordering::Relaxed) > 0 {
        assert!(
            std::time::Instant::now() < until,
            "session still open after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        broker.faults().clean_closes.load(Ordering::Relaxed),
        1,
        "closed with a close frame"
    );
}

#[tokio::test]
async fn without_brokers_there_is_no_broker_check() {
    let app = spawn_app_with(Options {
        configure: Some(Box::new(|c| c.brokers = Some("none".into()))),
        ..Options::default()
    })
    .await;
    app.wait_ready_status(200, Duration::from_secs(10)).await;
    let (_, details) = app.get_json("/health/details").await;
    assert!(details["checks"].get("broker:connection").is_none());
    assert_eq!(app.get("/health/ready?exclude=broker").await.status(), 400);
}
