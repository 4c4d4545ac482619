//! The `orders` table. Every query runs under a timeout; state changes only move forward
//! from the states listed in their `WHERE`, so a late or repeated broker message is a
//! no-op instead of a regression.

use std::time::Duration;

use super::model::{NewOrder, Order};
use crate::db::Database;

/// The columns of an [`Order`], numerics as canonical text, times as RFC 3339 UTC.
macro_rules! columns {
    () => {
        "id::text AS id, client_order_id, broker, symbol, side, order_type, \
         trim_scale(quantity)::text AS quantity, trim_scale(limit_price)::text AS limit_price, \
         status, reject_reason, broker_order_id, \
         trim_scale(filled_quantity)::text AS filled_quantity, trim_scale(fill_price)::text AS fill_price, \
         to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS created_at, \
         to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS updated_at"
    };
}

/// A storage failure (already counted and logged by the caller).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// How long one order query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

async fn bounded<T>(work: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, StoreError> {
    match tokio::time::timeout(QUERY_TIMEOUT, work).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Timeout(QUERY_TIMEOUT)),
    }
}

/// Inserts the order; `None` when its `client_order_id` exists already.
pub async fn insert(db: &Database, new: &NewOrder) -> Result<Option<Order>, StoreError> {
    bounded(
        sqlx::query_as::<_, Order>(concat!(
            "INSERT INTO orders (client_order_id, broker, symbol, side, order_type, quantity, limit_price) \
             VALUES ($1, $2, $3, $4, $5, $6::numeric, $7::numeric) \
             ON CONFLICT (client_order_id) DO NOTHING RETURNING ",
            columns!()
        ))
        .bind(&new.client_order_id)
        .bind(&new.broker)
        .bind(&new.symbol)
        .bind(new.side.as_str())
        .bind(new.order_type.as_str())
        .bind(new.quantity.as_str())
        .bind(new.limit_price.as_ref().map(|p| p.as_str()))
        .fetch_optional(db.pool()),
    )
    .await
}

pub async fn by_client_order_id(
    db: &Database,
    client_order_id: &str,
) -> Result<Option<Order>, StoreError> {
    bounded(
        sqlx::query_as::<_, Order>(concat!(
            "SELECT ",
            columns!(),
            " FROM orders WHERE client_order_id = $1"
        ))
        .bind(client_order_id)
        .fetch_optional(db.pool()),
    )
    .await
}

/// `id` must already be a well-formed UUID.
pub async fn by_id(db: &Database, id: &str) -> Result<Option<Order>, StoreError> {
    bounded(
        sqlx::query_as::<_, Order>(concat!(
            "SELECT ",
            columns!(),
            " FROM orders WHERE id = $1::uuid"
        ))
        .bind(id)
        .fetch_optional(db.pool()),
    )
    .await
}

/// new (or timed_out, for a late ack) -> accepted.
pub async fn accepted(
    db: &Database,
    client_order_id: &str,
    broker_order_id: &str,
) -> Result<Option<Order>, StoreError> {
    bounded(
        sqlx::query_as::<_, Order>(concat!(
            "UPDATE orders SET status = 'accepted', broker_order_id = $2, updated_at = now() \
             WHERE client_order_id = $1 AND status IN ('new', 'timed_out') RETURNING ",
            columns!()
        ))
        .bind(client_order_id)
        .bind(broker_order_id)
        .fetch_optional(db.pool()),
    )
    .await
}

/// new/accepted/timed_out -> filled.
pub async fn filled(
    db: &Database,
    client_order_id: &str,
    broker_order_id: &str,
    quantity: &str,
    price: f64,
) -> Result<Option<Order>, StoreError> {
    bounded(
        sqlx::query_as::<_, Order>(concat!(
            "UPDATE orders SET status = 'filled', broker_order_id = $2, filled_quantity = $3::numeric, \
             fill_price = $4::numeric, updated_at = now() \
             WHERE client_order_id = $1 AND status IN ('new', 'accepted', 'timed_out') RETURNING ",
            columns!()
        ))
        .bind(client_order_id)
        .bind(broker_order_id)
        .bind(quantity)
        .bind(format!("{price:.8}"))
        .fetch_optional(db.pool()),
    )
    .await
}

/// new/timed_out -> rejected with one of the fixed reasons.
pub async fn rejected(
    db: &Database,
    client_order_id: &str,
    reason: &str,
) -> Result<Option<Order>, StoreError> {
    bounded(
        sqlx::query_as::<_, Order>(concat!(
            "UPDATE orders SET status = 'rejected', reject_reason = $2, updated_at = now() \
             WHERE client_order_id = $1 AND status IN ('new', 'timed_out') RETURNING ",
            columns!()
        ))
        .bind(client_order_id)
        .bind(reason)
        .fetch_optional(db.pool()),
    )
    .await
}

/// new -> timed_out (no acknowledgement in time).
pub async fn timed_out(db: &Database, client_order_id: &str) -> Result<Option<Order>, StoreError> {
    bounded(
        sqlx::query_as::<_, Order>(concat!(
            "UPDATE orders SET status = 'timed_out', updated_at = now() \
             WHERE client_order_id = $1 AND status = 'new' RETURNING ",
            columns!()
        ))
        .bind(client_order_id)
        .fetch_optional(db.pool()),
    )
    .await
}
