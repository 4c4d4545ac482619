//! Graceful shutdown: readiness 503 ("draining") at once while liveness stays 200, the
//! drain delay, in-flight requests finishing, exit 0. In-process via the shutdown handle
//! (the same path SIGTERM takes), and with a real SIGTERM to the real binary.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;

use crate::helpers::{Options, TestDatabase, spawn_app_with};
use crate::process::Process;

#[tokio::test]
async fn shutdown_drains_then_lets_in_flight_requests_finish() {
    let slow = Router::new().route(
        "/test/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            "done"
        }),
    );
    let app = spawn_app_with(Options {
        routes: Some(slow),
        configure: Some(Box::new(|c| {
            c.shutdown_drain_delay = Duration::from_millis(800)
        })),
        ..Options::default()
    })
    .await;
    app.wait_ready_status(200, Duration::from_secs(10)).await;

    let in_flight = tokio::spawn(app.client.get(app.url("/test/slow")).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.shutdown.trigger();

    // During the drain delay: not ready, still live, still answering.
    let (status, body) = app
        .wait_for("/health/ready", Duration::from_secs(1), |s, _| s == 503)
        .await;
    assert_eq!(status, 503);
    assert_eq!(body["output"], "draining: shutting down");
    assert_eq!(app.get_json("/health/live").await.0, 200);

    let response = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "done");
    let started = Instant::now();
    app.stop().await.expect("clean shutdown");
    assert!(started.elapsed() < Duration::from_secs(5));
}

async fn get_status(client: &reqwest::Client, url: &str) -> u16 {
    client
        .get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero_without_leaking_the_password() {
    let db = TestDatabase::new("test");
    let mut url = url::Url::parse(&db.url()).unwrap();
    url.set_password(Some("Sup3rSecretPw")).unwrap();
    let mut process = Process::spawn(&[
        ("DATABASE_URL", url.as_str()),
        ("SHUTDOWN_DRAIN_DELAY", "1500ms"),
        ("SHUTDOWN_TIMEOUT", "5s"),
    ]);
    let base = format!("http://{}", process.listening_addr().await);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(15);
    while get_status(&client, &format!("{base}/health/ready")).await != 200 {
        assert!(Instant::now() < until, "never ready: {}", process.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    process.signal("-TERM").await;
    let signalled = Instant::now();
    let until = signalled + Duration::from_secs(1);
    while get_status(&client, &format!("{base}/health/ready")).await != 503 {
        assert!(Instant::now() < until, "readiness not 503 after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        get_status(&client, &format!("{base}/health/live")).await,
        200
    );

    let status = tokio::time::timeout(Duration::from_secs(10), process.child.wait())
        .await
        .expect("exits within drain delay + shutdown timeout")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", process.output());
    assert!(
        signalled.elapsed() >= Duration::from_millis(1400),
        "drain delay honoured"
    );
    let output = process.output();
    assert!(output.contains("shutdown requested"), "{output}");
    assert!(
        !output.contains("Sup3rSecretPw"),
        "password in logs: {output}"
    );
}

#[tokio::test]
async fn errors_in_logs_never_show_the_password() {
    // PostgreSQL refuses (nothing listens on port 1): the migration retries log errors.
    let mut process = Process::spawn(&[
        (
            "DATABASE_URL",
            "postgres://app:Sup3rSecretPw@127.0.0.1:1/trading",
        ),
        ("REDIS_URL", "redis://:An0therSecret@127.0.0.1:1"),
        ("SHUTDOWN_DRAIN_DELAY", "0s"),
    ]);
    let base = format!("http://{}", process.listening_addr().await);
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(10);
    while !process
        .output()
        .contains("applying database migrations failed")
    {
        assert!(
            Instant::now() < until,
            "no migration error logged: {}",
            process.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let details = client
        .get(format!("{base}/health/details"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        get_status(&client, &format!("{base}/health/ready")).await,
        503
    );
    process.signal("-TERM").await;
    let status = tokio::time::timeout(Duration::from_secs(10), process.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let output = process.output();
    for secret in ["Sup3rSecretPw", "An0therSecret"] {
        assert!(!output.contains(secret), "{secret} in logs: {output}");
        assert!(!details.contains(secret), "{secret} in details: {details}");
    }
}

#[tokio::test]
async fn the_healthcheck_subcommand_exits_0_for_a_live_instance_and_1_otherwise() {
    let app = spawn_app_with(Options::default()).await;
    let run = |addr: String, path: &'static str| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_backend"))
            .args([
                "healthcheck",
                "--addr",
                &addr,
                "--path",
                path,
                "--timeout",
                "1s",
            ])
            .output()
            .await
            .unwrap()
    };
    let ok = run(app.addr.to_string(), "/health/live").await;
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let missing = run(app.addr.to_string(), "/no/such/path").await;
    assert_eq!(missing.status.code(), Some(1));
    let closed = run("127.0.0.1:1".into(), "/health/live").await;
    assert_eq!(closed.status.code(), Some(1));
}
