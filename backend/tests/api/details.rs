//! /health/details: observed values for every check, its protection, and no secrets.

use std::time::Duration;

use crate::helpers::{Options, spawn_app, spawn_app_with};

const TOKEN: &str = "test-token-0123456789";

#[tokio::test]
async fn details_show_every_check_with_real_observed_values() {
    let app = spawn_app().await;
    app.wait_ready_status(200, Duration::from_secs(10)).await;
    let (status, body) = app.get_json("/health/details").await;
    assert_eq!(status, 200, "{body:#}");
    let checks = &body["checks"];
    let first = |key: &str| checks[key][0].clone();

    assert_eq!(first("postgres:connection")["observedValue"], true);
    assert!(
        first("postgres:responseTime")["observedValue"]
            .as_f64()
            .unwrap()
            >= 0.0
    );
    assert_eq!(first("postgres:responseTime")["observedUnit"], "ms");
    let pool = first("postgres:connections");
    assert_eq!(pool["max"], 10);
    assert!(pool["size"].as_u64().unwrap() >= 1, "{pool:#}");
    let migrations = first("postgres:migrations");
    assert_eq!(migrations["pending"], serde_json::json!([]));
    assert!(migrations["observedValue"].as_i64().unwrap() > 0);

    assert_eq!(first("redis:connection")["observedValue"], true);
    assert!(first("redis:memory")["usedMemory"].as_u64().unwrap() > 0);
    assert!(
        first("redis:connections")["connectedClients"]
            .as_u64()
            .unwrap()
            >= 2
    );
    let pubsub = first("redis:pubsub");
    assert_eq!(pubsub["status"], "pass", "{pubsub:#}");
    assert_eq!(pubsub["subscriberConnected"], true);
    assert!(
        pubsub["observedValue"].as_f64().unwrap() >= 0.0,
        "round trip measured: {pubsub:#}"
    );

    let cpu = checks["cpu:utilization"].as_array().unwrap();
    assert!(cpu.iter().any(|e| e["componentId"] == "host"));
    assert!(first("memory:utilization")["totalBytes"].as_u64().unwrap() > 0);
    assert!(first("disk:utilization")["freeBytes"].as_u64().unwrap() > 0);
    let process = first("process:info");
    assert_eq!(process["pid"], std::process::id());
    assert!(process["openFds"].as_u64().unwrap() > 0);
    assert!(process["maxFds"].as_u64().unwrap() > 0);
    assert!(process["threads"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn details_and_the_status_page_need_the_bearer_token_when_one_is_set() {
    let app = spawn_app_with(Options {
        configure: Some(Box::new(|c| c.health_details_token = Some(TOKEN.into()))),
        ..Options::default()
    })
    .await;
    app.wait_ready_status(200, Duration::from_secs(10)).await;
    for path in ["/health/details", "/health/ui"] {
        let url = app.url(path);
        let none = app.client.get(&url).send().await.unwrap();
        assert_eq!(none.status(), 401, "{path}");
        assert_eq!(none.headers()["www-authenticate"], "Bearer");
        assert_eq!(none.headers()["content-type"], "application/problem+json");
        let wrong = app
            .client
            .get(&url)
            .bearer_auth("test-token-0123456780")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        let right = app
            .client
            .get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert!(
            matches!(right.status().as_u16(), 200 | 503),
            "{path}: {}",
            right.status()
        );
        let body = right.text().await.unwrap();
        assert!(body.contains("postgres:connection"), "{path}: {body}");
    }
}

#[tokio::test]
async fn the_status_page_shows_every_check_and_turns_red_when_postgres_fails() {
    let app = spawn_app_with(Options {
        postgres_proxy: true,
        ..Options::default()
    })
    .await;
    app.wait_ready_status(200, Duration::from_secs(10)).await;
    let (_, details) = app.get_json("/health/details").await;

    let page = app.get("/health/ui").await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers()["cache-control"], "no-store");
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'")
    );
    let html = page.text().await.unwrap();
    assert!(html.starts_with("<!doctype html>"), "{html}");
    // Auto-refresh every health-check interval (1s in tests), no scripts, no assets.
    assert!(
        html.contains(r#"<meta http-equiv="refresh" content="1">"#),
        "{html}"
    );
    for forbidden in ["<script", "src=", "href=", "http://", "https://"] {
        assert!(!html.contains(forbidden), "{forbidden} in {html}");
    }
    // Every check of the details body has a row, and the pool's observed values show.
    for key in details["checks"].as_object().unwrap().keys() {
        assert!(
            html.contains(&format!("<td>{key}</td>")),
            "{key} missing: {html}"
        );
    }
    assert!(
        html.contains(r#"<tr class="pass"><td>postgres:connection</td>"#),
        "{html}"
    );
    assert!(html.contains("max=10"), "pool details shown: {html}");

    app.pg_proxy().set(crate::proxy::Mode::Refuse);
    app.wait_check("postgres:connection", "fail", Duration::from_secs(5))
        .await;
    let page = app.get("/health/ui").await;
    assert_eq!(page.status(), 503, "same status code as /health/details");
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"<span class="badge fail">fail</span>"#),
        "{html}"
    );
    let row = html
        .split("<tr ")
        .find(|r| r.contains("<td>postgres:connection</td>"))
        .unwrap();
    assert!(row.starts_with(r#"class="fail""#), "{row}");
    assert!(row.contains("<td>yes</td>"), "critical: {row}");
    assert!(
        row.contains("postgres://postgres@"),
        "the error names the target: {row}"
    );
}

#[tokio::test]
async fn the_database_password_appears_in_no_response() {
    // Trust auth accepts any password, so a URL with one still connects.
    let app = spawn_app_with(Options {
        postgres_proxy: true,
        configure: Some(Box::new(|c| {
            let mut url = url::Url::parse(&c.database_url).unwrap();
            url.set_password(Some("Sup3rSecretPw")).unwrap();
            c.database_url = url.to_string();
        })),
        ..Options::default()
    })
    .await;
    app.wait_ready_status(200, Duration::from_secs(10)).await;
    let mut bodies = Vec::new();
    // Healthy, then failing (error texts in play).
    app.pg_proxy().set(crate::proxy::Mode::Refuse);
    app.wait_check("postgres:connection", "fail", Duration::from_secs(5))
        .await;
    for path in [
        "/health",
        "/health/live",
        "/health/ready?verbose",
        "/health/startup",
        "/health/details",
        "/health/ui",
        "/nope",
    ] {
        bodies.push(app.get(path).await.text().await.unwrap());
    }
    for body in &bodies {
        assert!(!body.contains("Sup3rSecretPw"), "password leaked: {body}");
    }
    assert!(
        bodies[4].contains("postgres://postgres:****@"),
        "redacted target shown: {}",
        bodies[4]
    );
}
