//! `GET /metrics`: Prometheus text by default, OpenMetrics when the scraper asks for it
//! (`Accept: application/openmetrics-text`); optionally behind a bearer token.
//! Rendering reads in-memory families only; the pool gauges are refreshed from the pool's
//! own counters and `health_ready` from the readiness decision (no I/O).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use super::auth::bearer_matches;
use super::problem::Problem;
use crate::core::metrics::Format;

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.config.metrics_token {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !bearer_matches(token, authorization) {
            let mut response = Problem::new(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required for /metrics",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let pool = state.db.pool_stats();
    state.metrics.pool.set(pool.idle, pool.in_use, pool.max);
    state.metrics.health.set_ready(state.health.is_ready());
    let body = state.metrics.render(format);
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    response
}
