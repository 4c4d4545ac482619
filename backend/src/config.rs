//! Every setting of the service, read from a command-line flag or an environment variable
//! of the same name (`--health-check-timeout` / `HEALTH_CHECK_TIMEOUT`), with safe defaults.
//!
//! Parsing rejects malformed values (clap names the setting); [`Config::validate`] then
//! checks what needs more than one value or the file system. Secrets (URL passwords,
//! tokens) are never printed: clap hides their values and our messages redact them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use url::Url;

use crate::core::redact::redact_url;

/// The service's settings. One struct, shared read-only by every part of the service.
#[derive(Clone, clap::Args)]
pub struct Config {
    /// Address of the HTTP listener (API, health and metrics).
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0:8000")]
    pub bind_addr: SocketAddr,

    /// PostgreSQL URL. The database is created if it does not exist.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/trading",
        hide_env_values = true,
        hide_default_value = false
    )]
    pub database_url: String,

    /// Size of the PostgreSQL connection pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// How long a request waits for a pooled PostgreSQL connection (including connecting).
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub database_acquire_timeout: Duration,

    /// Redis URL (`redis://[user:password@]host:port[/db]`).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// Connect and response timeout of every Redis command.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// How often the background refresher runs every health check.
    #[arg(long, env = "HEALTH_CHECK_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub health_check_interval: Duration,

    /// Hard limit on one check's run; must be shorter than the interval.
    #[arg(long, env = "HEALTH_CHECK_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub health_check_timeout: Duration,

    /// Bearer token for /health/details. Unset: only loopback clients may read it.
    #[arg(long, env = "HEALTH_DETAILS_TOKEN", hide_env_values = true)]
    pub health_details_token: Option<String>,

    /// How long a client gets to send a request's headers; also how long an idle
    /// keep-alive connection is kept open.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// After SIGTERM, how long readiness reports "draining" before the listener closes.
    #[arg(long, env = "SHUTDOWN_DRAIN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_drain_delay: Duration,

    /// After the drain delay, how long in-flight requests get to finish.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Apply the embedded migrations at start-up (`false`: run `backend migrate` yourself).
    #[arg(long, env = "RUN_MIGRATIONS", default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub run_migrations: bool,

    /// Directory whose file system the disk check watches.
    #[arg(long, env = "DATA_DIR", default_value = ".")]
    pub data_dir: PathBuf,

    /// Log format: `pretty`, `json`, or `auto` (pretty on a terminal, json otherwise).
    #[arg(long, env = "LOG_FORMAT", default_value = "auto")]
    pub log_format: LogFormat,

    /// Record and serve Prometheus metrics (`false`: no instrumentation, no /metrics).
    #[arg(long, env = "METRICS_ENABLED", default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub metrics_enabled: bool,

    /// Serve /metrics on this separate address instead of BIND_ADDR.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Bearer token required by /metrics (unset: open).
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Brokers as `name=ws://host:port/path,...`; unset: an embedded paper broker named
    /// `paper`; `none`: no brokers. Credentials go in the URL (`ws://key:secret@host/ws`).
    #[arg(long, env = "BROKERS", hide_env_values = true)]
    pub brokers: Option<String>,

    /// Ping cadence of every broker session; a peer silent for 3 intervals is dead.
    #[arg(long, env = "BROKER_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub broker_heartbeat_interval: Duration,

    /// A live session whose last application message is older than this is `stale`.
    #[arg(long, env = "BROKER_STALE_AFTER", default_value = "30s", value_parser = parse_duration)]
    pub broker_stale_after: Duration,

    /// How long a broker may be disconnected before `broker:connection` fails (warn before).
    #[arg(long, env = "BROKER_DOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub broker_down_grace: Duration,

    /// Comma-separated broker names whose failure fails readiness.
    #[arg(long, env = "BROKER_CRITICAL", default_value = "")]
    pub broker_critical: String,

    /// Limit on connecting and on each handshake step (hello, auth, subscribe).
    #[arg(long, env = "BROKER_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub broker_connect_timeout: Duration,

    /// Symbols every broker session subscribes to.
    #[arg(long, env = "BROKER_SYMBOLS", default_value = "AAPL,MSFT,SPY")]
    pub broker_symbols: String,

    /// Window over which a broker's error rate is computed.
    #[arg(long, env = "BROKER_ERROR_WINDOW", default_value = "5m", value_parser = parse_duration)]
    pub broker_error_window: Duration,

    /// How long an order waits for the broker's acknowledgement before it is `timed_out`.
    #[arg(long, env = "ORDER_ACK_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub order_ack_timeout: Duration,

    #[command(flatten)]
    pub checks: CheckSettings,
}

/// One configured broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerSpec {
    /// Name used in labels, logs and `componentId` (`[a-z0-9_-]`, at most 32).
    pub name: String,
    /// `ws://` URL; may hold credentials (never logged unredacted).
    pub url: String,
    pub critical: bool,
}

/// Where the brokers come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerSource {
    /// Start the paper broker in-process and connect to it as `paper`.
    Embedded { critical: bool },
    /// Connect to these.
    Listed(Vec<BrokerSpec>),
}

/// Thresholds and criticality of every health check (`CHECK_<CHECK>_<WHAT>`).
/// Percentages are 0-100; a critical check that fails makes the instance not ready.
#[derive(Clone, Debug, clap::Args)]
pub struct CheckSettings {
    /// postgres:connection / responseTime fail readiness when failing.
    #[arg(long = "check-postgres-critical", value_name = "CHECK_POSTGRES_CRITICAL", env = "CHECK_POSTGRES_CRITICAL", default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub postgres_critical: bool,
    /// postgres:responseTime above this warns.
    #[arg(long = "check-postgres-latency-warn", value_name = "CHECK_POSTGRES_LATENCY_WARN", env = "CHECK_POSTGRES_LATENCY_WARN", default_value = "100ms", value_parser = parse_duration)]
    pub postgres_latency_warn: Duration,
    /// postgres:connections (pool saturation) fails readiness when failing.
    #[arg(long = "check-postgres-pool-critical", value_name = "CHECK_POSTGRES_POOL_CRITICAL", env = "CHECK_POSTGRES_POOL_CRITICAL", default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub postgres_pool_critical: bool,
    /// postgres:migrations fails readiness when migrations are pending or failed.
    #[arg(long = "check-migrations-critical", value_name = "CHECK_MIGRATIONS_CRITICAL", env = "CHECK_MIGRATIONS_CRITICAL", default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub migrations_critical: bool,
    /// redis:connection / responseTime fail readiness when failing.
    #[arg(long = "check-redis-critical", value_name = "CHECK_REDIS_CRITICAL", env = "CHECK_REDIS_CRITICAL", default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub redis_critical: bool,
    /// redis:responseTime above this warns.
    #[arg(long = "check-redis-latency-warn", value_name = "CHECK_REDIS_LATENCY_WARN", env = "CHECK_REDIS_LATENCY_WARN", default_value = "50ms", value_parser = parse_duration)]
    pub redis_latency_warn: Duration,
    /// redis:memory warns above this % of maxmemory.
    #[arg(long = "check-redis-memory-warn", value_name = "CHECK_REDIS_MEMORY_WARN", env = "CHECK_REDIS_MEMORY_WARN", default_value = "80", value_parser = parse_percent)]
    pub redis_memory_warn: f64,
    /// redis:memory fails above this % of maxmemory.
    #[arg(long = "check-redis-memory-fail", value_name = "CHECK_REDIS_MEMORY_FAIL", env = "CHECK_REDIS_MEMORY_FAIL", default_value = "95", value_parser = parse_percent)]
    pub redis_memory_fail: f64,
    /// redis:memory fails readiness when failing.
    #[arg(long = "check-redis-memory-critical", value_name = "CHECK_REDIS_MEMORY_CRITICAL", env = "CHECK_REDIS_MEMORY_CRITICAL", default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub redis_memory_critical: bool,
    /// redis:connections warns above this % of maxclients.
    #[arg(long = "check-redis-clients-warn", value_name = "CHECK_REDIS_CLIENTS_WARN", env = "CHECK_REDIS_CLIENTS_WARN", default_value = "80", value_parser = parse_percent)]
    pub redis_clients_warn: f64,
    /// redis:connections fails readiness when failing.
    #[arg(long = "check-redis-clients-critical", value_name = "CHECK_REDIS_CLIENTS_CRITICAL", env = "CHECK_REDIS_CLIENTS_CRITICAL", default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub redis_clients_critical: bool,
    /// redis:pubsub fails readiness when failing.
    #[arg(long = "check-pubsub-critical", value_name = "CHECK_PUBSUB_CRITICAL", env = "CHECK_PUBSUB_CRITICAL", default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub pubsub_critical: bool,
    /// redis:pubsub probe round trip above this warns.
    #[arg(long = "check-pubsub-roundtrip-warn", value_name = "CHECK_PUBSUB_ROUNDTRIP_WARN", env = "CHECK_PUBSUB_ROUNDTRIP_WARN", default_value = "250ms", value_parser = parse_duration)]
    pub pubsub_roundtrip_warn: Duration,
    /// cpu:utilization warns above this host CPU %.
    #[arg(long = "check-cpu-warn", value_name = "CHECK_CPU_WARN", env = "CHECK_CPU_WARN", default_value = "90", value_parser = parse_percent)]
    pub cpu_warn: f64,
    /// memory:utilization warns above this host memory %.
    #[arg(long = "check-memory-warn", value_name = "CHECK_MEMORY_WARN", env = "CHECK_MEMORY_WARN", default_value = "90", value_parser = parse_percent)]
    pub memory_warn: f64,
    /// memory:utilization fails above this host memory %.
    #[arg(long = "check-memory-fail", value_name = "CHECK_MEMORY_FAIL", env = "CHECK_MEMORY_FAIL", default_value = "98", value_parser = parse_percent)]
    pub memory_fail: f64,
    /// disk:utilization warns above this % used.
    #[arg(long = "check-disk-warn", value_name = "CHECK_DISK_WARN", env = "CHECK_DISK_WARN", default_value = "90", value_parser = parse_percent)]
    pub disk_warn: f64,
    /// disk:utilization fails above this % used.
    #[arg(long = "check-disk-fail", value_name = "CHECK_DISK_FAIL", env = "CHECK_DISK_FAIL", default_value = "95", value_parser = parse_percent)]
    pub disk_fail: f64,
    /// process:info warns above this % of the open-file limit.
    #[arg(long = "check-process-fds-warn", value_name = "CHECK_PROCESS_FDS_WARN", env = "CHECK_PROCESS_FDS_WARN", default_value = "80", value_parser = parse_percent)]
    pub process_fds_warn: f64,
    /// cpu:utilization fails readiness when failing.
    #[arg(long = "check-cpu-critical", value_name = "CHECK_CPU_CRITICAL", env = "CHECK_CPU_CRITICAL", default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub cpu_critical: bool,
    /// memory:utilization fails readiness when failing.
    #[arg(long = "check-memory-critical", value_name = "CHECK_MEMORY_CRITICAL", env = "CHECK_MEMORY_CRITICAL", default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub memory_critical: bool,
    /// disk:utilization fails readiness when failing (e.g. when a full disk stops the service).
    #[arg(long = "check-disk-critical", value_name = "CHECK_DISK_CRITICAL", env = "CHECK_DISK_CRITICAL", default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub disk_critical: bool,
    /// process:info fails readiness when failing.
    #[arg(long = "check-process-critical", value_name = "CHECK_PROCESS_CRITICAL", env = "CHECK_PROCESS_CRITICAL", default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub process_critical: bool,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Auto,
    Pretty,
    Json,
}

/// A setting that is well-formed but unusable; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid {setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

fn invalid(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
    }
}

impl Config {
    /// Checks what parsing alone cannot: relations between settings, URLs, the data dir.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let interval = self.health_check_interval;
        let timeout = self.health_check_timeout;
        if interval < Duration::from_millis(50) {
            return Err(invalid("HEALTH_CHECK_INTERVAL", "must be at least 50ms"));
        }
        if timeout.is_zero() || timeout >= interval {
            return Err(invalid(
                "HEALTH_CHECK_TIMEOUT",
                format!(
                    "{} must be above zero and shorter than HEALTH_CHECK_INTERVAL ({})",
                    format_duration(timeout),
                    format_duration(interval)
                ),
            ));
        }
        for (setting, value) in [
            ("DATABASE_ACQUIRE_TIMEOUT", self.database_acquire_timeout),
            ("REDIS_TIMEOUT", self.redis_timeout),
            ("SHUTDOWN_TIMEOUT", self.shutdown_timeout),
            ("HTTP_HEADER_TIMEOUT", self.http_header_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(setting, "must be above zero"));
            }
        }
        let url = Url::parse(&self.database_url).map_err(|e| {
            invalid(
                "DATABASE_URL",
                format!("not a URL ({e}); expected postgres://user@host:port/database"),
            )
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(invalid(
                "DATABASE_URL",
                format!(
                    "scheme must be postgres:// (got {})",
                    redact_url(&self.database_url)
                ),
            ));
        }
        let url = Url::parse(&self.redis_url).map_err(|e| {
            invalid(
                "REDIS_URL",
                format!("not a URL ({e}); expected redis://host:port"),
            )
        })?;
        if url.scheme() == "rediss" {
            return Err(invalid(
                "REDIS_URL",
                "rediss:// (TLS) is not supported by this build; use redis:// (e.g. through a TLS-terminating proxy)",
            ));
        }
        if url.scheme() != "redis" || url.host_str().is_none() {
            return Err(invalid(
                "REDIS_URL",
                format!(
                    "expected redis://host:port (got {})",
                    redact_url(&self.redis_url)
                ),
            ));
        }
        if let Some(token) = &self.health_details_token
            && token.trim().len() < 16
        {
            return Err(invalid(
                "HEALTH_DETAILS_TOKEN",
                "must be at least 16 characters (unset it to allow loopback clients only)",
            ));
        }
        if let Some(token) = &self.metrics_token
            && token.trim().len() < 16
        {
            return Err(invalid(
                "METRICS_TOKEN",
                "must be at least 16 characters (unset it to leave /metrics open)",
            ));
        }
        if let Some(addr) = self.metrics_addr
            && addr == self.bind_addr
            && addr.port() != 0
        {
            return Err(invalid(
                "METRICS_ADDR",
                format!("{addr} is BIND_ADDR already; unset METRICS_ADDR to serve /metrics there"),
            ));
        }
        for (setting, value) in [
            ("BROKER_HEARTBEAT_INTERVAL", self.broker_heartbeat_interval),
            ("BROKER_STALE_AFTER", self.broker_stale_after),
            ("BROKER_DOWN_GRACE", self.broker_down_grace),
            ("BROKER_CONNECT_TIMEOUT", self.broker_connect_timeout),
            ("BROKER_ERROR_WINDOW", self.broker_error_window),
            ("ORDER_ACK_TIMEOUT", self.order_ack_timeout),
        ] {
            if value < Duration::from_millis(10) {
                return Err(invalid(setting, "must be at least 10ms"));
            }
        }
        self.broker_source()?;
        self.symbols()?;
        let c = &self.checks;
        for (warn_name, warn, fail_name, fail) in [
            (
                "CHECK_REDIS_MEMORY_WARN",
                c.redis_memory_warn,
                "CHECK_REDIS_MEMORY_FAIL",
                c.redis_memory_fail,
            ),
            (
                "CHECK_MEMORY_WARN",
                c.memory_warn,
                "CHECK_MEMORY_FAIL",
                c.memory_fail,
            ),
            (
                "CHECK_DISK_WARN",
                c.disk_warn,
                "CHECK_DISK_FAIL",
                c.disk_fail,
            ),
        ] {
            if warn > fail {
                return Err(invalid(
                    warn_name,
                    format!("{warn} must not be above {fail_name} ({fail})"),
                ));
            }
        }
        if !self.data_dir.is_dir() {
            return Err(invalid(
                "DATA_DIR",
                format!("{} is not an existing directory", self.data_dir.display()),
            ));
        }
        Ok(())
    }

    /// The configured brokers, validated. Messages never echo URL credentials.
    pub fn broker_source(&self) -> Result<BrokerSource, ConfigError> {
        let critical: Vec<&str> = self
            .broker_critical
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let raw = self.brokers.as_deref().map(str::trim);
        let source = match raw {
            None | Some("") => BrokerSource::Embedded {
                critical: critical.contains(&"paper"),
            },
            Some("none") => BrokerSource::Listed(Vec::new()),
            Some(list) => {
                let mut specs: Vec<BrokerSpec> = Vec::new();
                for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let Some((name, url)) = item.split_once('=') else {
                        return Err(invalid(
                            "BROKERS",
                            format!(
                                "expected name=ws://host:port/path, got {}",
                                redact_url(item)
                            ),
                        ));
                    };
                    let (name, url) = (name.trim(), url.trim());
                    let name_ok = !name.is_empty()
                        && name.len() <= 32
                        && name.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
                        });
                    if !name_ok {
                        return Err(invalid(
                            "BROKERS",
                            format!(
                                "broker name {name:?} must be 1-32 characters of a-z, 0-9, _ or -"
                            ),
                        ));
                    }
                    if specs.iter().any(|s| s.name == name) {
                        return Err(invalid(
                            "BROKERS",
                            format!("broker {name:?} is listed twice"),
                        ));
                    }
                    match Url::parse(url) {
                        Ok(u) if u.scheme() == "ws" && u.host_str().is_some() => {}
                        Ok(u) if u.scheme() == "wss" => {
                            return Err(invalid(
                                "BROKERS",
                                format!(
                                    "{name}: wss:// (TLS) is not supported by this build; use ws:// (e.g. behind a TLS-terminating proxy)"
                                ),
                            ));
                        }
                        _ => {
                            return Err(invalid(
                                "BROKERS",
                                format!(
                                    "{name}: expected a ws://host:port/path URL, got {}",
                                    redact_url(url)
                                ),
                            ));
                        }
                    }
                    specs.push(BrokerSpec {
                        name: name.to_owned(),
                        url: url.to_owned(),
                        critical: critical.contains(&name),
                    });
                }
                BrokerSource::Listed(specs)
            }
        };
        let known: Vec<&str> = match &source {
            BrokerSource::Embedded { .. } => vec!["paper"],
            BrokerSource::Listed(specs) => specs.iter().map(|s| s.name.as_str()).collect(),
        };
        if let Some(unknown) = critical.iter().find(|c| !known.contains(c)) {
            return Err(invalid(
                "BROKER_CRITICAL",
                format!("{unknown:?} is not a configured broker (configured: {known:?})"),
            ));
        }
        Ok(source)
    }

    /// `BROKER_SYMBOLS`, validated.
    pub fn symbols(&self) -> Result<Vec<String>, ConfigError> {
        let symbols: Vec<String> = self
            .broker_symbols
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(bad) = symbols
            .iter()
            .find(|s| !paper_broker::protocol::valid_symbol(s))
        {
            return Err(invalid(
                "BROKER_SYMBOLS",
                format!("{bad:?} is not a symbol (1-10 of A-Z, 0-9, .)"),
            ));
        }
        Ok(symbols)
    }

    /// Readiness counts a result as stale (fail) once it is older than this.
    pub fn stale_after(&self) -> Duration {
        self.health_check_interval * 3
    }
}

/// Parses `500ms`, `5s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let hint = "expected a duration such as 500ms, 5s or 2m";
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration; {hint}"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit '{other}'; {hint}")),
    };
    if !seconds.is_finite() || seconds > 86_400.0 * 365.0 {
        return Err(format!("'{text}' is out of range; {hint}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Writes a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Parses a percentage between 0 and 100.
fn parse_percent(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("'{text}' is not a number between 0 and 100"))?;
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not between 0 and 100"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn bad_durations_are_rejected_with_a_hint() {
        for bad in ["banana", "", "5 parsecs", "-1s", "1e400s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_format_back() {
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn percentages_are_bounded() {
        assert_eq!(parse_percent("80"), Ok(80.0));
        assert_eq!(parse_percent("95%"), Ok(95.0));
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("lots").is_err());
    }
}
