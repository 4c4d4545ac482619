//! The order path against real PostgreSQL, Redis and a paper broker: rows, events on
//! `orders:events`, every order metric, idempotency, rejections, outages, timeouts,
//! bad input and concurrency.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use paper_broker::{DropMode, PaperBroker, Stall};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, base_redis_url, database_url, paper_broker, spawn_app_with, with_broker,
};

async fn app_for(broker: &PaperBroker) -> TestApp {
    app_with_timeout(broker, Duration::from_secs(5)).await
}

async fn app_with_timeout(broker: &PaperBroker, ack_timeout: Duration) -> TestApp {
    let app = spawn_app_with(with_broker(broker, move |c| {
        c.order_ack_timeout = ack_timeout
    }))
    .await;
    app.wait_ready_status(200, Duration::from_secs(10)).await;
    // The broker session is live once its check passes.
    app.wait_check("broker:connection", "pass", Duration::from_secs(5))
        .await;
    app
}

fn market(id: &str) -> Value {
    json!({"client_order_id": id, "broker": "paper", "symbol": "AAPL", "side": "buy", "type": "market", "quantity": "10"})
}

async fn post(app: &TestApp, body: &Value) -> (u16, Value) {
    let response = app
        .client
        .post(app.url("/api/v1/orders"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Reading the store while it is refused fails (proves the outage is real).
async fn rows_status_while_down(app: &TestApp) -> Option<u16> {
    let response = app
        .get("/api/v1/orders/3f2504e0-4f89-11d3-9a0c-0305e82c3301")
        .await;
    (response.status() != 503).then(|| response.status().as_u16())
}

async fn rows(app: &TestApp) -> Vec<(String, String, Option<String>)> {
    let db = backend::db::Database::connect_lazy(
        &database_url(&app.db_name),
        1,
        Duration::from_secs(5),
        Default::default(),
    )
    .unwrap();
    let rows = sqlx::query_as(
        "SELECT client_order_id, status, reject_reason FROM orders ORDER BY created_at",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    db.close(Duration::from_secs(1)).await;
    rows
}

fn metric(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

/// Collects `orders:events` messages (as JSON) in the background.
async fn listen_to_events() -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
) {
    let client = redis::Client::open(base_redis_url().as_str()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("orders:events").await.unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&seen);
    let task = tokio::spawn(async move {
        let mut stream = pubsub.into_on_message();
        while let Some(message) = stream.next().await {
            let payload: String = message.get_payload().unwrap_or_default();
            if let Ok(v) = serde_json::from_str(&payload) {
                sink.lock().unwrap().push(v);
            }
        }
    });
    (task, seen)
}

#[tokio::test]
async fn a_market_order_is_stored_sent_acknowledged_filled_published_and_counted() {
    let broker = paper_broker().await;
    let app = app_for(&broker).await;
    let (listener, events) = listen_to_events().await;
    let id = crate::helpers::unique_name("mkt");

    let response = app
        .client
        .post(app.url("/api/v1/orders"))
        .json(&market(&id))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["status"], "filled", "{order:#}");
    assert_eq!(order["filled_quantity"], "10");
    assert!(order["broker_order_id"].as_str().unwrap().starts_with("P-"));
    assert_eq!(
        location,
        format!("/api/v1/orders/{}", order["id"].as_str().unwrap())
    );

    let (status, fetched) = app.get_json(&location).await;
    assert_eq!(status, 200);
    assert_eq!(fetched["status"], "filled");
    assert_eq!(rows(&app).await, vec![(id.clone(), "filled".into(), None)]);

    // Every state change on orders:events, in order.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let statuses = loop {
        let statuses: Vec<String> = events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["client_order_id"] == id.as_str())
            .map(|e| e["status"].as_str().unwrap_or_default().to_owned())
            .collect();
        if statuses.len() >= 3 || std::time::Instant::now() > until {
            break statuses;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(statuses, ["new", "accepted", "filled"]);
    listener.abort();

    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"orders_submitted_total{broker="paper",side="buy",type="market"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&m, r#"orders_acknowledged_total{broker="paper"}"#),
        1.0
    );
    assert_eq!(metric(&m, r#"orders_filled_total{broker="paper"}"#), 1.0);
    assert_eq!(metric(&m, r#"orders_in_flight{broker="paper"}"#), 0.0);
    assert_eq!(
        metric(&m, r#"order_ack_latency_seconds_count{broker="paper"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"order_fill_latency_seconds_count{broker="paper"}"#),
        1.0
    );
    // The service's own subscriber consumed the events.
    let (_, details) = app
        .wait_for("/health/details", Duration::from_secs(3), |_, b| {
            b["checks"]["redis:pubsub"][0]["orderEventsReceived"].as_u64() >= Some(3)
        })
        .await;
    let pubsub = &details["checks"]["redis:pubsub"][0];
    assert!(
        pubsub["orderEventsReceived"].as_u64() >= Some(3),
        "{pubsub:#}"
    );
}

#[tokio::test]
async fn a_retry_returns_the_stored_order_and_sends_nothing() {
    let broker = paper_broker().await;
    let app = app_for(&broker).await;
    let (first, created) = post(&app, &market("retry-1")).await;
    assert_eq!(first, 201);
    let (again, existing) = post(&app, &market("retry-1")).await;
    assert_eq!(again, 200);
    assert_eq!(existing["id"], created["id"]);
    assert_eq!(rows(&app).await.len(), 1);
    assert_eq!(
        broker.faults().orders_received.load(Ordering::Relaxed),
        1,
        "sent once"
    );

    let mut different = market("retry-1");
    different["quantity"] = json!("11");
    let (conflict, problem) = post(&app, &different).await;
    assert_eq!(conflict, 409, "{problem:#}");
    assert_eq!(problem["field"], "client_order_id");
    assert_eq!(rows(&app).await.len(), 1);
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"orders_submitted_total{broker="paper",side="buy",type="market"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn a_broker_rejection_is_stored_and_counted_under_its_reason() {
    let broker = paper_broker().await;
    let app = app_for(&broker).await;
    broker.faults().reject_next(1, "risk_limit").unwrap();
    let (status, order) = post(&app, &market("rej-1")).await;
    assert_eq!(status, 201);
    assert_eq!(order["status"], "rejected", "{order:#}");
    assert_eq!(order["reject_reason"], "risk_limit");
    assert_eq!(
        rows(&app).await,
        vec![("rej-1".into(), "rejected".into(), Some("risk_limit".into()))]
    );
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"orders_rejected_total{broker="paper",reason="risk_limit"}"#
        ),
        1.0
    );
    assert_eq!(metric(&m, r#"orders_in_flight{broker="paper"}"#), 0.0);
    assert_eq!(
        metric(&m, r#"orders_acknowledged_total{broker="paper"}"#),
        0.0
    );
}

#[tokio::test]
async fn with_the_broker_down_the_order_is_stored_rejected_and_the_answer_is_503() {
    let broker = paper_broker().await;
    let app = app_for(&broker).await;
    broker.faults().set_refuse_connections(true);
    broker.faults().drop_connections(DropMode::Abrupt);
    app.wait_for("/health/details", Duration::from_secs(5), |_, b| {
        b["checks"]["broker:connection"][0]["state"] != "live"
    })
    .await;
    let response = app
        .client
        .post(app.url("/api/v1/orders"))
        .json(&market("down-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["order"]["status"], "rejected", "{problem:#}");
    assert_eq!(problem["order"]["reject_reason"], "broker_unavailable");
    assert_eq!(
        rows(&app).await,
        vec![(
            "down-1".into(),
            "rejected".into(),
            Some("broker_unavailable".into())
        )]
    );
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"orders_rejected_total{broker="paper",reason="broker_unavailable"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&m, r#"errors_total{component="orders",kind="connection"}"#),
        1.0
    );
    assert_eq!(broker.faults().orders_received.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn an_order_without_an_ack_times_out_and_leaves_nothing_in_flight() {
    let broker = paper_broker().await;
    let app = app_with_timeout(&broker, Duration::from_millis(500)).await;
    // The session stays up (pings answered) but the broker never replies.
    broker.faults().set_stall(Stall::Data);
    let started = std::time::Instant::now();
    let (status, problem) = post(&app, &market("slow-1")).await;
    assert_eq!(status, 504, "{problem:#}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(problem["order"]["status"], "timed_out");
    assert_eq!(
        rows(&app).await,
        vec![("slow-1".into(), "timed_out".into(), None)]
    );
    let m = app.metrics().await;
    assert_eq!(metric(&m, r#"orders_in_flight{broker="paper"}"#), 0.0);
    assert_eq!(
        metric(
            &m,
            r#"orders_rejected_total{broker="paper",reason="ack_timeout"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&m, r#"errors_total{component="orders",kind="timeout"}"#),
        1.0
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_stores_nothing() {
    let broker = paper_broker().await;
    let app = app_for(&broker).await;
    let with = |field: &str, value: Value| {
        let mut body = market("bad-1");
        body[field] = value;
        body
    };
    let mut limit_without_price = market("bad-1");
    limit_without_price["type"] = json!("limit");
    for (body, field) in [
        (with("quantity", json!(-5)), "quantity"),
        (with("quantity", json!("abc")), "quantity"),
        (with("broker", json!("nowhere")), "broker"),
        (limit_without_price, "limit_price"),
        (with("limit_price", json!("101.5")), "limit_price"),
        (with("symbol", json!("AA PL")), "symbol"),
        (with("side", json!("short")), "side"),
    ] {
        let response = app
            .client
            .post(app.url("/api/v1/orders"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{body}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["field"], field, "{problem:#}");
        assert!(problem["detail"].as_str().unwrap().starts_with(field));
    }
    let raw = |body: Vec<u8>, content_type: &'static str| {
        let client = app.client.clone();
        let url = app.url("/api/v1/orders");
        async move {
            let response = client
                .post(url)
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let kind = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_owned();
            (status, kind)
        }
    };
    let huge = format!(
        r#"{{"client_order_id":"big","pad":"{}"}}"#,
        "x".repeat(1 << 20)
    )
    .into_bytes();
    assert_eq!(
        raw(huge, "application/json").await,
        (413, "application/problem+json".into())
    );
    assert_eq!(
        raw(b"{not json".to_vec(), "application/json").await,
        (400, "application/problem+json".into())
    );
    assert_eq!(
        raw(serde_json::to_vec(&market("bad-1")).unwrap(), "text/plain").await,
        (415, "application/problem+json".into())
    );
    assert!(rows(&app).await.is_empty(), "nothing stored");
    assert_eq!(broker.faults().orders_received.load(Ordering::Relaxed), 0);

    assert_eq!(app.get("/api/v1/orders/not-a-uuid").await.status(), 400);
    assert_eq!(
        app.get("/api/v1/orders/3f2504e0-4f89-11d3-9a0c-0305e82c3301")
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn two_hundred_concurrent_orders_are_each_stored_sent_and_counted_once() {
    let broker = paper_broker().await;
    let app = app_for(&broker).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (client, url) = (app.client.clone(), app.url("/api/v1/orders"));
        tasks.spawn(async move {
            let response = client
                .post(url)
                .json(&market(&format!("many-{i}")))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let order: Value = response.json().await.unwrap();
            (
                status,
                order["status"].as_str().unwrap_or_default().to_owned(),
            )
        });
    }
    let mut outcomes = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        *outcomes.entry(done.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        outcomes,
        BTreeMap::from([((201, "filled".to_owned()), 200)])
    );
    let rows = rows(&app).await;
    assert_eq!(rows.len(), 200);
    assert!(rows.iter().all(|(_, status, _)| status == "filled"));
    assert_eq!(broker.faults().orders_received.load(Ordering::Relaxed), 200);
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"orders_submitted_total{broker="paper",side="buy",type="market"}"#
        ),
        200.0
    );
    assert_eq!(
        metric(&m, r#"orders_acknowledged_total{broker="paper"}"#),
        200.0
    );
    assert_eq!(metric(&m, r#"orders_filled_total{broker="paper"}"#), 200.0);
    assert_eq!(
        metric(&m, r#"order_ack_latency_seconds_count{broker="paper"}"#),
        200.0
    );
    assert_eq!(metric(&m, r#"orders_in_flight{broker="paper"}"#), 0.0);
}

#[tokio::test]
async fn an_ack_and_fill_arriving_while_postgres_is_down_are_written_once_it_is_back() {
    let broker = paper_broker().await;
    let app = spawn_app_with(crate::helpers::Options {
        postgres_proxy: true,
        ..with_broker(&broker, |c| {
            c.order_ack_timeout = Duration::from_secs(2);
            // The broker below answers nothing for 800 ms at a time: not a dead peer.
            c.broker_heartbeat_interval = Duration::from_secs(1);
            c.broker_stale_after = Duration::from_secs(10);
        })
    })
    .await;
    app.wait_ready_status(200, Duration::from_secs(10)).await;
    app.wait_check("broker:connection", "pass", Duration::from_secs(5))
        .await;
    // Replies take 800 ms, long enough to cut PostgreSQL off after the order is stored.
    // (Ticks are stopped: the delay applies to every outgoing message in turn.)
    broker.faults().set_tick_interval(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.faults().set_delay(Duration::from_millis(800));
    let submit = {
        let (client, url) = (app.client.clone(), app.url("/api/v1/orders"));
        tokio::spawn(async move {
            client
                .post(url)
                .json(&market("pg-down-1"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while broker.faults().orders_received.load(Ordering::Relaxed) == 0 {
        assert!(std::time::Instant::now() < until, "order never sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.pg_proxy().set(crate::proxy::Mode::Refuse);
    // The client hears that the store is unavailable (the outcome could not be read back).
    assert_eq!(submit.await.unwrap(), 503);
    // The fill arrives and is counted even though it cannot be written yet.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while app.metrics().await[r#"orders_filled_total{broker="paper"}"#] < 1.0 {
        assert!(std::time::Instant::now() < until, "the fill never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rows_status_while_down(&app).await,
        None,
        "PostgreSQL is still refused"
    );

    app.pg_proxy().set(crate::proxy::Mode::Pass);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, order) = post(&app, &market("pg-down-1")).await;
        if status == 200 && order["status"] == "filled" {
            assert_eq!(order["filled_quantity"], "10");
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "fill never written: {status} {order:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        rows(&app).await,
        vec![("pg-down-1".into(), "filled".into(), None)]
    );
    assert_eq!(
        broker.faults().orders_received.load(Ordering::Relaxed),
        1,
        "the retry sent nothing"
    );
}
