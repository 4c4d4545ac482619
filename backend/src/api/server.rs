//! The HTTP/1 server loop: accepts connections from the counting listener and serves the
//! router on each, with the peer address as `ConnectInfo<SocketAddr>`.
//!
//! It exists instead of `axum::serve` for one reason: a bound on slow clients. `axum::serve`
//! gives hyper no timer, so a client that opens a connection and sends its headers a byte
//! at a time (or nothing at all) holds the connection forever. Here every connection has
//! `HTTP_HEADER_TIMEOUT` to send a request's headers, which also closes keep-alive
//! connections idle for that long.
//!
//! When `stop` is cancelled the loop stops accepting, lets each connection finish its
//! in-flight request (closing idle ones), and returns once all are closed; the caller bounds
//! that wait with `SHUTDOWN_TIMEOUT`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

pub async fn serve<L>(
    mut listener: L,
    router: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) where
    L: Listener<Addr = SocketAddr>,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let service = router
            .clone()
            .map_request(move |request: hyper::Request<Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let connection = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
