//! Integration tests: the real application against the real PostgreSQL and Redis.
//! One test binary (one link step) with a module per concern.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests assert by unwrapping; a failure is the test failing"
)]

mod helpers;
mod process;
mod prometheus;
mod proxy;

mod brokers;
mod config_and_cli;
mod deploy;
mod details;
mod drain;
mod faults;
mod health_endpoints;
mod http_server;
mod lifecycle;
mod metrics;
mod migrations;
mod orders;
