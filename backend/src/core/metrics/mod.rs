//! The application's one Prometheus registry and every metric family it exports.
//!
//! One [`Metrics`] per application instance (never a process-global registry), so several
//! apps in one test process keep separate numbers. Labels come only from small fixed sets
//! (enums, route templates, configured broker names): never a raw path, symbol, order id,
//! host header or error text.
//!
//! # Custom metrics
//!
//! A module that needs its own families registers them while the application is built,
//! through the closure given to [`Metrics::new`]; the registry is read-only afterwards:
//!
//! ```
//! use prometheus_client::metrics::counter::Counter;
//! let mut jobs = Counter::<u64>::default();
//! let metrics = backend::core::metrics::Metrics::new(|registry| {
//!     registry.register("jobs_processed", "Jobs processed by the worker", jobs.clone());
//! });
//! jobs.inc();
//! assert!(metrics.render(backend::core::metrics::Format::Prometheus).contains("jobs_processed_total 1"));
//! ```
//!
//! Name counters without `_total` (the encoder adds it). Rendering produces OpenMetrics
//! text natively, and the Prometheus 0.0.4 text format by rewriting its descriptors.

pub mod http;
mod process;

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use http::HttpMetrics;

/// Latency buckets (seconds) for request and order paths: 0.5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Size buckets (bytes): 64 B to 4 MiB.
const SIZE_BUCKETS: [f64; 9] = [
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];
/// Health check durations (seconds): 0.1 ms to 5 s.
const CHECK_BUCKETS: [f64; 11] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// A family that is described (HELP/TYPE) even before its first series exists, so every
/// family shows on the first scrape. The registry skips "empty" metrics otherwise.
#[derive(Debug)]
struct Shown<M>(M);

impl<M: EncodeMetric> EncodeMetric for Shown<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

fn check_histogram() -> Histogram {
    Histogram::new(CHECK_BUCKETS)
}

/// Which part of the service an error belongs to (`errors_total{component}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    Database,
    Redis,
    Broker,
    Orders,
    Http,
}

impl Component {
    const ALL: [Component; 5] = [
        Component::Database,
        Component::Redis,
        Component::Broker,
        Component::Orders,
        Component::Http,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Database => "database",
            Component::Redis => "redis",
            Component::Broker => "broker",
            Component::Orders => "orders",
            Component::Http => "http",
        }
    }
}

/// What kind of error (`errors_total{kind}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Could not connect, or the connection broke.
    Connection,
    /// No answer in time (including pool acquire timeouts).
    Timeout,
    /// The server answered with an error.
    Query,
    /// A migration run failed.
    Migration,
    /// A long-lived connection (pub/sub, broker session) was lost.
    Disconnect,
    /// A response with a 5xx status.
    ServerError,
}

impl ErrorKind {
    const ALL: [ErrorKind; 6] = [
        ErrorKind::Connection,
        ErrorKind::Timeout,
        ErrorKind::Query,
        ErrorKind::Migration,
        ErrorKind::Disconnect,
        ErrorKind::ServerError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Query => "query",
            ErrorKind::Migration => "migration",
            ErrorKind::Disconnect => "disconnect",
            ErrorKind::ServerError => "server_error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    component: &'static str,
    kind: &'static str,
}

/// `errors_total{component,kind}`: a cheap handle every layer that handles errors holds.
#[derive(Clone, Debug, Default)]
pub struct Errors(Family<ErrorLabels, Counter>);

impl Errors {
    pub fn inc(&self, component: Component, kind: ErrorKind) {
        self.0
            .get_or_create(&ErrorLabels {
                component: component.as_str(),
                kind: kind.as_str(),
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabels {
    pub broker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubmittedLabels {
    pub broker: String,
    pub side: &'static str,
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerReasonLabels {
    pub broker: String,
    /// A fixed enum (reject reason or error kind).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerKindLabels {
    pub broker: String,
    pub kind: &'static str,
}

/// Order execution families (filled by the order path).
#[derive(Clone, Debug)]
pub struct OrderMetrics {
    pub submitted: Family<SubmittedLabels, Counter>,
    pub acknowledged: Family<BrokerLabels, Counter>,
    pub filled: Family<BrokerLabels, Counter>,
    pub cancelled: Family<BrokerLabels, Counter>,
    pub rejected: Family<BrokerReasonLabels, Counter>,
    pub in_flight: Family<BrokerLabels, Gauge>,
    pub ack_latency: Family<BrokerLabels, Histogram, fn() -> Histogram>,
    pub fill_latency: Family<BrokerLabels, Histogram, fn() -> Histogram>,
}

/// Broker connection families (filled by the broker supervisors).
#[derive(Clone, Debug)]
pub struct BrokerMetrics {
    pub up: Family<BrokerLabels, Gauge>,
    pub reconnects: Family<BrokerLabels, Counter>,
    pub messages_received: Family<BrokerLabels, Counter>,
    pub errors: Family<BrokerKindLabels, Counter>,
    pub last_message_timestamp: Family<BrokerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

/// `db_pool_connections{state}` and `db_pool_max_connections`, set from the pool at scrape.
#[derive(Clone, Debug, Default)]
pub struct PoolMetrics {
    connections: Family<PoolLabels, Gauge>,
    max: Gauge,
}

impl PoolMetrics {
    pub fn set(&self, idle: u32, in_use: u32, max: u32) {
        self.connections
            .get_or_create(&PoolLabels { state: "idle" })
            .set(i64::from(idle));
        self.connections
            .get_or_create(&PoolLabels { state: "in_use" })
            .set(i64::from(in_use));
        self.max.set(i64::from(max));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckStatusLabels {
    check: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    check: &'static str,
}

/// `health_check_status{check,status}` (one-hot), `health_check_duration_seconds{check}`
/// and `health_ready`.
#[derive(Clone, Debug)]
pub struct HealthMetrics {
    status: Family<CheckStatusLabels, Gauge>,
    duration: Family<CheckLabels, Histogram, fn() -> Histogram>,
    ready: Gauge,
}

impl HealthMetrics {
    /// Records one key's status: 1 for `status`, 0 for the other two.
    pub fn set_status(&self, check: &'static str, status: crate::health::Status) {
        use crate::health::Status;
        for candidate in [Status::Pass, Status::Warn, Status::Fail] {
            self.status
                .get_or_create(&CheckStatusLabels {
                    check,
                    status: candidate.as_str(),
                })
                .set(i64::from(candidate == status));
        }
    }

    /// `health_ready`: set from the readiness decision each time `/metrics` is rendered.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub fn observe_duration(&self, check: &'static str, seconds: f64) {
        self.duration
            .get_or_create(&CheckLabels { check })
            .observe(seconds);
    }
}

/// Exposition format of `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4` (the default).
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the scraper's `Accept` header asks for it.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Every metric family of one application instance. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub http: HttpMetrics,
    pub errors: Errors,
    pub health: HealthMetrics,
    pub pool: PoolMetrics,
    pub orders: OrderMetrics,
    pub brokers: BrokerMetrics,
}

impl Metrics {
    /// Registers every family, then lets `custom` register its own (see the module docs).
    pub fn new(custom: impl FnOnce(&mut Registry)) -> Self {
        let mut r = Registry::default();
        let http = HttpMetrics::register(&mut r);

        let errors = Errors::default();
        // Every series exists from the start at 0, so rate() sees the first error.
        for component in Component::ALL {
            for kind in ErrorKind::ALL {
                let _created = errors.0.get_or_create(&ErrorLabels {
                    component: component.as_str(),
                    kind: kind.as_str(),
                });
            }
        }
        r.register(
            "errors",
            "Errors handled, by component and kind",
            Shown(errors.0.clone()),
        );

        let health = HealthMetrics {
            status: Family::default(),
            duration: Family::new_with_constructor(check_histogram),
            ready: Gauge::default(),
        };
        r.register(
            "health_check_status",
            "Latest status of each health check (1 for the current status, 0 for the others)",
            Shown(health.status.clone()),
        );
        r.register(
            "health_check_duration_seconds",
            "Time each health check took",
            Shown(health.duration.clone()),
        );
        r.register(
            "health_ready",
            "1 when /health/ready answers 200 (start-up done, not draining, critical checks passing), else 0",
            health.ready.clone(),
        );

        let pool = PoolMetrics::default();
        r.register(
            "db_pool_connections",
            "PostgreSQL pool connections by state",
            Shown(pool.connections.clone()),
        );
        r.register(
            "db_pool_max_connections",
            "PostgreSQL pool size limit",
            Shown(pool.max.clone()),
        );

        let orders = OrderMetrics {
            submitted: Family::default(),
            acknowledged: Family::default(),
            filled: Family::default(),
            cancelled: Family::default(),
            rejected: Family::default(),
            in_flight: Family::default(),
            ack_latency: Family::new_with_constructor(latency_histogram),
            fill_latency: Family::new_with_constructor(latency_histogram),
        };
        r.register(
            "orders_submitted",
            "Orders submitted to a broker",
            Shown(orders.submitted.clone()),
        );
        r.register(
            "orders_acknowledged",
            "Orders acknowledged by a broker",
            Shown(orders.acknowledged.clone()),
        );
        r.register(
            "orders_filled",
            "Orders filled",
            Shown(orders.filled.clone()),
        );
        r.register(
            "orders_cancelled",
            "Orders cancelled",
            Shown(orders.cancelled.clone()),
        );
        r.register(
            "orders_rejected",
            "Orders rejected, by reason",
            Shown(orders.rejected.clone()),
        );
        r.register(
            "orders_in_flight",
            "Orders sent and not yet acknowledged or rejected",
            Shown(orders.in_flight.clone()),
        );
        r.register(
            "order_ack_latency_seconds",
            "Time from sending an order to the broker's acknowledgement",
            Shown(orders.ack_latency.clone()),
        );
        r.register(
            "order_fill_latency_seconds",
            "Time from sending an order to its fill",
            Shown(orders.fill_latency.clone()),
        );

        let brokers = BrokerMetrics {
            up: Family::default(),
            reconnects: Family::default(),
            messages_received: Family::default(),
            errors: Family::default(),
            last_message_timestamp: Family::default(),
        };
        r.register(
            "broker_up",
            "1 while the broker session is live",
            Shown(brokers.up.clone()),
        );
        r.register(
            "broker_reconnects",
            "Broker reconnections",
            Shown(brokers.reconnects.clone()),
        );
        r.register(
            "broker_messages_received",
            "Messages received from the broker",
            Shown(brokers.messages_received.clone()),
        );
        r.register(
            "broker_errors",
            "Broker session errors, by kind",
            Shown(brokers.errors.clone()),
        );
        r.register(
            "broker_last_message_timestamp_seconds",
            "Unix time of the last message from the broker",
            Shown(brokers.last_message_timestamp.clone()),
        );

        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                revision: option_env!("BACKEND_REVISION").unwrap_or("unknown"),
            })
            .set(1);
        r.register(
            "build_info",
            "Build of the running binary (always 1)",
            Shown(build),
        );
        r.register_collector(Box::new(process::ProcessCollector));

        custom(&mut r);
        Self {
            registry: Arc::new(r),
            http,
            errors,
            health,
            pool,
            orders,
            brokers,
        }
    }

    /// The exposition text of every family.
    pub fn render(&self, format: Format) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail; an encoding error would be a bug in a label.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        match format {
            Format::OpenMetrics => out,
            Format::Prometheus => to_prometheus_text(&out),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    revision: &'static str,
}

/// Where the next line starting with `#` begins (or the end). Searches for the rare `#`
/// (memchr-fast) rather than for every newline.
fn next_descriptor(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find('#') {
        let at = from + i;
        if at == 0 || bytes[at - 1] == b'\n' {
            return at;
        }
        from = at + 1;
    }
    text.len()
}

/// Rewrites OpenMetrics text as Prometheus text 0.0.4: counters are described under their
/// sample name (`_total`), `unknown` becomes `untyped`, and `# UNIT` / `# EOF` go. Sample
/// lines are copied in whole blocks; only descriptor lines are looked at.
fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut pending_help: Option<&str> = None;
    let mut rest = openmetrics;
    while !rest.is_empty() {
        if !rest.starts_with('#') {
            // A block of samples, up to the next descriptor line.
            let end = next_descriptor(rest);
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        }
        let (line, next) = rest.split_once('\n').unwrap_or((rest, ""));
        rest = next;
        if let Some(help) = line.strip_prefix("# HELP ") {
            pending_help = Some(help);
        } else if let Some(typed) = line.strip_prefix("# TYPE ") {
            let (name, kind) = typed.split_once(' ').unwrap_or((typed, "untyped"));
            let (kind, suffix) = match kind {
                "counter" => ("counter", "_total"),
                "unknown" => ("untyped", ""),
                other => (other, ""),
            };
            if let Some(help) = pending_help.take() {
                let text = help.split_once(' ').map_or("", |(_, t)| t);
                for part in ["# HELP ", name, suffix, " ", text, "\n"] {
                    out.push_str(part);
                }
            }
            for part in ["# TYPE ", name, suffix, " ", kind, "\n"] {
                out.push_str(part);
            }
        }
        // `# UNIT` and `# EOF` are dropped.
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_by_their_samples() {
        let om = "# HELP errors Errors handled.\n# TYPE errors counter\nerrors_total{component=\"http\"} 3\n# HELP up Up.\n# TYPE up gauge\nup 1\n# EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP errors_total Errors handled.\n# TYPE errors_total counter\nerrors_total{component=\"http\"} 3\n# HELP up Up.\n# TYPE up gauge\nup 1\n"
        );
    }

    /// Every family on a real first scrape is checked by the integration test
    /// `every_design_family_is_on_the_first_scrape_with_help_text`; here, the two formats.
    #[test]
    fn both_formats_describe_families_their_own_way() {
        let metrics = Metrics::new(|_| {});
        metrics.errors.inc(Component::Http, ErrorKind::ServerError);
        let om = metrics.render(Format::OpenMetrics);
        assert!(om.ends_with("# EOF\n"));
        assert!(om.contains("# TYPE errors counter\n"));
        let text = metrics.render(Format::Prometheus);
        assert!(text.contains("# HELP errors_total Errors handled, by component and kind.\n# TYPE errors_total counter\n"), "{text}");
        assert!(
            text.contains("errors_total{component=\"http\",kind=\"server_error\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    }

    #[test]
    fn registries_are_per_instance() {
        let a = Metrics::new(|_| {});
        let b = Metrics::new(|_| {});
        a.errors.inc(Component::Redis, ErrorKind::Timeout);
        let series = r#"errors_total{component="redis",kind="timeout"}"#;
        assert!(
            a.render(Format::Prometheus)
                .contains(&format!("{series} 1\n"))
        );
        assert!(
            b.render(Format::Prometheus)
                .contains(&format!("{series} 0\n"))
        );
    }

    #[test]
    fn health_status_is_one_hot() {
        let m = Metrics::new(|_| {});
        m.health
            .set_status("redis:pubsub", crate::health::Status::Warn);
        let text = m.render(Format::Prometheus);
        assert!(text.contains("health_check_status{check=\"redis:pubsub\",status=\"warn\"} 1"));
        assert!(text.contains("health_check_status{check=\"redis:pubsub\",status=\"pass\"} 0"));
        assert!(text.contains("health_check_status{check=\"redis:pubsub\",status=\"fail\"} 0"));
    }

    #[test]
    fn negotiation() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
    }
}
