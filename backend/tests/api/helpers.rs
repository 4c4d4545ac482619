//! `TestApp`: the real application on port 0 against the real PostgreSQL and Redis, in its
//! own database (dropped afterwards, even when the test fails), optionally behind fault
//! proxies. Helpers read like the contract: `app.get("/health/ready").await.status()`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use backend::config::Config;
use backend::db::migrations::Migrations;
use backend::{Application, ShutdownHandle};
use clap::Parser;
use serde_json::Value;
use tokio::task::JoinHandle;
use url::Url;

use crate::proxy::FaultProxy;

/// The shared servers; `DATABASE_URL` / `REDIS_URL` override them.
pub fn base_database_url() -> Url {
    let raw = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    Url::parse(&raw).expect("DATABASE_URL is a URL")
}

pub fn base_redis_url() -> Url {
    let raw = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    Url::parse(&raw).expect("REDIS_URL is a URL")
}

pub fn server_addr(url: &Url) -> SocketAddr {
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port_or_known_default().unwrap_or(match url.scheme() {
        "redis" => 6379,
        _ => 5432,
    });
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .expect("server address resolves")
        .next()
        .expect("an address")
}

/// Small fast timings so tests observe several rounds quickly.
pub const INTERVAL: Duration = Duration::from_millis(400);
pub const TIMEOUT: Duration = Duration::from_millis(300);

#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    config: Config,
}

/// Parses settings as the binary does, from `--flag=value` arguments (and the environment).
pub fn parse_config<I: IntoIterator<Item = String>>(args: I) -> Result<Config, clap::Error> {
    let args = std::iter::once("backend".to_owned()).chain(args);
    Defaults::try_parse_from(args).map(|d| d.config)
}

/// The service's defaults (the environment may override them, as for the real binary),
/// with test timings, an ephemeral port and no drain delay.
pub fn test_config() -> Config {
    let mut config = Defaults::try_parse_from(["backend"])
        .expect("defaults parse")
        .config;
    config.bind_addr = "127.0.0.1:0".parse().unwrap();
    config.health_check_interval = INTERVAL;
    config.health_check_timeout = TIMEOUT;
    config.shutdown_drain_delay = Duration::ZERO;
    config.shutdown_timeout = Duration::from_secs(5);
    config.database_acquire_timeout = Duration::from_secs(2);
    config.redis_timeout = Duration::from_secs(1);
    config
}

/// The URL of a database on the shared server.
pub fn database_url(name: &str) -> String {
    let mut url = base_database_url();
    url.set_path(name);
    url.to_string()
}

pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}_{:08x}", std::process::id(), fastrand::u32(..))
}

/// Adjusts the test config before the app is built.
pub type Configure = Box<dyn FnOnce(&mut Config)>;

#[derive(Default)]
pub struct Options {
    pub postgres_proxy: bool,
    /// The proxy's mode from the very first connection (e.g. blackholed at start-up).
    pub postgres_initial_mode: Option<crate::proxy::Mode>,
    /// Use this database name (the test created it) instead of a fresh one.
    pub db_name: Option<String>,
    pub redis_proxy: bool,
    pub migrations: Option<Migrations>,
    pub routes: Option<Router>,
    pub configure: Option<Configure>,
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// The separate metrics listener, when METRICS_ADDR is set.
    pub metrics_addr: Option<SocketAddr>,
    pub client: reqwest::Client,
    pub shutdown: ShutdownHandle,
    pub db_name: String,
    pub pg_proxy: Option<FaultProxy>,
    pub redis_proxy: Option<FaultProxy>,
    pub task: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let mut config = test_config();
    let db_name = match options.db_name.clone() {
        Some(name) => name,
        None => create_database(&unique_name("test")).await,
    };
    let mut db_url = base_database_url();
    db_url.set_path(&db_name);
    let pg_proxy = if options.postgres_proxy {
        let proxy = FaultProxy::start(server_addr(&base_database_url())).await;
        if let Some(mode) = options.postgres_initial_mode {
            proxy.set(mode);
        }
        db_url.set_host(Some("127.0.0.1")).unwrap();
        db_url.set_port(Some(proxy.addr().port())).unwrap();
        Some(proxy)
    } else {
        None
    };
    config.database_url = db_url.to_string();
    let redis_proxy = if options.redis_proxy {
        let proxy = FaultProxy::start(server_addr(&base_redis_url())).await;
        let mut url = base_redis_url();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(proxy.addr().port())).unwrap();
        config.redis_url = url.to_string();
        Some(proxy)
    } else {
        None
    };
    if let Some(configure) = options.configure {
        configure(&mut config);
    }
    config.validate().expect("test config is valid");
    let migrations = options.migrations.unwrap_or_else(Migrations::embedded);
    let app = Application::build_with(config, migrations, options.routes.unwrap_or_default())
        .await
        .expect("application builds");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let shutdown = app.shutdown_handle();
    let task = tokio::spawn(app.run_until_stopped());
    TestApp {
        addr,
        metrics_addr,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        shutdown,
        db_name,
        pg_proxy,
        redis_proxy,
        task: Some(task),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// Status code and JSON body.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Scrapes /metrics (Prometheus text) into `series -> value`, keyed exactly as
    /// rendered, e.g. `http_requests_total{method="GET",handler="/health",status="2xx"}`.
    pub async fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        let text = self.get("/metrics").await.text().await.unwrap();
        parse_metrics(&text)
    }

    pub fn pg_proxy(&self) -> &FaultProxy {
        self.pg_proxy.as_ref().expect("started with postgres_proxy")
    }

    pub fn redis_proxy(&self) -> &FaultProxy {
        self.redis_proxy.as_ref().expect("started with redis_proxy")
    }

    /// Polls `path` until `accept(status, body)` or the deadline; returns the last answer.
    pub async fn wait_for(
        &self,
        path: &str,
        deadline: Duration,
        accept: impl Fn(u16, &Value) -> bool,
    ) -> (u16, Value) {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let (status, body) = self.get_json(path).await;
            if accept(status, &body) || tokio::time::Instant::now() >= until {
                return (status, body);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until readiness answers `status`; panics with the last body otherwise.
    pub async fn wait_ready_status(&self, status: u16, deadline: Duration) -> Value {
        let (got, body) = self
            .wait_for("/health/ready?verbose", deadline, |s, _| s == status)
            .await;
        assert_eq!(got, status, "readiness never became {status}: {body:#}");
        body
    }

    /// Waits until the details show `key` (first entry) with `status`.
    pub async fn wait_check(&self, key: &str, status: &str, deadline: Duration) -> Value {
        let (_, body) = self
            .wait_for("/health/details", deadline, |_, b| {
                b["checks"][key][0]["status"] == status
            })
            .await;
        assert_eq!(
            body["checks"][key][0]["status"], status,
            "{key} never became {status}: {body:#}"
        );
        body["checks"][key][0].clone()
    }

    /// Shuts the app down gracefully and returns its result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("app stops in time")
            .expect("app task did not panic")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(task) = self.task.take() {
            task.abort();
        }
        drop_database(&self.db_name);
    }
}

/// `series -> value` of a Prometheus text exposition (comments skipped).
pub fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// A paper broker on a free port, ticking every 50 ms.
pub async fn paper_broker() -> paper_broker::PaperBroker {
    paper_broker::PaperBroker::start(paper_broker::Config {
        tick_interval: Duration::from_millis(50),
        ..paper_broker::Config::default()
    })
    .await
    .unwrap()
}

/// Heartbeat of the broker sessions in tests.
pub const BROKER_HEARTBEAT: Duration = Duration::from_millis(200);

/// Options connecting the app to `broker` as `paper` with fast broker timings, then
/// applying `more`.
pub fn with_broker(
    broker: &paper_broker::PaperBroker,
    more: impl FnOnce(&mut Config) + 'static,
) -> Options {
    let url = broker.ws_url().replace("ws://", "ws://key:Sup3rSecretKey@");
    Options {
        configure: Some(Box::new(move |c| {
            c.brokers = Some(format!("paper={url}"));
            c.broker_heartbeat_interval = BROKER_HEARTBEAT;
            c.broker_stale_after = Duration::from_millis(600);
            c.broker_down_grace = Duration::from_millis(800);
            c.broker_connect_timeout = Duration::from_secs(1);
            more(c);
        })),
        ..Options::default()
    }
}

/// A database name of its own for a test that starts the real binary; the database is
/// dropped when the guard is, so also when the test fails.
pub struct TestDatabase {
    pub name: String,
}

impl TestDatabase {
    pub fn new(prefix: &str) -> Self {
        Self {
            name: unique_name(prefix),
        }
    }

    pub fn url(&self) -> String {
        database_url(&self.name)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        drop_database(&self.name);
    }
}

/// Creates an empty database for a test app. The app would create it itself, but a test
/// that ends within milliseconds could then drop it while the app's `CREATE DATABASE` is
/// still executing on the server, and the database would outlive the test.
async fn create_database(name: &str) -> String {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(base_database_url().as_str())
        .await
        .expect("the test PostgreSQL server answers");
    let sql = format!("CREATE DATABASE \"{name}\"");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("test database created");
    name.to_owned()
}

/// Drops a test database, from a thread of its own so it also runs while unwinding.
pub fn drop_database(name: &str) {
    let name = name.to_owned();
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            use sqlx::Connection;
            let Ok(mut conn) = sqlx::PgConnection::connect(base_database_url().as_str()).await
            else {
                return;
            };
            let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await;
        });
    })
    .join();
}
