//! The simulator over real sockets: the protocol as README.md documents it, and every
//! fault switch flipped through the HTTP control API.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests assert by unwrapping"
)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use paper_broker::PaperBroker;
use paper_broker::protocol::{ClientMessage, ServerMessage};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn broker() -> PaperBroker {
    PaperBroker::start(paper_broker::Config {
        tick_interval: Duration::from_millis(20),
        ..paper_broker::Config::default()
    })
    .await
    .unwrap()
}

async fn send(ws: &mut Ws, m: &ClientMessage) {
    ws.send(Message::Text(serde_json::to_string(m).unwrap().into()))
        .await
        .unwrap();
}

/// The next text frame, parsed; `None` on close/end/timeout.
async fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(t.to_string()),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => return None,
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn next(ws: &mut Ws) -> ServerMessage {
    serde_json::from_str(&next_text(ws).await.expect("a message")).expect("valid JSON")
}

/// Next message that is not a tick.
async fn next_reply(ws: &mut Ws) -> ServerMessage {
    loop {
        match next(ws).await {
            ServerMessage::Tick { .. } => {}
            other => return other,
        }
    }
}

async fn connected(b: &PaperBroker) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(b.ws_url()).await.unwrap();
    assert!(matches!(
        next(&mut ws).await,
        ServerMessage::Hello { protocol: 1, .. }
    ));
    send(
        &mut ws,
        &ClientMessage::Auth {
            key: "k".into(),
            secret: "s".into(),
        },
    )
    .await;
    assert_eq!(next(&mut ws).await, ServerMessage::AuthOk);
    send(
        &mut ws,
        &ClientMessage::Subscribe {
            symbols: vec!["AAPL".into(), "MSFT".into()],
        },
    )
    .await;
    assert!(matches!(
        next_reply(&mut ws).await,
        ServerMessage::Subscribed { .. }
    ));
    ws
}

async fn control(b: &PaperBroker, path: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}/{path}", b.control_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

fn order(id: &str) -> ClientMessage {
    ClientMessage::Order {
        client_order_id: id.into(),
        symbol: "AAPL".into(),
        side: "buy".into(),
        order_type: "market".into(),
        quantity: "10".into(),
        limit_price: None,
    }
}

#[tokio::test]
async fn hello_auth_subscribe_then_ticks_for_the_subscribed_symbols() {
    let b = broker().await;
    let mut ws = connected(&b).await;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        if let ServerMessage::Tick { symbol, price, ts } = next(&mut ws).await {
            assert!(price > 0.0 && ts > 0);
            seen.insert(symbol);
        }
    }
    assert!(seen.contains("AAPL") && seen.contains("MSFT"));
}

#[tokio::test]
async fn requests_before_auth_and_bad_frames_get_error_codes() {
    let b = broker().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(b.ws_url()).await.unwrap();
    next(&mut ws).await; // hello
    send(
        &mut ws,
        &ClientMessage::Subscribe {
            symbols: vec!["AAPL".into()],
        },
    )
    .await;
    assert!(
        matches!(next(&mut ws).await, ServerMessage::Error { code, .. } if code == "not_authenticated")
    );
    ws.send(Message::Text("{not json".into())).await.unwrap();
    assert!(
        matches!(next(&mut ws).await, ServerMessage::Error { code, .. } if code == "bad_request")
    );
    ws.send(Message::Text(r#"{"type":"teleport"}"#.into()))
        .await
        .unwrap();
    assert!(
        matches!(next(&mut ws).await, ServerMessage::Error { code, .. } if code == "unknown_type")
    );
}

#[tokio::test]
async fn orders_are_acknowledged_and_filled_or_rejected_on_demand() {
    let b = broker().await;
    let mut ws = connected(&b).await;
    send(&mut ws, &order("o-1")).await;
    assert!(
        matches!(next_reply(&mut ws).await, ServerMessage::Ack { client_order_id, .. } if client_order_id == "o-1")
    );
    assert!(
        matches!(next_reply(&mut ws).await, ServerMessage::Fill { client_order_id, quantity, .. } if client_order_id == "o-1" && quantity == "10")
    );

    let state = control(&b, "reject", json!({"count": 2, "reason": "risk_limit"})).await;
    assert_eq!(state["rejectNext"], 2);
    for id in ["o-2", "o-3"] {
        send(&mut ws, &order(id)).await;
        assert_eq!(
            next_reply(&mut ws).await,
            ServerMessage::Reject {
                client_order_id: id.into(),
                reason: "risk_limit".into()
            }
        );
    }
    send(&mut ws, &order("o-4")).await;
    assert!(matches!(
        next_reply(&mut ws).await,
        ServerMessage::Ack { .. }
    ));
    // An unknown reason is refused by the control API.
    let response = reqwest::Client::new()
        .post(format!("{}/reject", b.control_url()))
        .json(&json!({"count": 1, "reason": "because"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
}

#[tokio::test]
async fn drops_close_or_cut_every_session() {
    let b = broker().await;
    let mut ws = connected(&b).await;
    control(&b, "drop", json!({"mode": "close"})).await;
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(closed.unwrap().code), 1001);

    let mut ws = connected(&b).await;
    control(&b, "drop", json!({"mode": "abrupt"})).await;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(_))) => panic!("abrupt drop sent a close frame"),
            Some(Ok(_)) => {}
            other => break other,
        }
    };
    assert!(matches!(ended, None | Some(Err(_))), "{ended:?}");
}

#[tokio::test]
async fn stalls_silence_data_then_everything() {
    let b = broker().await;
    let mut ws = connected(&b).await;
    control(&b, "stall", json!({"mode": "data"})).await;
    // Drain what was in flight, then: no data, but pings are answered.
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), ws.next()).await {}
    ws.send(Message::Ping(b"p1".to_vec().into())).await.unwrap();
    let mut got_pong = false;
    while let Ok(Some(Ok(frame))) =
        tokio::time::timeout(Duration::from_millis(300), ws.next()).await
    {
        match frame {
            Message::Pong(p) => got_pong = p.as_ref() == b"p1",
            Message::Text(t) => panic!("data while stalled: {t}"),
            _ => {}
        }
    }
    assert!(got_pong, "pings answered while data is stalled");

    control(&b, "stall", json!({"mode": "all"})).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    ws.send(Message::Ping(b"p2".to_vec().into())).await.unwrap();
    let silent = tokio::time::timeout(Duration::from_millis(400), ws.next()).await;
    assert!(
        silent.is_err(),
        "no pong while everything is stalled: {silent:?}"
    );

    control(&b, "stall", json!({"mode": "none"})).await;
    assert!(
        matches!(next(&mut ws).await, ServerMessage::Tick { .. }),
        "ticks resume"
    );
}

#[tokio::test]
async fn malformed_frames_delays_auth_and_connection_refusals() {
    let b = broker().await;
    let mut ws = connected(&b).await;
    control(&b, "malformed", json!({"every": 3})).await;
    let mut bad = 0;
    for _ in 0..30 {
        let text = next_text(&mut ws).await.unwrap();
        if serde_json::from_str::<ServerMessage>(&text).is_err() {
            bad += 1;
        }
    }
    assert!((8..=12).contains(&bad), "{bad} of 30 malformed");
    control(&b, "reset", json!({})).await;

    control(&b, "delay", json!({"ms": 300})).await;
    send(&mut ws, &order("slow")).await;
    let started = std::time::Instant::now();
    while !matches!(next(&mut ws).await, ServerMessage::Ack { .. }) {}
    assert!(started.elapsed() >= Duration::from_millis(300));
    control(&b, "reset", json!({})).await;

    control(&b, "auth", json!({"refuse": true})).await;
    let (mut refused, _) = tokio_tungstenite::connect_async(b.ws_url()).await.unwrap();
    next(&mut refused).await; // hello
    send(
        &mut refused,
        &ClientMessage::Auth {
            key: "k".into(),
            secret: "s".into(),
        },
    )
    .await;
    assert!(
        matches!(next(&mut refused).await, ServerMessage::Error { code, .. } if code == "auth_failed")
    );

    let state = control(&b, "connections", json!({"refuse": true})).await;
    assert_eq!(state["refuseConnections"], true);
    let err = tokio_tungstenite::connect_async(b.ws_url())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    control(&b, "reset", json!({})).await;
    let state: Value = reqwest::get(format!("{}/state", b.control_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["refuseConnections"], false);
    assert!(state["connectionsTotal"].as_u64().unwrap() >= 2);
}
