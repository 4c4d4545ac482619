//! Database migrations: embedded in the binary, applied at start-up on a dedicated
//! connection (retried with backoff while PostgreSQL is down or a migration fails), and
//! compared with the database by the `postgres:migrations` check.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::migrate::{MigrationType, Migrator};
use tokio_util::sync::CancellationToken;

use super::Database;
use crate::core::backoff::Backoff;
use crate::core::metrics::{Component, ErrorKind};
use crate::core::redact::redact_text;

static EMBEDDED: Migrator = sqlx::migrate!();

/// The migrations this binary knows, and the outcome of the last attempt to apply them.
#[derive(Clone)]
pub struct Migrations {
    migrator: Arc<Migrator>,
    /// Error of the last failed run, cleared by a successful one.
    last_error: Arc<Mutex<Option<String>>>,
}

/// The database compared with the migrations this binary knows.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Highest version applied successfully.
    pub latest_applied: Option<i64>,
    pub applied: usize,
    /// Known to the binary, not applied.
    pub pending: Vec<i64>,
    /// Recorded as failed (dirty) in the database.
    pub failed: Vec<i64>,
    /// Applied, but with a different checksum than the binary's file.
    pub modified: Vec<i64>,
    /// Applied in the database, unknown to the binary (the database is newer).
    pub unknown: Vec<i64>,
    /// The last run's error, if the last run failed.
    pub last_error: Option<String>,
}

impl Migrations {
    /// The migrations embedded from `backend/migrations`.
    pub fn embedded() -> Self {
        Self::new(Migrator::with_migrations(EMBEDDED.migrations.to_vec()))
    }

    /// Any set of migrations (tests use this to add pending or broken ones). Versions the
    /// database has but the binary does not are tolerated (reported by the check), so an
    /// older binary still starts during a rollback.
    pub fn new(mut migrator: Migrator) -> Self {
        migrator.set_ignore_missing(true);
        Self {
            migrator: Arc::new(migrator),
            last_error: Arc::new(Mutex::new(None)),
        }
    }

    fn set_last_error(&self, error: Option<String>) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = error;
        }
    }

    /// Creates the database if needed and applies pending migrations once.
    pub async fn run_once(&self, db: &Database, timeout: Duration) -> anyhow::Result<()> {
        let result = async {
            db.ensure_database_exists(timeout).await?;
            let mut conn = db.connect_direct(timeout).await?;
            // `run_direct` is `run` without the `Acquire` bound that trips the Send check.
            let outcome = self.migrator.run_direct(None, &mut conn, false).await;
            // Closing (not pooling) the connection releases the advisory lock even on error.
            drop(conn);
            outcome.map_err(anyhow::Error::from)
        }
        .await;
        match &result {
            Ok(()) => self.set_last_error(None),
            Err(e) => {
                db.errors().inc(Component::Database, ErrorKind::Migration);
                self.set_last_error(Some(redact_text(&format!("{e:#}"))));
            }
        }
        result
    }

    /// Retries [`Migrations::run_once`] with backoff until it succeeds or `cancel` fires.
    /// Returns whether the migrations are applied.
    pub async fn run_until_applied(
        &self,
        db: &Database,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let attempt = tokio::select! {
                () = cancel.cancelled() => return false,
                attempt = self.run_once(db, timeout) => attempt,
            };
            match attempt {
                Ok(()) => {
                    tracing::info!(
                        task = "migrations",
                        database = db.display_url(),
                        "database migrations applied"
                    );
                    return true;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        task = "migrations",
                        error = %redact_text(&format!("{e:#}")),
                        retry_in_ms = delay.as_millis() as u64,
                        "applying database migrations failed; will retry"
                    );
                    tokio::select! {
                        () = cancel.cancelled() => return false,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Compares the database's migration table with the known migrations.
    pub async fn status(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> Result<MigrationStatus, sqlx::Error> {
        let rows: Vec<(i64, bool, Vec<u8>)> = match sqlx::query_as(
            "SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&mut *conn)
        .await
        {
            Ok(rows) => rows,
            // 42P01 undefined_table: nothing applied yet.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
            Err(e) => return Err(e),
        };
        let known: BTreeMap<i64, &[u8]> = self
            .migrator
            .iter()
            .filter(|m| !matches!(m.migration_type, MigrationType::ReversibleDown))
            .map(|m| (m.version, m.checksum.as_ref()))
            .collect();
        let mut status = MigrationStatus::default();
        let mut applied = BTreeMap::new();
        for (version, success, checksum) in rows {
            if !success {
                status.failed.push(version);
                continue;
            }
            applied.insert(version, ());
            status.applied += 1;
            status.latest_applied = Some(
                status
                    .latest_applied
                    .map_or(version, |v: i64| v.max(version)),
            );
            match known.get(&version) {
                None => status.unknown.push(version),
                Some(sum) if *sum != checksum.as_slice() => status.modified.push(version),
                Some(_) => {}
            }
        }
        status.pending = known
            .keys()
            .filter(|v| !applied.contains_key(v))
            .copied()
            .collect();
        status.last_error = self.last_error.lock().ok().and_then(|e| e.clone());
        Ok(status)
    }
}
