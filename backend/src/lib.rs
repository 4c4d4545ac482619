//! The trading backend's health checks and monitoring.
//!
//! [`Application::build`] assembles the whole service from a validated [`config::Config`];
//! `main.rs` and the integration tests both use it.

pub mod api;
pub mod brokers;
pub mod config;
pub mod core;
pub mod db;
pub mod health;
pub mod orders;
pub mod redis_client;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::brokers::Brokers;
use crate::config::Config;
use crate::core::metrics::Metrics;
use crate::core::tasks::Tasks;
use crate::db::Database;
use crate::db::migrations::Migrations;
use crate::health::{Check, Health, HealthSettings, ServiceInfo};
use crate::orders::{BrokerLink, Orders, Publisher};
use crate::redis_client::Redis;
use crate::redis_client::subscriber::Subscriber;
use tokio::sync::mpsc;

/// Broker replies waiting for the `order-events` task.
const BROKER_EVENTS_QUEUE: usize = 4096;

/// How long background tasks and pools get to stop after the HTTP server has.
const TASK_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The built service: listener bound, clients created (not yet connected), nothing running.
pub struct Application {
    config: Arc<Config>,
    listener: TcpListener,
    router: Router,
    /// The separate `/metrics` listener (`METRICS_ADDR`), if any.
    metrics_listener: Option<(TcpListener, Router)>,
    metrics: Metrics,
    health: Health,
    db: Database,
    subscriber: Subscriber,
    brokers: Brokers,
    orders: Orders,
    /// Publishes order events on Redis once running (the `order-publisher` task).
    order_publisher: Publisher,
    migrations: Migrations,
    shutdown: CancellationToken,
}

/// Asks a running [`Application`] to shut down gracefully (what SIGTERM does).
#[derive(Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    pub fn trigger(&self) {
        self.0.cancel();
    }
}

impl Application {
    /// Builds the service with the migrations embedded in the binary.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with(config, Migrations::embedded(), Router::new()).await
    }

    /// Builds the service with a given set of migrations and extra routes merged into the
    /// router (for embedding, and for tests that need a pending/failing migration or a
    /// slow route).
    pub async fn build_with(
        config: Config,
        migrations: Migrations,
        extra_routes: Router,
    ) -> anyhow::Result<Self> {
        let config = Arc::new(config);
        let listener = TcpListener::bind(config.bind_addr).await.with_context(|| {
            format!(
                "binding the HTTP listener to {} (BIND_ADDR)",
                config.bind_addr
            )
        })?;

        let metrics_listener = match config.metrics_addr {
            Some(addr) if config.metrics_enabled => {
                Some(TcpListener::bind(addr).await.with_context(|| {
                    format!("binding the metrics listener to {addr} (METRICS_ADDR)")
                })?)
            }
            _ => None,
        };

        // The one registry; modules with custom metrics register them in this closure.
        let metrics = Metrics::new(|_custom| {});
        let errors = metrics.errors.clone();
        let db = Database::connect_lazy(
            &config.database_url,
            config.database_max_connections,
            config.database_acquire_timeout,
            errors.clone(),
        )?;
        let redis = Redis::connect_lazy(&config.redis_url, config.redis_timeout, errors.clone())?;
        let info = ServiceInfo::current();
        let subscriber = Subscriber::connect_lazy(
            &config.redis_url,
            config.redis_timeout,
            &info.service_id,
            errors,
        )?;

        let brokers = Brokers::from_config(&config, &metrics.brokers).await?;
        let links = brokers
            .list()
            .iter()
            .map(|b| {
                let link = BrokerLink {
                    stats: Arc::clone(&b.stats),
                    outbound: b.outbound.clone(),
                };
                (b.spec.name.clone(), link)
            })
            .collect();
        let (orders, publisher) = Orders::new(
            db.clone(),
            redis.clone(),
            links,
            metrics.orders.clone(),
            metrics.errors.clone(),
            config.order_ack_timeout,
        );

        let checks = build_checks(&config, &db, &redis, &subscriber, &migrations, &brokers);
        let health = Health::new(
            checks,
            HealthSettings {
                interval: config.health_check_interval,
                timeout: config.health_check_timeout,
                stale_after: config.stale_after(),
            },
            info,
            metrics.health.clone(),
        );
        let state = AppState::new(api::Services {
            config: Arc::clone(&config),
            health: health.clone(),
            metrics: metrics.clone(),
            db: db.clone(),
            orders: orders.clone(),
            health_cache: api::health::HealthCache::new(&health),
        });
        let metrics_listener = metrics_listener.map(|l| (l, api::metrics_router(state.clone())));
        let router = api::router(state, extra_routes);
        Ok(Self {
            config,
            listener,
            router,
            metrics_listener,
            metrics,
            health,
            db,
            subscriber,
            brokers,
            orders,
            order_publisher: publisher,
            migrations,
            shutdown: CancellationToken::new(),
        })
    }

    /// The address the listener is bound to (the real port when BIND_ADDR used port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.bind_addr)
    }

    /// The address of the separate metrics listener, when `METRICS_ADDR` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Serves until shut down: starts the background tasks, answers from the first moment,
    /// and on shutdown drains (readiness 503), stops accepting, lets in-flight requests
    /// finish within SHUTDOWN_TIMEOUT, then stops the tasks and closes the pools.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            config,
            listener,
            router,
            metrics_listener,
            metrics,
            health,
            db,
            subscriber,
            mut brokers,
            orders,
            order_publisher,
            migrations,
            shutdown,
        } = self;
        let mut tasks = Tasks::new();
        if config.run_migrations {
            let (db, health) = (db.clone(), health.clone());
            let timeout = config.database_acquire_timeout;
            tasks.spawn("migrations", move |cancel| async move {
                if migrations.run_until_applied(&db, timeout, &cancel).await {
                    health.set_migrations_ready();
                }
            });
        } else {
            tracing::info!(
                "RUN_MIGRATIONS=false: not applying migrations; postgres:migrations reports what is pending"
            );
            health.set_migrations_ready();
        }
        tasks.spawn("health-refresher", |cancel| {
            health.clone().run_refresher(cancel)
        });
        let every = config.health_check_interval;
        tasks.spawn("redis-subscriber", move |cancel| {
            subscriber.run(cancel, every)
        });
        // Broker sessions hand order replies to the `order-events` task.
        let (events_tx, events_rx) = mpsc::channel(BROKER_EVENTS_QUEUE);
        brokers.spawn(&mut tasks, &events_tx);
        tasks.spawn("order-events", move |cancel| {
            orders.run_events(events_rx, cancel)
        });
        tasks.spawn("order-publisher", move |cancel| order_publisher.run(cancel));

        let addr = listener
            .local_addr()
            .context("reading the listener address")?;
        tracing::info!(
            %addr,
            version = health.info().version,
            service_id = %health.info().service_id,
            database = db.display_url(),
            "listening"
        );
        let stop_accepting = CancellationToken::new();
        if let Some((metrics_listener, metrics_router)) = metrics_listener {
            let stop = stop_accepting.clone();
            tracing::info!(addr = ?metrics_listener.local_addr().ok(), "serving /metrics on its own listener");
            let header_timeout = config.http_header_timeout;
            tasks.spawn("metrics-listener", move |cancel| async move {
                // Stops with the main listener, or when the tasks are shut down.
                let either = CancellationToken::new();
                let server = api::server::serve(
                    metrics_listener,
                    metrics_router,
                    header_timeout,
                    either.clone(),
                );
                tokio::pin!(server);
                tokio::select! {
                    () = &mut server => return,
                    () = stop.cancelled() => {}
                    () = cancel.cancelled() => {}
                }
                either.cancel();
                server.await;
            });
        }
        // Open connections are counted at the listener.
        let listener = metrics.http.counting(listener);
        let server = api::server::serve(
            listener,
            router,
            config.http_header_timeout,
            stop_accepting.clone(),
        );
        let mut server = tokio::spawn(server);

        tokio::select! {
            () = shutdown.cancelled() => {}
            ended = &mut server => {
                tasks.shutdown(TASK_STOP_TIMEOUT).await;
                brokers.stop(TASK_STOP_TIMEOUT).await;
                db.close(TASK_STOP_TIMEOUT).await;
                return match ended {
                    Ok(()) => Err(anyhow::anyhow!("the HTTP server stopped unexpectedly")),
                    Err(e) => Err(e).context("the HTTP server task failed"),
                };
            }
        }

        health.set_draining();
        tracing::info!(
            drain_delay_ms = config.shutdown_drain_delay.as_millis() as u64,
            "shutdown requested: readiness now reports draining"
        );
        tokio::time::sleep(config.shutdown_drain_delay).await;
        tracing::info!(
            timeout_ms = config.shutdown_timeout.as_millis() as u64,
            "no longer accepting connections; waiting for in-flight requests"
        );
        stop_accepting.cancel();
        match tokio::time::timeout(config.shutdown_timeout, &mut server).await {
            Ok(_) => tracing::info!("in-flight requests finished"),
            Err(_) => {
                tracing::warn!(
                    "in-flight requests did not finish within SHUTDOWN_TIMEOUT; closing them"
                );
                server.abort();
            }
        }
        // Supervisors close their sessions (close frames) before the embedded broker stops.
        tasks.shutdown(TASK_STOP_TIMEOUT).await;
        brokers.stop(TASK_STOP_TIMEOUT).await;
        db.close(TASK_STOP_TIMEOUT).await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The one place that knows every check, its thresholds and its criticality.
fn build_checks(
    config: &Config,
    db: &Database,
    redis: &Redis,
    subscriber: &Subscriber,
    migrations: &Migrations,
    brokers: &Brokers,
) -> Vec<Arc<dyn Check>> {
    use crate::health::{broker, postgres, redis as redis_checks, system};
    let c = &config.checks;
    let mut checks: Vec<Arc<dyn Check>> = vec![
        Arc::new(postgres::ConnectionCheck {
            db: db.clone(),
            latency_warn: c.postgres_latency_warn,
            critical: c.postgres_critical,
        }),
        Arc::new(postgres::PoolCheck {
            db: db.clone(),
            critical: c.postgres_pool_critical,
            seen_timeouts: AtomicU64::new(0),
        }),
        Arc::new(postgres::MigrationsCheck {
            db: db.clone(),
            migrations: migrations.clone(),
            critical: c.migrations_critical,
        }),
        Arc::new(redis_checks::ConnectionCheck {
            redis: redis.clone(),
            latency_warn: c.redis_latency_warn,
            critical: c.redis_critical,
        }),
        Arc::new(redis_checks::MemoryCheck {
            redis: redis.clone(),
            warn_percent: c.redis_memory_warn,
            fail_percent: c.redis_memory_fail,
            critical: c.redis_memory_critical,
        }),
        Arc::new(redis_checks::ClientsCheck {
            redis: redis.clone(),
            warn_percent: c.redis_clients_warn,
            critical: c.redis_clients_critical,
        }),
        Arc::new(redis_checks::PubSubCheck {
            redis: redis.clone(),
            subscriber: subscriber.clone(),
            roundtrip_warn: c.pubsub_roundtrip_warn,
            wait: config.health_check_timeout.mul_f64(0.8),
            critical: c.pubsub_critical,
        }),
        Arc::new(system::CpuCheck::new(c.cpu_warn, c.cpu_critical)),
        Arc::new(system::MemoryCheck {
            warn_percent: c.memory_warn,
            fail_percent: c.memory_fail,
            critical: c.memory_critical,
        }),
        Arc::new(system::DiskCheck {
            path: config.data_dir.clone(),
            warn_percent: c.disk_warn,
            fail_percent: c.disk_fail,
            critical: c.disk_critical,
        }),
        Arc::new(system::ProcessCheck {
            fds_warn_percent: c.process_fds_warn,
            critical: c.process_critical,
        }),
    ];
    if !brokers.list().is_empty() {
        checks.push(Arc::new(broker::BrokerCheck {
            brokers: brokers
                .list()
                .iter()
                .map(|b| (Arc::clone(&b.stats), b.spec.critical))
                .collect(),
            stale_after: config.broker_stale_after,
            down_grace: config.broker_down_grace,
        }));
    }
    checks
}
