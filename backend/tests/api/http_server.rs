//! The HTTP server's bound on slow clients: a connection that does not send its request
//! headers within `HTTP_HEADER_TIMEOUT` (or sits idle that long) is closed, while a slow
//! response to a complete request is not cut off.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Options, TestApp, spawn_app_with};

const HEADER_TIMEOUT: Duration = Duration::from_millis(500);

async fn app() -> TestApp {
    let slow = Router::new().route(
        "/test/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            "done"
        }),
    );
    spawn_app_with(Options {
        routes: Some(slow),
        configure: Some(Box::new(|c| c.http_header_timeout = HEADER_TIMEOUT)),
        ..Options::default()
    })
    .await
}

/// Reads until the server closes the connection; returns what it sent and when it closed.
async fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the connection open for 5s"),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = app().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    // Half a request, then nothing (slowloris).
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (received, closed_after) = read_until_closed(&mut stream).await;
    assert!(
        closed_after >= HEADER_TIMEOUT.mul_f64(0.8) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
    assert!(!received.contains("200 OK"), "{received}");
    // The server itself is unaffected.
    assert_eq!(app.get("/health").await.status(), 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let app = app().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (received, closed_after) = read_until_closed(&mut stream).await;
    assert!(received.starts_with("HTTP/1.1 200 OK"), "{received}");
    assert!(closed_after < Duration::from_secs(3), "{closed_after:?}");
}

#[tokio::test]
async fn a_response_slower_than_the_header_timeout_still_completes() {
    let app = app().await;
    let response = app.get("/test/slow").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "done");
}
