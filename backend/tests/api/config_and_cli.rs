//! Bad configuration: exit status 2 and one line naming the setting; secrets not echoed.

use std::process::Output;

fn run(envs: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_backend"));
    command.env("BIND_ADDR", "127.0.0.1:0");
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().expect("binary runs")
}

fn assert_rejected(envs: &[(&str, &str)], setting: &str) -> String {
    let output = run(envs);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{envs:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(setting), "names {setting}: {stderr}");
    stderr
}

#[test]
fn malformed_values_exit_2_naming_the_setting() {
    let stderr = assert_rejected(
        &[("HEALTH_CHECK_TIMEOUT", "banana")],
        "HEALTH_CHECK_TIMEOUT",
    );
    assert!(stderr.contains("duration"), "{stderr}");
    assert_rejected(
        &[("DATABASE_MAX_CONNECTIONS", "0")],
        "DATABASE_MAX_CONNECTIONS",
    );
    assert_rejected(&[("BIND_ADDR", "localhost")], "BIND_ADDR");
    assert_rejected(&[("CHECK_DISK_WARN", "120")], "CHECK_DISK_WARN");
    assert_rejected(&[("RUN_MIGRATIONS", "maybe")], "RUN_MIGRATIONS");
    assert_rejected(&[("LOG_FORMAT", "xml")], "LOG_FORMAT");
}

#[test]
fn inconsistent_values_exit_2_naming_the_setting() {
    let stderr = assert_rejected(
        &[
            ("HEALTH_CHECK_INTERVAL", "1s"),
            ("HEALTH_CHECK_TIMEOUT", "2s"),
        ],
        "HEALTH_CHECK_TIMEOUT",
    );
    assert!(
        stderr.contains("shorter than HEALTH_CHECK_INTERVAL"),
        "{stderr}"
    );
    assert_rejected(&[("DATA_DIR", "/no/such/dir")], "DATA_DIR");
    assert_rejected(&[("CHECK_DISK_WARN", "96")], "CHECK_DISK_WARN");
    assert_rejected(&[("HEALTH_DETAILS_TOKEN", "short")], "HEALTH_DETAILS_TOKEN");
    assert_rejected(&[("HTTP_HEADER_TIMEOUT", "0s")], "HTTP_HEADER_TIMEOUT");
}

#[test]
fn a_bad_url_is_rejected_without_echoing_its_password() {
    let stderr = assert_rejected(
        &[("DATABASE_URL", "mysql://u:Sup3rSecretPw@db/x")],
        "DATABASE_URL",
    );
    assert!(!stderr.contains("Sup3rSecretPw"), "{stderr}");
    let stderr = assert_rejected(&[("REDIS_URL", "http://:Sup3rSecretPw@cache")], "REDIS_URL");
    assert!(!stderr.contains("Sup3rSecretPw"), "{stderr}");
    let stderr = assert_rejected(
        &[("REDIS_URL", "rediss://:Sup3rSecretPw@cache:6380")],
        "REDIS_URL",
    );
    assert!(
        stderr.contains("TLS") && !stderr.contains("Sup3rSecretPw"),
        "{stderr}"
    );
}

#[test]
fn help_lists_settings_without_secret_values() {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_backend"));
    let output = command
        .arg("--help")
        .env("HEALTH_DETAILS_TOKEN", "Sup3rSecretToken123")
        .env("DATABASE_URL", "postgres://u:Sup3rSecretPw@h/d")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0));
    assert!(
        help.contains("HEALTH_CHECK_INTERVAL") && help.contains("CHECK_REDIS_MEMORY_WARN"),
        "{help}"
    );
    assert!(!help.contains("Sup3rSecret"), "{help}");
}

#[test]
fn bad_broker_settings_exit_2_naming_the_setting_without_credentials() {
    assert_rejected(&[("BROKERS", "paper")], "BROKERS");
    assert_rejected(&[("BROKERS", "Paper=ws://127.0.0.1:9100/ws")], "BROKERS");
    assert_rejected(&[("BROKERS", "a=ws://h:1/ws,a=ws://h:2/ws")], "BROKERS");
    let stderr = assert_rejected(&[("BROKERS", "a=wss://key:Sup3rSecretPw@h/ws")], "BROKERS");
    assert!(
        stderr.contains("wss://") && !stderr.contains("Sup3rSecretPw"),
        "{stderr}"
    );
    let stderr = assert_rejected(&[("BROKERS", "a=http://key:Sup3rSecretPw@h/ws")], "BROKERS");
    assert!(!stderr.contains("Sup3rSecretPw"), "{stderr}");
    assert_rejected(&[("BROKER_CRITICAL", "alpaca")], "BROKER_CRITICAL");
    assert_rejected(
        &[("BROKERS", "none"), ("BROKER_CRITICAL", "paper")],
        "BROKER_CRITICAL",
    );
    assert_rejected(&[("BROKER_SYMBOLS", "AAPL,bad symbol")], "BROKER_SYMBOLS");
    assert_rejected(
        &[("BROKER_HEARTBEAT_INTERVAL", "0s")],
        "BROKER_HEARTBEAT_INTERVAL",
    );
}
