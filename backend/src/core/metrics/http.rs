//! HTTP instrumentation: the request middleware (count, latency, sizes, in-progress, by
//! route template) and a listener wrapper that counts open TCP connections.
//!
//! The `handler` label is the matched route template (`/api/v1/orders/{id}`) or `none`
//! for unmatched requests; methods outside the standard set are `other`; statuses are
//! grouped by class. So no request, however hostile, can add a series.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};

use axum::body::HttpBody as _;
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, header};
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

/// The metric handles of one (method, route), so a request costs one look-up, not five.
#[derive(Debug)]
struct RouteMetrics {
    in_progress: Gauge,
    duration: Histogram,
    request_size: Histogram,
    response_size: Histogram,
    /// `http_requests_total` by status class (1xx..5xx), created on first use.
    requests: [OnceLock<Counter>; 5],
}

/// The HTTP families.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    routes: Arc<RwLock<HashMap<MethodHandlerLabels, Arc<RouteMetrics>>>>,
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
            routes: Arc::default(),
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

    /// The handles of one (method, route); the key set is bounded (fixed methods, route
    /// templates, `none`).
    fn route(&self, key: MethodHandlerLabels) -> Arc<RouteMetrics> {
        if let Ok(routes) = self.routes.read()
            && let Some(found) = routes.get(&key)
        {
            return Arc::clone(found);
        }
        let sized = HandlerLabels {
            handler: key.handler.clone(),
        };
        let created = Arc::new(RouteMetrics {
            in_progress: self.in_progress.get_or_create(&key).clone(),
            duration: self.duration.get_or_create(&key).clone(),
            request_size: self.request_size.get_or_create(&sized).clone(),
            response_size: self.response_size.get_or_create(&sized).clone(),
            requests: Default::default(),
        });
        if let Ok(mut routes) = self.routes.write() {
            routes.entry(key).or_insert_with(|| Arc::clone(&created));
        }
        created
    }

    fn count(&self, route: &RouteMetrics, key: &MethodHandlerLabels, status: u16) {
        let class = status_class(status);
        let slot = match class {
            "1xx" => 0,
            "2xx" => 1,
            "3xx" => 2,
            "4xx" => 3,
            _ => 4,
        };
        route.requests[slot]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        method: key.method,
                        handler: key.handler.clone(),
                        status: class,
                    })
                    .clone()
            })
            .inc();
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

/// Tower layer recording every request (install with `Router::layer`, so unmatched
/// requests are counted too). Hand-written rather than `axum::middleware::from_fn`, which
/// clones the inner service and boxes its future for every request: on a 10 µs request
/// that machinery cost as much as the measuring itself.
#[derive(Clone)]
pub struct TrackLayer(pub Arc<Instrumentation>);

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            metrics: Arc::clone(&self.0),
        }
    }
}

/// The service [`TrackLayer`] wraps around each route.
#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    metrics: Arc<Instrumentation>,
}

impl<S> tower::Service<Request> for Track<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let m = Arc::clone(&self.metrics);
        let method = method_label(request.method());
        let handler = Handler(request.extensions().get::<MatchedPath>().cloned());
        let request_size = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| request.body().size_hint().lower());
        let key = MethodHandlerLabels { method, handler };
        let route = m.http.route(key.clone());
        route.in_progress.inc();
        let guard = InProgress(route.in_progress.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            drop(guard);
            let status = response.status().as_u16();
            let size = response.body().size_hint();
            let response_size = size.exact().unwrap_or_else(|| size.lower());
            route.duration.observe(started.elapsed().as_secs_f64());
            route.request_size.observe(request_size as f64);
            route.response_size.observe(response_size as f64);
            m.http.count(&route, &key, status);
            if status >= 500 {
                m.errors.inc(Component::Http, ErrorKind::ServerError);
            }
            Ok(response)
        })
    }
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
