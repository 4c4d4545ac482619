//! PostgreSQL: the application's one connection pool, creating the database when it is
//! missing, and dedicated connections for migrations.
//!
//! Nothing here waits without a bound: the pool's acquire timeout covers connecting, and
//! dedicated connections are opened under an explicit timeout.

pub mod migrations;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Postgres};

use crate::core::metrics::{Component, ErrorKind, Errors};
use crate::core::redact::redact_url;

/// Handle on PostgreSQL: cheap to clone.
#[derive(Clone)]
pub struct Database {
    pool: PgPool,
    options: PgConnectOptions,
    /// `DATABASE_URL` with its password masked, for logs and check output.
    display_url: Arc<str>,
    /// Acquire attempts that gave up waiting for a connection (sqlx does not count them).
    acquire_timeouts: Arc<AtomicU64>,
    errors: Errors,
}

/// The pool's size and usage, read without I/O.
#[derive(Clone, Copy, Debug)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
    pub in_use: u32,
    pub max: u32,
}

impl Database {
    /// Builds the pool without connecting: the service starts while PostgreSQL is down.
    pub fn connect_lazy(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
        errors: Errors,
    ) -> anyhow::Result<Self> {
        let display_url: Arc<str> = redact_url(url).into();
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| {
                anyhow::anyhow!(
                    "invalid DATABASE_URL {display_url}: {}",
                    crate::core::redact::redact_text(&e.to_string())
                )
            })?
            .application_name("backend");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .idle_timeout(Duration::from_secs(300))
            .connect_lazy_with(options.clone());
        Ok(Self {
            pool,
            options,
            display_url,
            acquire_timeouts: Arc::new(AtomicU64::new(0)),
            errors,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn errors(&self) -> &Errors {
        &self.errors
    }

    pub fn pool_stats(&self) -> PoolStats {
        let size = self.pool.size();
        let idle = u32::try_from(self.pool.num_idle())
            .unwrap_or(u32::MAX)
            .min(size);
        PoolStats {
            size,
            idle,
            in_use: size - idle,
            max: self.pool.options().get_max_connections(),
        }
    }

    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    /// A pooled connection; counts the acquires that timed out.
    pub async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let result = self.pool.acquire().await;
        match &result {
            Ok(_) => {}
            Err(sqlx::Error::PoolTimedOut) => {
                self.acquire_timeouts.fetch_add(1, Ordering::Relaxed);
                self.errors.inc(Component::Database, ErrorKind::Timeout);
            }
            Err(_) => self.errors.inc(Component::Database, ErrorKind::Connection),
        }
        result
    }

    pub fn acquire_timeouts(&self) -> u64 {
        self.acquire_timeouts.load(Ordering::Relaxed)
    }

    /// Opens a connection outside the pool (migrations hold an advisory lock on it, which
    /// must not outlive a failed run on a pooled connection).
    pub async fn connect_direct(&self, timeout: Duration) -> anyhow::Result<PgConnection> {
        tokio::time::timeout(timeout, PgConnection::connect_with(&self.options))
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {}ms", timeout.as_millis()))?
            .with_context(|| format!("connecting to PostgreSQL at {}", self.display_url))
    }

    /// Creates the database named in `DATABASE_URL` if it does not exist. Concurrent
    /// instances doing the same is fine.
    pub async fn ensure_database_exists(&self, timeout: Duration) -> anyhow::Result<()> {
        let Some(name) = self.options.get_database().map(str::to_owned) else {
            return Ok(()); // no database named: the server's default for the user
        };
        let admin = self.options.clone().database("postgres");
        let work = async {
            let mut conn = PgConnection::connect_with(&admin)
                .await
                .with_context(|| format!("connecting to PostgreSQL at {}", self.display_url))?;
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                    .bind(&name)
                    .fetch_optional(&mut conn)
                    .await
                    .context("looking up the database")?;
            if exists.is_none() {
                let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
                match sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                {
                    Ok(_) => tracing::info!(database = %name, "created the database"),
                    // 42P04 duplicate_database, 23505: another instance won the race.
                    Err(sqlx::Error::Database(e))
                        if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
                    Err(e) => return Err(e).with_context(|| format!("creating database {name}")),
                }
            }
            let _ = conn.close().await;
            Ok(())
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| {
            anyhow::anyhow!(
                "timed out after {}ms checking that database {name} exists",
                timeout.as_millis()
            )
        })?
    }

    /// Closes the pool, waiting for checked-out connections up to `timeout`.
    pub async fn close(&self, timeout: Duration) {
        if tokio::time::timeout(timeout, self.pool.close())
            .await
            .is_err()
        {
            tracing::warn!("PostgreSQL pool did not close in time");
        }
    }
}
