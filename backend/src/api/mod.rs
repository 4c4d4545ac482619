//! The HTTP surface: one [`AppState`] shared by every route, and [`router`], the one place
//! where the feature routers and the layers are assembled.

pub mod health;
pub mod problem;

use std::sync::Arc;

use axum::Router;
use axum::http::{Method, StatusCode, Uri};

use crate::config::Config;
use crate::health::Health;
use problem::Problem;

/// What every handler may use. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub health: Health,
}

/// The whole application's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .fallback(not_found)
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> Problem {
    // The path is echoed back to the caller only, never used as a label or logged.
    Problem::new(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}
