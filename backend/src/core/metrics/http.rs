//! HTTP instrumentation: the request middleware (count, latency, sizes, in-progress, by
//! route template) and a listener wrapper that counts open TCP connections.
//!
//! The `handler` label is the matched route template (`/api/v1/orders/{id}`) or `none`
//! for unmatched requests; methods outside the standard set are `other`; statuses are
//! grouped by class. So no request, however hostile, can add a series.

use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::HttpBody as _;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::{Component, ErrorKind, Errors, latency_histogram, size_histogram};

/// The matched route template, or `none`. Holds axum's `MatchedPath` (an `Arc<str>`), so
/// labelling a request allocates nothing.
#[derive(Clone, Debug)]
pub struct Handler(Option<MatchedPath>);

impl Handler {
    fn as_str(&self) -> &str {
        self.0.as_ref().map_or("none", MatchedPath::as_str)
    }
}

impl PartialEq for Handler {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Handler {}

impl Hash for Handler {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl EncodeLabelValue for Handler {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    handler: Handler,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodHandlerLabels {
    method: &'static str,
    handler: Handler,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabels {
    handler: Handler,
}

/// The HTTP families.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<MethodHandlerLabels, Histogram, fn() -> Histogram>,
    request_size: Family<HandlerLabels, Histogram, fn() -> Histogram>,
    response_size: Family<HandlerLabels, Histogram, fn() -> Histogram>,
    in_progress: Family<MethodHandlerLabels, Gauge>,
    connections: Gauge,
}

impl HttpMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            request_size: Family::new_with_constructor(size_histogram),
            response_size: Family::new_with_constructor(size_histogram),
            in_progress: Family::default(),
            connections: Gauge::default(),
        };
        r.register(
            "http_requests",
            "HTTP requests answered, by method, route and status class",
            super::Shown(m.requests.clone()),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP request latency, by method and route",
            super::Shown(m.duration.clone()),
        );
        r.register(
            "http_request_size_bytes",
            "HTTP request body size, by route",
            super::Shown(m.request_size.clone()),
        );
        r.register(
            "http_response_size_bytes",
            "HTTP response body size, by route",
            super::Shown(m.response_size.clone()),
        );
        r.register(
            "http_requests_inprogress",
            "HTTP requests being handled, by method and route",
            super::Shown(m.in_progress.clone()),
        );
        r.register(
            "http_connections_active",
            "Open TCP connections to the HTTP listener",
            super::Shown(m.connections.clone()),
        );
        m
    }

    /// Wraps a listener so open connections are counted in `http_connections_active`.
    pub fn counting(&self, listener: TcpListener) -> CountingListener {
        CountingListener {
            inner: listener,
            active: self.connections.clone(),
        }
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Decrements the in-progress gauge even when the request future is dropped.
struct InProgress(Gauge);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The middleware state: the HTTP families and the error counter for 5xx.
#[derive(Clone)]
pub struct Instrumentation {
    pub http: HttpMetrics,
    pub errors: Errors,
}

/// Axum middleware recording every request (install with `Router::layer`, so unmatched
/// requests are counted too).
pub async fn track(State(m): State<Instrumentation>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let handler = Handler(request.extensions().get::<MatchedPath>().cloned());
    let request_size = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| request.body().size_hint().lower());
    let pair = MethodHandlerLabels {
        method,
        handler: handler.clone(),
    };
    let gauge = m.http.in_progress.get_or_create(&pair).clone();
    gauge.inc();
    let guard = InProgress(gauge);

    let response = next.run(request).await;
    drop(guard);

    let status = response.status().as_u16();
    let response_size = response
        .body()
        .size_hint()
        .exact()
        .unwrap_or_else(|| response.body().size_hint().lower());
    m.http
        .duration
        .get_or_create(&pair)
        .observe(started.elapsed().as_secs_f64());
    let sized = HandlerLabels {
        handler: handler.clone(),
    };
    m.http
        .request_size
        .get_or_create(&sized)
        .observe(request_size as f64);
    m.http
        .response_size
        .get_or_create(&sized)
        .observe(response_size as f64);
    m.http
        .requests
        .get_or_create(&RequestLabels {
            method,
            handler,
            status: status_class(status),
        })
        .inc();
    if status >= 500 {
        m.errors.inc(Component::Http, ErrorKind::ServerError);
    }
    response
}

/// A TCP listener that counts its open connections.
pub struct CountingListener {
    inner: TcpListener,
    active: Gauge,
}

impl axum::serve::Listener for CountingListener {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let _ = stream.set_nodelay(true);
        self.active.inc();
        (
            CountedStream {
                inner: stream,
                active: self.active.clone(),
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that decrements the open-connection gauge when closed.
pub struct CountedStream {
    inner: TcpStream,
    active: Gauge,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.active.dec();
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_fixed_sets() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(404), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(999), "5xx");
        assert_eq!(Handler(None).as_str(), "none");
    }
}
