//! PostgreSQL checks: `postgres:connection` + `postgres:responseTime` (acquire a pooled
//! connection and run `SELECT 1`), `postgres:connections` (pool usage, no I/O) and
//! `postgres:migrations` (applied versus embedded).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::{Check, CheckFuture, CheckInfo, ComponentType, Observation, Status, round2};
use crate::core::redact::redact_text;
use crate::db::Database;
use crate::db::migrations::Migrations;

/// `postgres:connection` and `postgres:responseTime`.
pub struct ConnectionCheck {
    pub db: Database,
    pub latency_warn: Duration,
    pub critical: bool,
}

impl Check for ConnectionCheck {
    fn info(&self) -> CheckInfo {
        CheckInfo {
            keys: &["postgres:connection", "postgres:responseTime"],
            component_type: ComponentType::Datastore,
            critical: self.critical,
        }
    }
    fn run(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let started = Instant::now();
            let result = async {
                let mut conn = self.db.acquire().await?;
                let acquired = started.elapsed();
                sqlx::query("SELECT 1").execute(&mut *conn).await?;
                Ok::<_, sqlx::Error>(acquired)
            }
            .await;
            let elapsed_ms = round2(started.elapsed().as_secs_f64() * 1000.0);
            match result {
                Ok(acquired) => {
                    let mut latency = Observation::pass("postgres:responseTime")
                        .value(elapsed_ms, "ms")
                        .field("acquireMs", round2(acquired.as_secs_f64() * 1000.0));
                    if started.elapsed() > self.latency_warn {
                        latency = latency.worsen(
                            Status::Warn,
                            format!(
                                "SELECT 1 took {elapsed_ms}ms (warn above {}ms)",
                                self.latency_warn.as_millis()
                            ),
                        );
                    }
                    vec![
                        Observation::pass("postgres:connection")
                            .value(true, "connected")
                            .field("target", self.db.display_url()),
                        latency,
                    ]
                }
                Err(e) => {
                    let reason = match e {
                        sqlx::Error::PoolTimedOut => {
                            "no connection available (pool acquire timed out)".to_owned()
                        }
                        other => redact_text(&other.to_string()),
                    };
                    vec![
                        Observation::fail("postgres:connection", reason.clone())
                            .value(false, "connected")
                            .field("target", self.db.display_url()),
                        Observation::fail("postgres:responseTime", reason).value(elapsed_ms, "ms"),
                    ]
                }
            }
        })
    }
}

/// `postgres:connections`: pool size, idle, in use, max and acquire timeouts. No I/O.
pub struct PoolCheck {
    pub db: Database,
    pub critical: bool,
    /// Acquire timeouts seen at the previous run, to warn on new ones.
    pub seen_timeouts: AtomicU64,
}

impl Check for PoolCheck {
    fn info(&self) -> CheckInfo {
        CheckInfo {
            keys: &["postgres:connections"],
            component_type: ComponentType::Datastore,
            critical: self.critical,
        }
    }
    fn run(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let crate::db::PoolStats {
                size,
                idle,
                in_use,
                max,
            } = self.db.pool_stats();
            let timeouts = self.db.acquire_timeouts();
            let new_timeouts =
                timeouts.saturating_sub(self.seen_timeouts.swap(timeouts, Ordering::Relaxed));
            let mut obs = Observation::pass("postgres:connections")
                .value(in_use, "connections")
                .field("size", size)
                .field("idle", idle)
                .field("inUse", in_use)
                .field("max", max)
                .field("acquireTimeouts", timeouts);
            if in_use >= max {
                obs = obs.worsen(
                    Status::Warn,
                    format!("pool saturated: {in_use} of {max} connections in use"),
                );
            }
            if new_timeouts > 0 {
                obs = obs.worsen(
                    Status::Warn,
                    format!("{new_timeouts} acquire timeouts since the last check"),
                );
            }
            vec![obs]
        })
    }
}

/// `postgres:migrations`: applied, pending, failed, modified and unknown versions.
pub struct MigrationsCheck {
    pub db: Database,
    pub migrations: Migrations,
    pub critical: bool,
}

impl Check for MigrationsCheck {
    fn info(&self) -> CheckInfo {
        CheckInfo {
            keys: &["postgres:migrations"],
            component_type: ComponentType::Datastore,
            critical: self.critical,
        }
    }
    fn run(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let status = async {
                let mut conn = self.db.acquire().await?;
                self.migrations.status(&mut conn).await
            }
            .await;
            let s = match status {
                Ok(s) => s,
                Err(e) => {
                    return vec![Observation::fail(
                        "postgres:migrations",
                        format!(
                            "cannot read the migration table: {}",
                            redact_text(&e.to_string())
                        ),
                    )];
                }
            };
            let mut obs = Observation::pass("postgres:migrations")
                .value(json!(s.latest_applied), "version")
                .field("applied", s.applied)
                .field("pending", json!(s.pending))
                .field("failed", json!(s.failed))
                .field("modified", json!(s.modified))
                .field("unknown", json!(s.unknown));
            if !s.pending.is_empty() {
                obs = obs.worsen(
                    Status::Fail,
                    format!("{} pending: {:?}", s.pending.len(), s.pending),
                );
            }
            if !s.failed.is_empty() {
                obs = obs.worsen(
                    Status::Fail,
                    format!("failed (dirty) versions: {:?}", s.failed),
                );
            }
            if !s.modified.is_empty() {
                obs = obs.worsen(
                    Status::Fail,
                    format!("changed after being applied: {:?}", s.modified),
                );
            }
            if let Some(error) = s.last_error {
                obs = obs.worsen(Status::Fail, format!("last migration run failed: {error}"));
            }
            if !s.unknown.is_empty() {
                obs = obs.worsen(
                    Status::Warn,
                    format!(
                        "database has versions this binary does not know (newer release?): {:?}",
                        s.unknown
                    ),
                );
            }
            vec![obs]
        })
    }
}
