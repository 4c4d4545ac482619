//! `postgres:migrations`: pending, failed and unknown versions reported correctly, and
//! start-up/readiness gated until migrations are applied.

use std::time::Duration;

use backend::db::Database;
use backend::db::migrations::Migrations;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::helpers::{Options, database_url, spawn_app, spawn_app_with, unique_name};
use crate::proxy::Mode;

const EXTRA_VERSION: i64 = 29_990_101_000_001;

/// The embedded migrations plus one more.
fn with_extra(sql: &str) -> Migrations {
    let mut migrations: Vec<Migration> = sqlx::migrate!().migrations.to_vec();
    migrations.push(Migration::new(
        EXTRA_VERSION,
        "extra".into(),
        MigrationType::Simple,
        sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql.to_owned())),
        false,
    ));
    Migrations::new(Migrator::with_migrations(migrations))
}

async fn database_with_embedded_migrations() -> (String, Database) {
    let name = unique_name("test");
    let db = Database::connect_lazy(
        &database_url(&name),
        2,
        Duration::from_secs(5),
        Default::default(),
    )
    .unwrap();
    Migrations::embedded()
        .run_once(&db, Duration::from_secs(5))
        .await
        .expect("embedded migrations apply");
    (name, db)
}

#[tokio::test]
async fn a_pending_migration_fails_readiness_until_it_is_applied() {
    let (name, db) = database_with_embedded_migrations().await;
    let extended = with_extra("CREATE TABLE extra_table (x int)");
    let app = spawn_app_with(Options {
        db_name: Some(name.clone()),
        migrations: Some(extended.clone()),
        configure: Some(Box::new(|c| c.run_migrations = false)),
        ..Options::default()
    })
    .await;
    let check = app
        .wait_check("postgres:migrations", "fail", Duration::from_secs(5))
        .await;
    assert_eq!(
        check["pending"],
        serde_json::json!([EXTRA_VERSION]),
        "{check:#}"
    );
    assert!(
        check["output"].as_str().unwrap().contains("pending"),
        "{check:#}"
    );
    let body = app.wait_ready_status(503, Duration::from_secs(2)).await;
    assert!(
        body["output"]
            .as_str()
            .unwrap()
            .contains("postgres:migrations"),
        "{body:#}"
    );
    // RUN_MIGRATIONS=false: start-up does not wait for migrations the operator applies.
    assert_eq!(app.get_json("/health/startup").await.0, 200);

    // The operator applies it (`backend migrate`): ready again without a restart.
    extended
        .run_once(&db, Duration::from_secs(5))
        .await
        .unwrap();
    app.wait_ready_status(200, Duration::from_secs(5)).await;
    db.close(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_failing_migration_is_reported_with_its_error_and_gates_startup() {
    let app = spawn_app_with(Options {
        migrations: Some(with_extra("SELECT * FROM table_that_does_not_exist")),
        ..Options::default()
    })
    .await;
    let (_, body) = app
        .wait_for("/health/details", Duration::from_secs(10), |_, b| {
            b["checks"]["postgres:migrations"][0]["output"]
                .as_str()
                .is_some_and(|o| o.contains("table_that_does_not_exist"))
        })
        .await;
    let check = &body["checks"]["postgres:migrations"][0];
    assert_eq!(check["status"], "fail", "{check:#}");
    let output = check["output"].as_str().unwrap_or_default();
    assert!(output.contains("last migration run failed"), "{check:#}");
    assert!(output.contains("table_that_does_not_exist"), "{check:#}");
    assert_eq!(check["pending"], serde_json::json!([EXTRA_VERSION]));
    let (status, startup) = app.get_json("/health/startup").await;
    assert_eq!(status, 503);
    assert!(
        startup["output"].as_str().unwrap().contains("migrations"),
        "{startup:#}"
    );
    let (status, ready) = app.get_json("/health/ready").await;
    assert_eq!(status, 503, "{ready:#}");
}

#[tokio::test]
async fn a_version_unknown_to_the_binary_only_warns() {
    let app = spawn_app().await;
    app.wait_ready_status(200, Duration::from_secs(10)).await;
    let db = Database::connect_lazy(
        &database_url(&app.db_name),
        1,
        Duration::from_secs(5),
        Default::default(),
    )
    .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (39990101000001, 'from a newer release', true, '\\x00', 0)",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let check = app
        .wait_check("postgres:migrations", "warn", Duration::from_secs(5))
        .await;
    assert_eq!(
        check["unknown"],
        serde_json::json!([39_990_101_000_001i64]),
        "{check:#}"
    );
    let (status, body) = app.get_json("/health/ready").await;
    assert_eq!(
        status, 200,
        "an unknown version does not fail readiness: {body:#}"
    );
    assert_eq!(body["status"], "warn");
    db.close(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn startup_and_readiness_wait_for_migrations_while_postgres_is_unreachable() {
    let app = spawn_app_with(Options {
        postgres_proxy: true,
        postgres_initial_mode: Some(Mode::Blackhole),
        ..Options::default()
    })
    .await;
    // Several rounds pass; start-up stays incomplete and says why.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = app.get_json("/health/startup").await;
    assert_eq!(status, 503);
    assert!(
        body["output"].as_str().unwrap().contains("migrations"),
        "{body:#}"
    );
    let (status, body) = app.get_json("/health/ready").await;
    assert_eq!(status, 503);
    assert!(
        body["output"].as_str().unwrap().starts_with("starting"),
        "{body:#}"
    );
    assert_eq!(app.get_json("/health/live").await.0, 200);

    app.pg_proxy().set(Mode::Pass);
    // Migrations are retried with backoff (up to a few seconds between attempts here).
    let (status, _) = app
        .wait_for("/health/startup", Duration::from_secs(20), |s, _| s == 200)
        .await;
    assert_eq!(status, 200);
    app.wait_ready_status(200, Duration::from_secs(5)).await;
}
