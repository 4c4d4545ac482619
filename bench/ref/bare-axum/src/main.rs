//! Benchmark reference: the practical limit of an axum server on this machine.
//! `/health/live` answers a constant; `/health/ready` runs `SELECT 1` per request, as a
//! naive readiness check does. Usage: `bare-axum <addr> <database-url>`.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use sqlx::PgPool;

const PASS: &str = r#"{"status":"pass"}"#;
const IETF_LIVE: &str = r#"{"description":"liveness","releaseId":"0.1.0","serviceId":"vm:7744:2584","status":"pass","version":"0.1.0"}"#;

async fn ready(State(pool): State<PgPool>) -> (StatusCode, &'static str) {
    match sqlx::query("SELECT 1").execute(&pool).await {
        Ok(_) => (StatusCode::OK, PASS),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"fail"}"#),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18002".into());
    let url = args
        .next()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect_lazy(&url)?;
    let app = Router::new()
        .route("/health/live", get(|| async { PASS }))
        // The same bytes and headers as the backend's /health/live, to separate response
        // size from per-request work when comparing.
        .route(
            "/health/live-ietf",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "application/health+json"),
                        (header::CACHE_CONTROL, "no-store"),
                    ],
                    IETF_LIVE,
                )
            }),
        )
        .route("/health/ready", get(ready))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
