//! The `/health` routes. Thin: read the latest snapshot and lifecycle flags, render IETF
//! `application/health+json`, pick the status code. No handler here does I/O, so a probe
//! answers in microseconds even while a dependency hangs.
//!
//! Public endpoints show statuses only; `/health/details` shows observed values and
//! (redacted) error text, and is protected by a bearer token or, without one, loopback.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use axum::body::Bytes;

use axum::Router;
use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::AppState;
use super::problem::Problem;
use crate::health::{Detail, Health, Snapshot, Status};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(service))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health/startup", get(startup))
        .route("/health/details", get(details))
        .route("/health/ui", get(super::status_page::page))
}

/// A health+json response: 200 for pass/warn, 503 for fail; never cached.
fn respond(status: Status, body: Map<String, Value>) -> Response {
    respond_bytes(status, Bytes::from(Value::Object(body).to_string()))
}

fn respond_bytes(status: Status, body: Bytes) -> Response {
    let mut response = (status_code(status), body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/health+json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// 503 for fail, 200 for pass and warn.
pub(super) fn status_code(status: Status) -> StatusCode {
    if status == Status::Fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

/// The top-level members every health body has.
fn body(health: &Health, status: Status, description: &str) -> Map<String, Value> {
    let info = health.info();
    let mut map = Map::new();
    map.insert("status".into(), json!(status));
    map.insert("version".into(), json!(info.version));
    map.insert("releaseId".into(), json!(info.release_id));
    map.insert("serviceId".into(), json!(info.service_id));
    map.insert("description".into(), json!(description));
    map
}

/// GET /health: the process is serving; service identity and uptime.
async fn service(State(state): State<AppState>) -> Response {
    let mut map = body(&state.health, Status::Pass, "trading backend");
    map.insert(
        "uptimeSeconds".into(),
        json!(crate::health::round2(state.health.uptime().as_secs_f64())),
    );
    respond(Status::Pass, map)
}

/// GET /health/live: the process's own machinery runs (the refresher's heartbeat is fresh).
async fn live(State(state): State<AppState>) -> Response {
    match state.health.liveness() {
        Ok(()) => respond_bytes(Status::Pass, state.health_cache.live.clone()),
        Err(reason) => {
            let mut map = body(&state.health, Status::Fail, "liveness");
            map.insert("output".into(), json!(reason));
            respond(Status::Fail, map)
        }
    }
}

/// GET /health/startup: migrations applied and the first round of checks done.
async fn startup(State(state): State<AppState>) -> Response {
    match state.health.startup_pending() {
        None => respond(Status::Pass, body(&state.health, Status::Pass, "startup")),
        Some(reason) => {
            let mut map = body(&state.health, Status::Fail, "startup");
            map.insert("output".into(), json!(reason));
            respond(Status::Fail, map)
        }
    }
}

/// `?verbose` and `?exclude=<name>` (repeatable) of /health/ready.
struct ReadyQuery {
    verbose: bool,
    exclude: Vec<String>,
}

fn parse_ready_query(raw: Option<&str>) -> ReadyQuery {
    let mut query = ReadyQuery {
        verbose: false,
        exclude: Vec::new(),
    };
    for (key, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "verbose" => query.verbose = !matches!(value.as_ref(), "false" | "0"),
            "exclude" => query.exclude.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            _ => {}
        }
    }
    query
}

/// GET /health/ready: 200 when every critical check passes or warns, start-up is done and
/// the instance is not draining; 503 otherwise, saying why without error text.
async fn ready(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let health = &state.health;
    let query = parse_ready_query(raw.as_deref());
    let valid = if query.exclude.is_empty() {
        Vec::new()
    } else {
        Snapshot::exclusion_names(health.checks())
    };
    let unknown: Vec<&String> = query
        .exclude
        .iter()
        .filter(|e| !valid.contains(&e.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Problem::new(
            StatusCode::BAD_REQUEST,
            format!("unknown check name(s) in exclude: {unknown:?}"),
        )
        .with("validNames", json!(valid))
        .into_response();
    }

    // The plain, steady-state answer is rendered once per snapshot and reused until a
    // newer snapshot exists or one of its results could turn stale.
    let snapshot = health.snapshot();
    let now = Instant::now();
    let cacheable = raw.as_deref().is_none_or(str::is_empty)
        && !health.is_draining()
        && health.startup_pending().is_none();
    if cacheable
        && let Some(cached) = state.health_cache.ready.read().ok().and_then(|c| c.clone())
        && cached.round == snapshot.round
        && now < cached.valid_until
    {
        return respond_bytes(cached.status, cached.body.clone());
    }
    let stale_after = health.settings().stale_after;
    let evaluation = snapshot.evaluate(now, stale_after, &query.exclude);
    let output = health.not_ready_reason(&evaluation);
    let status = if output.is_some() {
        Status::Fail
    } else {
        evaluation.status
    };

    let mut map = body(health, status, "readiness");
    if let Some(output) = &output {
        map.insert("output".into(), json!(output));
    }
    if query.verbose {
        let mut notes = evaluation.verbose_notes();
        notes.extend(output.map(|o| format!("[-]{o}")));
        map.insert("notes".into(), json!(notes));
    }
    map.insert(
        "checks".into(),
        Value::Object(evaluation.render_checks(Detail::StatusOnly)),
    );
    let body = Bytes::from(Value::Object(map).to_string());
    if cacheable {
        let valid_until = snapshot
            .results
            .iter()
            .map(|r| r.measured + stale_after)
            .min()
            .unwrap_or(now);
        if let Ok(mut slot) = state.health_cache.ready.write() {
            *slot = Some(Arc::new(CachedReady {
                round: snapshot.round,
                valid_until,
                status,
                body: body.clone(),
            }));
        }
    }
    respond_bytes(status, body)
}

/// Bodies reused across requests: the liveness body never changes; the plain readiness
/// body changes only with a new snapshot or when a result turns stale.
pub struct HealthCache {
    live: Bytes,
    ready: RwLock<Option<Arc<CachedReady>>>,
}

struct CachedReady {
    round: u64,
    valid_until: Instant,
    status: Status,
    body: Bytes,
}

impl HealthCache {
    pub fn new(health: &Health) -> Self {
        Self {
            live: Bytes::from(Value::Object(body(health, Status::Pass, "liveness")).to_string()),
            ready: RwLock::new(None),
        }
    }
}

/// GET /health/details: every check with observed values; protected.
async fn details(State(state): State<AppState>, request: Request) -> Response {
    if let Some(refused) = details_refusal(&state, &request) {
        return refused;
    }
    let (status, map) = details_body(&state.health);
    respond(status, map)
}

/// The 401 or 403 answer when [`details_access`] refuses the request; `None` lets it
/// through. Shared by `/health/details` and the status page.
pub(super) fn details_refusal(state: &AppState, request: &Request) -> Option<Response> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let path = request.uri().path();
    match details_access(state.config.health_details_token.as_deref(), bearer, peer) {
        Access::Granted => None,
        Access::Unauthorized => {
            let mut response = Problem::new(
                StatusCode::UNAUTHORIZED,
                format!("a valid bearer token is required for {path}"),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Some(response)
        }
        Access::Forbidden => Some(
            Problem::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{path} is only served to loopback clients unless HEALTH_DETAILS_TOKEN is set"
                ),
            )
            .into_response(),
        ),
    }
}

/// The `/health/details` body: every check with observed values and redacted errors,
/// and the overall status.
pub(super) fn details_body(health: &Health) -> (Status, Map<String, Value>) {
    let snapshot = health.snapshot();
    let evaluation = snapshot.evaluate(Instant::now(), health.settings().stale_after, &[]);
    // Before the first round there is nothing to judge: say so rather than "pass".
    let status = if snapshot.round == 0 {
        Status::Warn
    } else {
        evaluation.status
    };
    let mut map = body(health, status, "health details");
    let lifecycle = if health.is_draining() {
        "draining".to_owned()
    } else {
        health
            .startup_pending()
            .map_or_else(|| "ready to serve".to_owned(), str::to_owned)
    };
    map.insert(
        "notes".into(),
        json!([
            format!("lifecycle: {lifecycle}"),
            format!("round: {}", snapshot.round)
        ]),
    );
    if status != Status::Pass {
        let failing = evaluation.failing_names(false);
        let output = if snapshot.round == 0 {
            "no round of checks has completed yet".to_owned()
        } else if failing.is_empty() {
            "some checks warn".to_owned()
        } else {
            format!("failing: {}", failing.join(", "))
        };
        map.insert("output".into(), json!(output));
    }
    map.insert(
        "checks".into(),
        Value::Object(evaluation.render_checks(Detail::Full)),
    );
    (status, map)
}

/// Who may read /health/details.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    Granted,
    /// A token is configured and the request lacks it (401).
    Unauthorized,
    /// No token is configured and the peer is not loopback (403).
    Forbidden,
}

/// With a token configured: the request must carry `Authorization: Bearer <token>`
/// (compared in constant time). Without one: only loopback peers.
pub fn details_access(
    token: Option<&str>,
    authorization: Option<&str>,
    peer: Option<IpAddr>,
) -> Access {
    match token {
        Some(expected) if super::auth::bearer_matches(expected, authorization) => Access::Granted,
        Some(_) => Access::Unauthorized,
        None => match peer {
            Some(ip) if is_loopback(ip) => Access::Granted,
            _ => Access::Forbidden,
        },
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef";

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn without_a_token_only_loopback_peers_get_details() {
        assert_eq!(details_access(None, None, ip("127.0.0.1")), Access::Granted);
        assert_eq!(
            details_access(None, None, ip("127.8.9.10")),
            Access::Granted
        );
        assert_eq!(details_access(None, None, ip("::1")), Access::Granted);
        assert_eq!(
            details_access(None, None, ip("::ffff:127.0.0.1")),
            Access::Granted
        );
        assert_eq!(
            details_access(None, None, ip("10.0.0.7")),
            Access::Forbidden
        );
        assert_eq!(
            details_access(None, None, ip("2001:db8::1")),
            Access::Forbidden
        );
        assert_eq!(details_access(None, None, None), Access::Forbidden);
        // A bearer header does not help when no token is configured.
        assert_eq!(
            details_access(None, Some("Bearer x"), ip("10.0.0.7")),
            Access::Forbidden
        );
    }

    #[test]
    fn with_a_token_every_peer_needs_it() {
        let ok = format!("Bearer {TOKEN}");
        assert_eq!(
            details_access(Some(TOKEN), Some(&ok), ip("10.0.0.7")),
            Access::Granted
        );
        assert_eq!(
            details_access(Some(TOKEN), None, ip("127.0.0.1")),
            Access::Unauthorized
        );
        assert_eq!(
            details_access(Some(TOKEN), Some("Bearer wrong"), ip("127.0.0.1")),
            Access::Unauthorized
        );
        assert_eq!(
            details_access(Some(TOKEN), Some(TOKEN), ip("127.0.0.1")),
            Access::Unauthorized
        );
        let longer = format!("Bearer {TOKEN}0");
        assert_eq!(
            details_access(Some(TOKEN), Some(&longer), ip("127.0.0.1")),
            Access::Unauthorized
        );
    }

    #[test]
    fn ready_query_parsing() {
        let q = parse_ready_query(Some("verbose&exclude=redis&exclude=cpu,disk"));
        assert!(q.verbose);
        assert_eq!(q.exclude, ["redis", "cpu", "disk"]);
        let q = parse_ready_query(Some("verbose=false"));
        assert!(!q.verbose);
        assert!(parse_ready_query(None).exclude.is_empty());
    }
}

/// The readiness cache through the real router: a cached 200 must not outlive its
/// results. No servers are needed: every client in the state connects lazily.
#[cfg(test)]
mod cache_tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use clap::Parser;
    use tower::ServiceExt;

    use crate::api::{AppState, Services, router};
    use crate::config::Config;
    use crate::core::metrics::Metrics;
    use crate::db::Database;
    use crate::health::{
        Check, CheckFuture, CheckInfo, ComponentType, Health, HealthSettings, Observation,
        ServiceInfo,
    };
    use crate::orders::Orders;
    use crate::redis_client::Redis;

    struct Passing;

    impl Check for Passing {
        fn info(&self) -> CheckInfo {
            CheckInfo {
                keys: &["fake:check"],
                component_type: ComponentType::Component,
                critical: true,
            }
        }
        fn run(&self) -> CheckFuture<'_> {
            Box::pin(async { vec![Observation::pass("fake:check")] })
        }
    }

    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        config: Config,
    }

    fn health_with_one_passing_check() -> Health {
        Health::new(
            vec![Arc::new(Passing)],
            HealthSettings {
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                stale_after: Duration::from_secs(3),
            },
            ServiceInfo::current(),
            Metrics::new(|_| {}).health.clone(),
        )
    }

    #[tokio::test]
    async fn details_warn_until_the_first_round_has_run() {
        let health = health_with_one_passing_check();
        let (status, body) = super::details_body(&health);
        assert_eq!(status, crate::health::Status::Warn);
        assert_eq!(body["output"], "no round of checks has completed yet");
        assert_eq!(body["checks"], serde_json::json!({}));
        health.run_round().await;
        let (status, body) = super::details_body(&health);
        assert_eq!(status, crate::health::Status::Pass);
        assert!(body.get("output").is_none(), "{body:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cached_ready_answer_expires_when_its_results_go_stale() {
        let config = Arc::new(Defaults::try_parse_from(["backend"]).unwrap().config);
        let metrics = Metrics::new(|_| {});
        let db = Database::connect_lazy(
            &config.database_url,
            1,
            Duration::from_secs(1),
            metrics.errors.clone(),
        )
        .unwrap();
        let redis = Redis::connect_lazy(
            &config.redis_url,
            Duration::from_secs(1),
            metrics.errors.clone(),
        )
        .unwrap();
        let (orders, _publisher) = Orders::new(
            db.clone(),
            redis,
            HashMap::new(),
            metrics.orders.clone(),
            metrics.errors.clone(),
            Duration::from_secs(1),
        );
        let health = health_with_one_passing_check();
        let state = AppState::new(Services {
            config,
            health_cache: super::HealthCache::new(&health),
            health: health.clone(),
            metrics,
            db,
            orders,
        });
        let app = router(state, axum::Router::new());
        let ready = || async {
            let request = Request::get("/health/ready").body(Body::empty()).unwrap();
            app.clone()
                .oneshot(request)
                .await
                .unwrap()
                .status()
                .as_u16()
        };

        health.set_migrations_ready();
        health.run_round().await;
        assert_eq!(ready().await, 200);
        assert_eq!(ready().await, 200, "served from the cache");
        // No new round (a wedged refresher): once the result is older than stale_after,
        // the cached 200 must not be served.
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(ready().await, 503);
    }
}
