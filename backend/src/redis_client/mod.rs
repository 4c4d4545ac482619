//! Redis: the application's one multiplexed connection (a `ConnectionManager` that
//! reconnects by itself) and the pub/sub [`subscriber`].
//!
//! Every command runs under [`Redis::timeout`]: after a server death the manager may spend
//! seconds in reconnect backoff, and no caller may wait that long unbounded.

pub mod subscriber;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, FromRedisValue, IntoConnectionInfo};

use crate::core::metrics::{Component, ErrorKind, Errors};
use crate::core::redact::{redact_text, redact_url};

/// Handle on Redis: cheap to clone.
#[derive(Clone)]
pub struct Redis {
    manager: ConnectionManager,
    timeout: Duration,
    display_url: Arc<str>,
    errors: Errors,
}

/// Reconnect policy shared by both connections: a few quick retries, then the next command
/// tries again; each attempt and response bounded by `timeout`.
pub(crate) fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_secs(2))
}

pub(crate) fn client(url: &str, resp3: bool) -> anyhow::Result<Client> {
    let display = redact_url(url);
    let mut info = url.into_connection_info().map_err(|e| {
        anyhow::anyhow!(
            "invalid REDIS_URL {display}: {}",
            redact_text(&e.to_string())
        )
    })?;
    if resp3 {
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        info = info.set_redis_settings(settings);
    }
    Client::open(info).with_context(|| format!("opening Redis client for {display}"))
}

impl Redis {
    /// Builds the connection manager without connecting: the service starts while Redis
    /// is down, and the first command connects.
    pub fn connect_lazy(url: &str, timeout: Duration, errors: Errors) -> anyhow::Result<Self> {
        let manager =
            ConnectionManager::new_lazy_with_config(client(url, false)?, manager_config(timeout))
                .context("creating the Redis connection manager")?;
        Ok(Self {
            manager,
            timeout,
            display_url: redact_url(url).into(),
            errors,
        })
    }

    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    /// Runs one command under the timeout.
    ///
    /// A connection that broke since its last use (a Redis restart, a failover) fails the
    /// first command sent on it while the manager reconnects; that one failure is retried
    /// once, within the same timeout. (A retried PUBLISH may be delivered twice.)
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> anyhow::Result<T> {
        let mut conn = self.manager.clone();
        let attempts = async {
            match cmd.query_async::<T>(&mut conn).await {
                Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                    cmd.query_async::<T>(&mut conn).await
                }
                first => first,
            }
        };
        match tokio::time::timeout(self.timeout, attempts).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                let kind = if e.is_timeout() {
                    ErrorKind::Timeout
                } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
                {
                    ErrorKind::Connection
                } else {
                    ErrorKind::Query
                };
                self.errors.inc(Component::Redis, kind);
                Err(anyhow::anyhow!(redact_text(&e.to_string())))
            }
            Err(_) => {
                self.errors.inc(Component::Redis, ErrorKind::Timeout);
                Err(anyhow::anyhow!(
                    "no reply within {}ms",
                    self.timeout.as_millis()
                ))
            }
        }
    }
}
