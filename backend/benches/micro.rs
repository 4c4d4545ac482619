//! Micro benchmarks with a plain timing loop (no criterion: one less heavy dependency).
//! Each figure is the median of 5 batches of at least 200 ms. Run with
//! `cargo bench -p backend --bench micro`; CI only compiles it (`cargo bench --no-run`).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark setup")]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use backend::core::metrics::http::{Instrumentation, TrackLayer};
use backend::core::metrics::{Format, Metrics};
use backend::health::{CheckResult, ComponentType, Detail, Observation, Snapshot, Status};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tower::ServiceExt;

/// Nanoseconds per call of `f`: the median over 5 batches.
fn per_op(mut f: impl FnMut()) -> f64 {
    let mut batch = 1u64;
    loop {
        let started = Instant::now();
        for _ in 0..batch {
            f();
        }
        if started.elapsed() >= Duration::from_millis(200) {
            break;
        }
        batch *= 2;
    }
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..batch {
                f();
            }
            started.elapsed().as_nanos() as f64 / batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[2]
}

fn middleware() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let metrics = Metrics::new(|_| {});
    let plain: Router = Router::new().route("/orders/{id}", get(|| async { "ok" }));
    let instrumented = plain.clone().layer(TrackLayer(Arc::new(Instrumentation {
        http: metrics.http.clone(),
        errors: metrics.errors.clone(),
    })));
    let call = |router: &Router| {
        let router = router.clone();
        runtime.block_on(async move {
            let request = Request::get("/orders/42").body(Body::empty()).unwrap();
            black_box(router.oneshot(request).await.unwrap());
        })
    };
    let off = per_op(|| call(&plain));
    let on = per_op(|| call(&instrumented));
    println!(
        "middleware: {off:.0} ns/request without, {on:.0} ns with: +{:.0} ns ({:.2}x throughput)",
        on - off,
        off / on
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeriesLabels {
    route: String,
    status: &'static str,
}

fn metrics_rendering() {
    for series in [100usize, 1_000, 10_000] {
        let family = Family::<SeriesLabels, Counter>::default();
        let metrics =
            Metrics::new(|r| r.register("bench_requests", "Synthetic series", family.clone()));
        for i in 0..series {
            family
                .get_or_create(&SeriesLabels {
                    route: format!("/route/{i}"),
                    status: "2xx",
                })
                .inc_by(i as u64);
        }
        let bytes = metrics.render(Format::Prometheus).len();
        let text = per_op(|| {
            black_box(metrics.render(Format::Prometheus));
        });
        let open = per_op(|| {
            black_box(metrics.render(Format::OpenMetrics));
        });
        println!(
            "/metrics rendering, {series:>6} series (+ the built-in families, {bytes} B): {:.1} us Prometheus text, {:.1} us OpenMetrics",
            text / 1000.0,
            open / 1000.0
        );
    }
}

fn snapshot_rendering() {
    let keys = [
        "postgres:connection",
        "postgres:responseTime",
        "postgres:connections",
        "postgres:migrations",
        "redis:connection",
        "redis:responseTime",
        "redis:memory",
        "redis:connections",
        "redis:pubsub",
        "broker:connection",
        "cpu:utilization",
        "memory:utilization",
        "disk:utilization",
        "process:info",
    ];
    let results = keys
        .iter()
        .map(|key| CheckResult {
            name: key,
            component_type: ComponentType::Datastore,
            critical: true,
            observations: vec![Observation::pass(key).value(1.25, "ms").field("extra", 42)],
            measured_at: SystemTime::now(),
            measured: tokio::time::Instant::now(),
            duration: Duration::from_micros(300),
        })
        .collect();
    let snapshot = Arc::new(Snapshot { round: 1, results });
    let stale = Duration::from_secs(15);
    let render = |detail: Detail| {
        let evaluation = snapshot.evaluate(tokio::time::Instant::now(), stale, &[]);
        assert_eq!(evaluation.status, Status::Pass);
        serde_json::Value::Object(evaluation.render_checks(detail)).to_string()
    };
    let public = per_op(|| {
        black_box(render(Detail::StatusOnly));
    });
    let full = per_op(|| {
        black_box(render(Detail::Full));
    });
    println!(
        "health snapshot (14 checks): {:.1} us readiness body, {:.1} us details body",
        public / 1000.0,
        full / 1000.0
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` compatibility: nothing to list
    }
    middleware();
    metrics_rendering();
    snapshot_rendering();
}
