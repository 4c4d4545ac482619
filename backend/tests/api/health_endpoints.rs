//! The /health endpoints with every dependency up: status codes, IETF bodies, headers,
//! HEAD, `?verbose` and `?exclude`.

use std::time::Duration;

use crate::helpers::spawn_app;

const ALL_KEYS: [&str; 13] = [
    "postgres:connection",
    "postgres:responseTime",
    "postgres:connections",
    "postgres:migrations",
    "redis:connection",
    "redis:responseTime",
    "redis:memory",
    "redis:connections",
    "redis:pubsub",
    "cpu:utilization",
    "memory:utilization",
    "disk:utilization",
    "process:info",
];

#[tokio::test]
async fn liveness_and_service_info_answer_with_ietf_bodies() {
    let app = spawn_app().await;
    let response = app.get("/health").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/health+json"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "pass");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["serviceId"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(body["releaseId"].is_string());
    assert!(body["uptimeSeconds"].as_f64().is_some());

    let (status, body) = app.get_json("/health/live").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "pass");
    assert_eq!(body["description"], "liveness");
}

#[tokio::test]
async fn readiness_passes_with_every_check_listed_by_status_only() {
    let app = spawn_app().await;
    let body = app.wait_ready_status(200, Duration::from_secs(10)).await;
    assert!(
        matches!(body["status"].as_str(), Some("pass" | "warn")),
        "{body:#}"
    );
    for key in ALL_KEYS {
        let entries = body["checks"][key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} missing: {body:#}"));
        for entry in entries {
            assert!(entry["status"].is_string(), "{key}");
            assert!(
                entry["time"].as_str().is_some_and(|t| t.ends_with('Z')),
                "{key}"
            );
            assert!(
                entry.get("observedValue").is_none(),
                "{key}: public body shows values"
            );
            assert!(
                entry.get("output").is_none(),
                "{key}: public body shows output"
            );
        }
    }
    // ?verbose adds one note per observation.
    let notes = body["notes"].as_array().expect("verbose notes");
    assert!(
        notes.iter().any(|n| n == "[+]postgres:connection pass"),
        "{notes:?}"
    );

    let (status, body) = app.get_json("/health/startup").await;
    assert_eq!(status, 200, "{body:#}");
}

#[tokio::test]
async fn head_requests_get_the_status_without_a_body() {
    let app = spawn_app().await;
    app.wait_ready_status(200, Duration::from_secs(10)).await;
    for path in [
        "/health",
        "/health/live",
        "/health/ready",
        "/health/startup",
        "/health/details",
    ] {
        let response = app.client.head(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/health+json",
            "{path}"
        );
        assert!(response.bytes().await.unwrap().is_empty(), "{path}");
    }
}

#[tokio::test]
async fn exclude_must_name_known_checks() {
    let app = spawn_app().await;
    app.wait_ready_status(200, Duration::from_secs(10)).await;
    let response = app.get("/health/ready?exclude=nope").await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("nope"),
        "{body:#}"
    );
    let valid = body["validNames"].as_array().unwrap();
    assert!(valid.iter().any(|v| v == "redis") && valid.iter().any(|v| v == "postgres:migrations"));

    let (status, body) = app
        .get_json("/health/ready?exclude=redis&exclude=cpu")
        .await;
    assert_eq!(status, 200);
    assert!(body["checks"].get("redis:connection").is_none(), "{body:#}");
    assert!(body["checks"].get("cpu:utilization").is_none(), "{body:#}");
    assert!(body["checks"].get("postgres:connection").is_some());
}

#[tokio::test]
async fn unknown_routes_are_problem_json_404s() {
    let app = spawn_app().await;
    let response = app.get("/nope/../x?y=1").await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

/// A disk check forced to fail (thresholds at 0 %): non-critical by default, it only makes
/// the overall status `warn`; marked critical, it fails readiness.
#[tokio::test]
async fn criticality_decides_whether_a_failing_check_fails_readiness() {
    use crate::helpers::{Options, spawn_app_with};
    let failing_disk = |critical: bool| Options {
        configure: Some(Box::new(move |c| {
            c.checks.disk_warn = 0.0;
            c.checks.disk_fail = 0.0;
            c.checks.disk_critical = critical;
        })),
        ..Options::default()
    };
    let app = spawn_app_with(failing_disk(false)).await;
    let body = app.wait_ready_status(200, Duration::from_secs(10)).await;
    assert_eq!(body["status"], "warn", "{body:#}");
    assert_eq!(body["checks"]["disk:utilization"][0]["status"], "fail");
    let (status, details) = app.get_json("/health/details").await;
    assert_eq!(status, 200);
    assert_eq!(details["status"], "warn");
    assert!(
        details["checks"]["disk:utilization"][0]["output"]
            .as_str()
            .unwrap()
            .contains("fail above 0%")
    );

    let app = spawn_app_with(failing_disk(true)).await;
    let (status, body) = app
        .wait_for("/health/ready", Duration::from_secs(10), |_, b| {
            b["output"]
                .as_str()
                .is_some_and(|o| o.contains("disk:utilization"))
        })
        .await;
    assert_eq!(status, 503, "{body:#}");
    assert_eq!(body["output"], "not ready: failing disk:utilization");
    assert_eq!(app.get_json("/health/details").await.0, 503);
    // Excluding it restores readiness.
    assert_eq!(app.get_json("/health/ready?exclude=disk").await.0, 200);
}
