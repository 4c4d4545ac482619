//! The order routes. Request errors are `application/problem+json` naming what is wrong:
//! 415 for a non-JSON content type, 400 for malformed JSON, 413 for a body over 16 KiB,
//! 422 for a field that fails validation (the `field` member names it). Nothing is stored
//! for any of them.

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use super::problem::Problem;
use crate::orders::model::NewOrder;
use crate::orders::{OrderError, Submitted};

/// Largest accepted order body.
const MAX_BODY_BYTES: usize = 16 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/orders",
            post(submit).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .route("/api/v1/orders/{id}", get(fetch))
}

fn rejection(r: JsonRejection) -> Problem {
    match r {
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON with Content-Type: application/json",
        ),
        JsonRejection::JsonSyntaxError(e) => Problem::new(
            StatusCode::BAD_REQUEST,
            format!("malformed JSON: {}", e.body_text()),
        ),
        JsonRejection::JsonDataError(e) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.body_text())
        }
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            )
        }
        other => Problem::new(other.status(), other.body_text()),
    }
}

fn order_response(status: StatusCode, order: &crate::orders::model::Order) -> Response {
    let mut response = (status, Json(order)).into_response();
    if status == StatusCode::CREATED
        && let Ok(location) = format!("/api/v1/orders/{}", order.id).parse()
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// POST /api/v1/orders: 201 with the order as the broker left it (filled, accepted,
/// rejected by the broker), 200 for a retry of a stored order, 409 for a reused
/// `client_order_id`, 503 when the broker is down, 504 when it did not acknowledge.
async fn submit(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(r) => return rejection(r).into_response(),
    };
    let brokers = state.orders.broker_names();
    let new = match NewOrder::parse(&body, &brokers) {
        Ok(new) => new,
        Err(e) => {
            return Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{}: {}", e.field, e.problem),
            )
            .with("field", e.field)
            .into_response();
        }
    };
    match state.orders.submit(new).await {
        Ok(Submitted::Created(order)) => order_response(StatusCode::CREATED, &order),
        Ok(Submitted::Existing(order)) => order_response(StatusCode::OK, &order),
        Err(OrderError::Conflict(existing)) => Problem::new(
            StatusCode::CONFLICT,
            "client_order_id is already used by a different order",
        )
        .with("field", "client_order_id")
        .with("order", json!(existing))
        .into_response(),
        Err(OrderError::BrokerUnavailable(order)) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "broker {} is unavailable; the order was stored as rejected (broker_unavailable)",
                order.broker
            ),
        )
        .with("order", json!(order))
        .into_response(),
        Err(OrderError::TimedOut(order)) => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "broker {} did not acknowledge the order in time; it was stored as timed_out",
                order.broker
            ),
        )
        .with("order", json!(order))
        .into_response(),
        Err(OrderError::Storage(_)) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the order store is unavailable; nothing was sent, retry with the same client_order_id",
        )
        .into_response(),
    }
}

/// Whether `id` is a UUID in its usual text form.
fn is_uuid(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// GET /api/v1/orders/{id}
async fn fetch(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if !is_uuid(&id) {
        return Problem::new(StatusCode::BAD_REQUEST, "the order id must be a UUID")
            .into_response();
    }
    match state.orders.get(&id).await {
        Ok(Some(order)) => order_response(StatusCode::OK, &order),
        Ok(None) => Problem::new(StatusCode::NOT_FOUND, format!("no order {id}")).into_response(),
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the order store is unavailable",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        assert!(is_uuid("3f2504e0-4f89-11d3-9a0c-0305e82c3301"));
        assert!(!is_uuid("3f2504e0-4f89-11d3-9a0c-0305e82c330"));
        assert!(!is_uuid("3f2504e0x4f89-11d3-9a0c-0305e82c3301"));
        assert!(!is_uuid("not-a-uuid"));
    }
}
