//! The HTTP surface: one [`AppState`] shared by every route, and [`router`], the one place
//! where the feature routers and the layers are assembled.

pub mod auth;
pub mod health;
pub mod metrics;
pub mod orders;
pub mod problem;
pub mod server;
pub mod status_page;

use std::sync::Arc;

use axum::Router;
use axum::http::{Method, StatusCode, Uri};

use crate::config::Config;
use crate::core::metrics::Metrics;
use crate::core::metrics::http::{Instrumentation, TrackLayer};
use crate::db::Database;
use crate::health::Health;
use crate::orders::Orders;
use problem::Problem;

/// What every handler may use: one `Arc`, because axum clones the state for every
/// request (the services inside hold dozens of `Arc`s of their own).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services behind [`AppState`].
pub struct Services {
    pub config: Arc<Config>,
    pub health: Health,
    pub metrics: Metrics,
    pub db: Database,
    pub orders: Orders,
    pub health_cache: health::HealthCache,
}

/// The whole application's routes (plus `extra`), with the metrics middleware when
/// metrics are enabled. `/metrics` is here unless it has a listener of its own.
pub fn router(state: AppState, extra: Router) -> Router {
    let config = Arc::clone(&state.config);
    let mut routes = Router::new()
        .merge(health::router())
        .merge(orders::router());
    if config.metrics_enabled && config.metrics_addr.is_none() {
        routes = routes.merge(metrics::router());
    }
    // Shared behind one Arc: the middleware state is cloned for every request.
    let instrumentation = Arc::new(Instrumentation {
        http: state.metrics.http.clone(),
        errors: state.metrics.errors.clone(),
    });
    let app = routes.fallback(not_found).with_state(state).merge(extra);
    if config.metrics_enabled {
        app.layer(TrackLayer(instrumentation))
    } else {
        app
    }
}

/// The router of the separate metrics listener (`METRICS_ADDR`).
pub fn metrics_router(state: AppState) -> Router {
    metrics::router().fallback(not_found).with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> Problem {
    // The path is echoed back to the caller only, never used as a label or logged.
    Problem::new(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}
