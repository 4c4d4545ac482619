//! /metrics: exact counter and histogram movements, no label explosion, one registry per
//! app, both exposition formats, token, separate listener, and the real consumers:
//! `promtool check metrics` and a real Prometheus server scraping the app.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Options, TestApp, parse_metrics, spawn_app, spawn_app_with};
use crate::prometheus::{Prometheus, first_value};
use crate::proxy::Mode;

fn test_routes() -> Router {
    Router::new()
        .route(
            "/test/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route(
            "/test/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "slow"
            }),
        )
        .route("/test/echo", post(|body: String| async move { body }))
}

fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn counters_and_histograms_move_by_exactly_the_requests_made() {
    let app = spawn_app_with(Options {
        routes: Some(test_routes()),
        ..Options::default()
    })
    .await;
    let before = app.metrics().await;
    for _ in 0..3 {
        assert_eq!(app.get("/health").await.status(), 200);
    }
    for path in ["/nope", "/also/not/here"] {
        assert_eq!(app.get(path).await.status(), 404);
    }
    assert_eq!(app.get("/test/fail").await.status(), 500);
    assert_eq!(app.get("/test/slow").await.status(), 200);
    let body = "x".repeat(1000);
    let echoed = app
        .client
        .post(app.url("/test/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.text().await.unwrap(), body);
    let after = app.metrics().await;
    let delta = |series: &str| value(&after, series) - value(&before, series);

    assert_eq!(
        delta(r#"http_requests_total{method="GET",handler="/health",status="2xx"}"#),
        3.0
    );
    assert_eq!(
        delta(r#"http_requests_total{method="GET",handler="none",status="4xx"}"#),
        2.0
    );
    assert_eq!(
        delta(r#"http_requests_total{method="GET",handler="/test/fail",status="5xx"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"http_requests_total{method="POST",handler="/test/echo",status="2xx"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"errors_total{component="http",kind="server_error"}"#),
        1.0
    );

    // The slow request lands in the right buckets.
    let slow = |suffix: &str| value(&after, &format!("http_request_duration_seconds_{suffix}"));
    assert_eq!(slow(r#"count{method="GET",handler="/test/slow"}"#), 1.0);
    assert!(slow(r#"sum{method="GET",handler="/test/slow"}"#) >= 0.3);
    assert_eq!(
        slow(r#"bucket{le="0.25",method="GET",handler="/test/slow"}"#),
        0.0
    );
    assert_eq!(
        slow(r#"bucket{le="0.5",method="GET",handler="/test/slow"}"#),
        1.0
    );
    assert_eq!(slow(r#"count{method="GET",handler="/health"}"#), 3.0);

    // Sizes: the 1000-byte body both ways.
    assert_eq!(
        value(
            &after,
            r#"http_request_size_bytes_sum{handler="/test/echo"}"#
        ),
        1000.0
    );
    assert_eq!(
        value(
            &after,
            r#"http_response_size_bytes_sum{handler="/test/echo"}"#
        ),
        1000.0
    );
    assert_eq!(
        value(
            &after,
            r#"http_request_size_bytes_bucket{le="1024.0",handler="/test/echo"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            r#"http_request_size_bytes_bucket{le="256.0",handler="/test/echo"}"#
        ),
        0.0
    );
    // Nothing in progress once answered (this scrape itself is the only one).
    assert_eq!(
        value(
            &after,
            r#"http_requests_inprogress{method="GET",handler="/health"}"#
        ),
        0.0
    );
    assert_eq!(
        value(
            &after,
            r#"http_requests_inprogress{method="GET",handler="/metrics"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn ten_thousand_unmatched_paths_add_no_series() {
    let app = spawn_app().await;
    app.wait_ready_status(200, Duration::from_secs(10)).await;
    // Warm up every series a scrape and an unmatched request of each method class create.
    for method in ["GET", "POST", "DELETE", "BREW"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let _ = app
            .client
            .request(method, app.url("/warm-up"))
            .send()
            .await
            .unwrap();
    }
    let _ = app.metrics().await;
    let before: Vec<String> = app.metrics().await.into_keys().collect();

    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let (client, base) = (app.client.clone(), app.url(""));
        tasks.spawn(async move {
            for i in 0..625 {
                let path = format!("{base}/x{worker}/{i}/{:016x}?q={i}", fastrand::u64(..));
                let method = ["GET", "POST", "DELETE", "BREW", "PROPFIND"][i % 5];
                let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                let response = client.request(method, &path).send().await.unwrap();
                assert_eq!(response.status(), 404);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let after_metrics = app.metrics().await;
    let after: Vec<String> = after_metrics.keys().cloned().collect();
    let added: Vec<&String> = after.iter().filter(|s| !before.contains(s)).collect();
    assert!(added.is_empty(), "{} new series: {added:#?}", added.len());
    assert!(
        !after.iter().any(|s| s.contains("/x0/")),
        "a raw path became a label"
    );
    let unmatched: f64 = after_metrics
        .iter()
        .filter(|(s, _)| s.starts_with("http_requests_total{") && s.contains(r#"handler="none""#))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(unmatched, 10_004.0);
}

#[tokio::test]
async fn two_apps_in_one_process_keep_separate_registries() {
    let a = spawn_app().await;
    let b = spawn_app().await;
    for _ in 0..5 {
        a.get("/health").await;
    }
    b.get("/health").await;
    let series = r#"http_requests_total{method="GET",handler="/health",status="2xx"}"#;
    assert_eq!(value(&a.metrics().await, series), 5.0);
    assert_eq!(value(&b.metrics().await, series), 1.0);
}

#[tokio::test]
async fn openmetrics_is_served_when_asked_for() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE http_requests counter"));

    let response = app.get("/metrics").await;
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(!text.contains("# EOF"));
    assert!(text.contains("# TYPE http_requests_total counter"));
}

#[tokio::test]
async fn every_design_family_is_on_the_first_scrape_with_help_text() {
    let app = spawn_app().await;
    app.wait_ready_status(200, Duration::from_secs(10)).await;
    let text = app.get("/metrics").await.text().await.unwrap();
    for family in [
        "http_requests_total",
        "http_request_duration_seconds",
        "http_request_size_bytes",
        "http_response_size_bytes",
        "http_requests_inprogress",
        "http_connections_active",
        "orders_submitted_total",
        "orders_acknowledged_total",
        "orders_filled_total",
        "orders_cancelled_total",
        "orders_rejected_total",
        "orders_in_flight",
        "order_ack_latency_seconds",
        "order_fill_latency_seconds",
        "broker_up",
        "broker_reconnects_total",
        "broker_messages_received_total",
        "broker_errors_total",
        "broker_last_message_timestamp_seconds",
        "db_pool_connections",
        "db_pool_max_connections",
        "errors_total",
        "health_check_status",
        "health_check_duration_seconds",
        "health_ready",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
        "build_info",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} has no help text"
        );
    }
    let m = parse_metrics(&text);
    assert_eq!(
        value(
            &m,
            r#"health_check_status{check="postgres:connection",status="pass"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"health_check_status{check="postgres:connection",status="fail"}"#
        ),
        0.0
    );
    assert!(
        value(
            &m,
            r#"health_check_duration_seconds_count{check="redis:pubsub"}"#
        ) >= 1.0
    );
    assert_eq!(value(&m, "health_ready"), 1.0);
    assert_eq!(value(&m, "db_pool_max_connections"), 10.0);
    assert!(
        value(&m, r#"db_pool_connections{state="idle"}"#)
            + value(&m, r#"db_pool_connections{state="in_use"}"#)
            >= 1.0
    );
    assert!(value(&m, "process_resident_memory_bytes") > 0.0);
    assert!(value(&m, "process_open_fds") > 0.0);
    assert_eq!(
        value(
            &m,
            &format!(
                r#"build_info{{version="{}",revision="unknown"}}"#,
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
}

#[tokio::test]
async fn open_tcp_connections_are_counted() {
    let app = spawn_app().await;
    let gauge = "http_connections_active";
    // The test client itself holds one keep-alive connection.
    let baseline = value(&app.metrics().await, gauge);
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).await.unwrap();
        streams.push(s);
    }
    assert_eq!(value(&app.metrics().await, gauge), baseline + 3.0);
    drop(streams);
    let until = Instant::now() + Duration::from_secs(5);
    while value(&app.metrics().await, gauge) != baseline {
        assert!(Instant::now() < until, "closed connections still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn dependency_errors_are_counted() {
    let app = spawn_app_with(Options {
        postgres_proxy: true,
        redis_proxy: true,
        ..Options::default()
    })
    .await;
    app.wait_ready_status(200, Duration::from_secs(10)).await;
    let before = app.metrics().await;
    app.pg_proxy().set(Mode::Refuse);
    app.redis_proxy().set(Mode::Refuse);
    app.wait_ready_status(503, Duration::from_secs(5)).await;
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let after = app.metrics().await;
        let grew = |component: &str| {
            after
                .iter()
                .filter(|(s, _)| s.starts_with(&format!("errors_total{{component=\"{component}\"")))
                .map(|(s, v)| v - value(&before, s))
                .sum::<f64>()
        };
        if grew("database") >= 1.0 && grew("redis") >= 1.0 {
            assert!(
                value(
                    &after,
                    r#"errors_total{component="redis",kind="disconnect"}"#
                ) >= 1.0,
                "pub/sub loss counted"
            );
            break;
        }
        assert!(Instant::now() < until, "errors not counted: {after:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_metrics_token_is_required_when_set() {
    let app = spawn_app_with(Options {
        configure: Some(Box::new(|c| {
            c.metrics_token = Some("metrics-token-0123456789".into())
        })),
        ..Options::default()
    })
    .await;
    assert_eq!(app.get("/metrics").await.status(), 401);
    let wrong = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("metrics-token-x")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("metrics-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert!(right.text().await.unwrap().contains("http_requests_total"));
}

#[tokio::test]
async fn metrics_can_have_their_own_listener_or_be_off() {
    let app = spawn_app_with(Options {
        configure: Some(Box::new(|c| {
            c.metrics_addr = Some("127.0.0.1:0".parse().unwrap())
        })),
        ..Options::default()
    })
    .await;
    let metrics_addr = app.metrics_addr.expect("separate listener");
    assert_ne!(metrics_addr, app.addr);
    assert_eq!(app.get("/health").await.status(), 200);
    assert_eq!(
        app.get("/metrics").await.status(),
        404,
        "not on the main listener"
    );
    let text = app
        .client
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"http_requests_total{method="GET",handler="/health",status="2xx"} 1"#),
        "{text}"
    );

    let off = spawn_app_with(Options {
        configure: Some(Box::new(|c| c.metrics_enabled = false)),
        ..Options::default()
    })
    .await;
    assert_eq!(off.get("/metrics").await.status(), 404);
    assert_eq!(off.get("/health").await.status(), 200);
}

/// Exercises every endpoint, so the scrape has every kind of series.
async fn exercise(app: &TestApp) {
    app.wait_ready_status(200, Duration::from_secs(10)).await;
    for path in [
        "/health",
        "/health/live",
        "/health/ready",
        "/health/ready?verbose",
        "/health/ready?exclude=nope",
        "/health/startup",
        "/health/details",
        "/nope",
        "/metrics",
    ] {
        let _ = app.get(path).await;
    }
    let _ = app.client.head(app.url("/health")).send().await;
}

#[tokio::test]
/// promtool lints the Prometheus text format; it does not parse OpenMetrics, which the
/// real Prometheus server (`a_real_prometheus_scrapes_the_app`) negotiates and parses.
async fn promtool_finds_no_problems() {
    let app = spawn_app().await;
    exercise(&app).await;
    let text = app.get("/metrics").await.text().await.unwrap();
    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package prometheus; .ci/run installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .await
        .unwrap();
    let output = promtool.wait_with_output().await.unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && findings.trim().is_empty(),
        "{findings}"
    );
    assert!(
        text.contains("http_requests_total"),
        "a real scrape was checked"
    );
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_app() {
    let app = spawn_app().await;
    exercise(&app).await;
    let prometheus = Prometheus::start(&[app.addr], &[]).await;
    let deadline = Duration::from_secs(45);
    prometheus
        .wait_for(r#"up{job="backend"}"#, deadline, |r| {
            first_value(r) == Some(1.0)
        })
        .await;
    prometheus
        .wait_for(
            r#"sum(http_requests_total{job="backend"})"#,
            deadline,
            |r| first_value(r).is_some_and(|v| v > 0.0),
        )
        .await;
}
