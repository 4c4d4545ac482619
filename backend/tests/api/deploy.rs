//! The operations pack in `deploy/`, checked against the app it deploys: the Kubernetes
//! manifests' probes, ports and timings; the PrometheusRule against the alert rules; and
//! the alert rules and every Grafana panel query against a real Prometheus scraping a
//! real app. (`.ci/run` also validates the manifests against the Kubernetes schemas and
//! runs `promtool check rules` / `promtool test rules`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use backend::config::Config;
use serde_json::{Value, json};

use crate::helpers::{paper_broker, parse_config, spawn_app, spawn_app_with, with_broker};
use crate::prometheus::{Prometheus, first_value};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn yaml(relative: &str) -> Value {
    let path = deploy_dir().join(relative);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

/// The settings the Deployment gives the container: literal `env` values, and
/// `secretKeyRef`s resolved against the example Secret.
fn deployment_settings(deployment: &Value) -> BTreeMap<String, String> {
    let secret = yaml("k8s/secret.yaml");
    let mut settings = BTreeMap::new();
    for var in container(deployment)["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = if let Some(value) = var["value"].as_str() {
            value.to_owned()
        } else {
            let key = &var["valueFrom"]["secretKeyRef"];
            assert_eq!(key["name"], secret["metadata"]["name"], "{name}");
            let key = key["key"].as_str().unwrap();
            secret["stringData"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: key {key} missing from secret.yaml"))
                .to_owned()
        };
        settings.insert(name, value);
    }
    settings
}

/// The app's configuration under the Deployment's settings.
fn deployment_config(deployment: &Value) -> Config {
    config_from(deployment_settings(deployment))
}

/// The app's configuration under `settings`, parsed (and validated) the way the binary
/// does: an unknown setting or a bad value fails here.
fn config_from(settings: BTreeMap<String, String>) -> Config {
    // Read by the logging setup, not a `Config` setting.
    const NOT_CONFIG: [&str; 1] = ["RUST_LOG"];
    let args = settings
        .into_iter()
        .filter(|(name, _)| !NOT_CONFIG.contains(&name.as_str()))
        .map(|(name, value)| format!("--{}={value}", name.to_lowercase().replace('_', "-")));
    let mut config = parse_config(args).unwrap_or_else(|e| panic!("settings rejected: {e}"));
    // The data volume exists only in the container.
    config.data_dir = PathBuf::from(".");
    config
        .validate()
        .unwrap_or_else(|e| panic!("settings rejected: {e}"));
    config
}

fn seconds(value: &Value, default: u64) -> Duration {
    Duration::from_secs(value.as_u64().unwrap_or(default))
}

const PROBES: [&str; 3] = ["startupProbe", "livenessProbe", "readinessProbe"];

#[tokio::test]
async fn every_probe_of_the_deployment_exists_on_the_apps_port_and_passes_when_ready() {
    let deployment = yaml("k8s/deployment.yaml");
    let config = deployment_config(&deployment);
    let container = container(&deployment);
    let port = config.bind_addr.port();
    let http_port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http")
        .expect("a port named http");
    assert_eq!(
        http_port["containerPort"], port,
        "containerPort vs BIND_ADDR"
    );

    let app = spawn_app().await;
    app.wait_ready_status(200, Duration::from_secs(10)).await;
    let mut paths = BTreeSet::new();
    for probe in PROBES {
        let get = &container[probe]["httpGet"];
        assert!(get.is_object(), "{probe} is an httpGet probe");
        assert!(
            get["port"] == port || get["port"] == "http",
            "{probe} port {} is not the app's port {port}",
            get["port"]
        );
        let path = get["path"].as_str().unwrap();
        let response = app.get(path).await;
        assert_eq!(response.status(), 200, "{probe} {path} on a ready app");
        paths.insert(path.to_owned());
    }
    assert_eq!(
        paths,
        BTreeSet::from(["/health/live", "/health/ready", "/health/startup"].map(String::from))
    );
}

#[test]
fn the_deployment_runs_the_images_entrypoint_with_serve() {
    // Kubernetes' `args` replace the image's CMD and `command` its ENTRYPOINT.
    let dockerfile = std::fs::read_to_string(deploy_dir().join("../Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("\nENTRYPOINT [\"backend\"]\n"),
        "{dockerfile}"
    );
    assert!(dockerfile.contains("\nCMD [\"serve\"]\n"));
    assert!(dockerfile.contains("CMD [\"backend\", \"healthcheck\"]"));
    let deployment = yaml("k8s/deployment.yaml");
    let container = container(&deployment);
    assert!(
        container["command"].is_null(),
        "keep the image's entrypoint"
    );
    assert_eq!(container["args"], json!(["serve"]));
    let compose = yaml("../docker-compose.yml");
    assert!(compose["services"]["backend"]["command"].is_null());
    assert_eq!(
        compose["services"]["paper-broker"]["entrypoint"],
        json!(["paper-broker"])
    );
}

#[test]
fn probe_and_shutdown_timings_agree_with_the_settings() {
    let deployment = yaml("k8s/deployment.yaml");
    let config = deployment_config(&deployment);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = container(&deployment);
    let period = |probe: &str| seconds(&container[probe]["periodSeconds"], 10);
    let failures = |probe: &str| {
        u32::try_from(container[probe]["failureThreshold"].as_u64().unwrap_or(3)).unwrap()
    };

    // The kubelet must not SIGKILL a pod still draining or finishing requests: drain
    // delay, then the shutdown timeout, then up to 5 s for the background tasks.
    let grace = seconds(&pod["terminationGracePeriodSeconds"], 30);
    let needed = config.shutdown_drain_delay + config.shutdown_timeout + Duration::from_secs(5);
    assert!(
        grace > needed,
        "terminationGracePeriodSeconds {grace:?} <= {needed:?}"
    );

    // Liveness turns 503 only after the refresher is silent for 3 intervals; the kubelet
    // must not restart the pod faster than the app can even say it is wedged.
    let liveness_window = period("livenessProbe") * failures("livenessProbe");
    assert!(
        liveness_window >= config.stale_after(),
        "liveness kills after {liveness_window:?}, before the app's {:?}",
        config.stale_after()
    );

    // Readiness: probing faster than the checks refresh only re-reads the same snapshot,
    // and an instance that starts draining must be taken out before its listener closes.
    assert!(period("readinessProbe") <= config.health_check_interval);
    let readiness_window = period("readinessProbe") * failures("readinessProbe");
    assert!(
        readiness_window <= config.shutdown_drain_delay,
        "readiness notices draining after {readiness_window:?}, drain delay is {:?}",
        config.shutdown_drain_delay
    );

    // Start-up includes migrations and the first round: allow minutes, not seconds.
    let startup_window = period("startupProbe") * failures("startupProbe");
    assert!(
        startup_window >= Duration::from_secs(120),
        "{startup_window:?}"
    );

    // Every probe's own timeout is above what a probe can take (answers come from memory).
    for probe in PROBES {
        assert!(seconds(&container[probe]["timeoutSeconds"], 1) >= Duration::from_secs(1));
    }
    let resources = &container["resources"];
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                resources[kind][resource].is_string(),
                "{kind}.{resource} is set"
            );
        }
    }
}

#[test]
fn the_service_and_service_monitor_reach_the_pods_http_port() {
    let deployment = yaml("k8s/deployment.yaml");
    let service = yaml("k8s/service.yaml");
    let monitor = yaml("k8s/servicemonitor.yaml");
    let pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    for (label, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            pod_labels.get(label),
            Some(value),
            "service selects the pods"
        );
    }
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["targetPort"], "http");
    for (label, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(service["metadata"]["labels"][label], *value);
    }
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service_port["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    // The alert rules select job="backend": the operator names the job after the Service.
    assert_eq!(service["metadata"]["name"], "backend");
}

#[test]
fn the_compose_backend_settings_are_valid_and_its_prometheus_scrapes_job_backend() {
    let compose = yaml("../docker-compose.yml");
    let backend = &compose["services"]["backend"];
    let settings = backend["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let config = config_from(settings);
    let published = backend["ports"][0].as_str().unwrap();
    assert!(published.ends_with(&format!(":{}", config.bind_addr.port())));
    // Compose's stop grace period must cover drain + shutdown timeout + task stop.
    let grace = backend["stop_grace_period"].as_str().unwrap();
    let grace = backend::config::parse_duration(grace).unwrap();
    assert!(grace > config.shutdown_drain_delay + config.shutdown_timeout + Duration::from_secs(5));
    let prometheus = yaml("compose/prometheus.yml");
    assert_eq!(prometheus["scrape_configs"][0]["job_name"], "backend");
}

#[test]
fn the_prometheus_rule_carries_exactly_the_alert_rules() {
    let rule = yaml("k8s/prometheusrule.yaml");
    let alerts = yaml("prometheus/alerts.yml");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(
        rule["spec"]["groups"], alerts["groups"],
        "deploy/k8s/prometheusrule.yaml differs from deploy/prometheus/alerts.yml"
    );
}

/// Names of the series an expression selects: each identifier directly followed by `{`
/// (every selector in our rules and dashboard has a label matcher).
fn selected_metrics(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += usize::from(chars[i] == '\\') + 1;
            }
            i += 1;
        } else if chars[i].is_ascii_alphabetic() || chars[i] == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            if chars.get(i) == Some(&'{') {
                names.insert(chars[start..i].iter().collect());
            }
        } else {
            i += 1;
        }
    }
    names
}

fn alert_rules() -> Vec<(String, String)> {
    yaml("prometheus/alerts.yml")["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_owned(),
                r["expr"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Every panel query of the dashboard: (panel title, expression with the dashboard's
/// variables replaced as Grafana would for "all instances").
fn dashboard_queries() -> Vec<(String, String)> {
    let path = deploy_dir().join("grafana/dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "instance"]);
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"],
            json!({"type": "prometheus", "uid": "${datasource}"}),
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            assert!(!expr.contains('$'), "unknown variable in {expr}");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    queries
}

/// Alerts that depend on the machine the test runs on rather than on the app.
const MACHINE_DEPENDENT_ALERTS: [&str; 2] = ["BackendDiskAlmostFull", "BackendRedisMemoryHigh"];

/// Panels whose query is empty when everything is healthy.
const EMPTY_WHEN_HEALTHY: [&str; 1] = ["Checks not passing"];

#[tokio::test]
async fn alert_rules_and_every_dashboard_query_work_on_a_real_prometheus() {
    let broker = paper_broker().await;
    let app = spawn_app_with(with_broker(&broker, |_| {})).await;
    app.wait_ready_status(200, Duration::from_secs(10)).await;
    let order = json!({"client_order_id": crate::helpers::unique_name("dash"), "broker": "paper",
        "symbol": "AAPL", "side": "buy", "type": "market", "quantity": "1"});
    let response = app
        .client
        .post(app.url("/api/v1/orders"))
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let rules_file = deploy_dir().join("prometheus/alerts.yml");
    let prometheus = Prometheus::start(&[app.addr], &[&rules_file]).await;
    // Rates need two samples in their window: wait for three scrapes.
    prometheus
        .wait_for(
            r#"count_over_time(up{job="backend"}[1m])"#,
            Duration::from_secs(45),
            |r| first_value(r).is_some_and(|n| n >= 3.0),
        )
        .await;

    // Every metric the rules and the dashboard select is one the app exports.
    let names: BTreeSet<String> = prometheus.get("/api/v1/label/__name__/values").await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let queries = dashboard_queries();
    for (owner, expr) in alert_rules().iter().chain(&queries) {
        for metric in selected_metrics(expr) {
            assert!(
                names.contains(&metric),
                "{owner} selects {metric}, which the app does not export"
            );
        }
    }

    // The rules load and evaluate without error, and on a healthy app none is even pending.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rules = prometheus.get("/api/v1/rules").await;
        let evaluated: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert_eq!(evaluated.len(), alert_rules().len(), "every rule loaded");
        let unevaluated = evaluated
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{} {} {}", r["name"], r["health"], r["lastError"]))
            .collect::<Vec<_>>();
        if unevaluated.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "rules not evaluated cleanly: {unevaluated:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let active = prometheus.query("ALERTS").await.unwrap();
    let unexpected: Vec<&Value> = active
        .iter()
        .filter(|a| {
            let name = a["metric"]["alertname"].as_str().unwrap_or_default();
            !MACHINE_DEPENDENT_ALERTS.contains(&name)
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "alerts on a healthy app: {unexpected:#?}"
    );

    // Every panel query runs, and shows data unless it is one that is empty when healthy.
    let mut problems = Vec::new();
    for (panel, expr) in &queries {
        match prometheus.query(expr).await {
            Err(error) => problems.push(format!("{panel}: {error} in {expr}")),
            Ok(result) if result.is_empty() && !EMPTY_WHEN_HEALTHY.contains(&panel.as_str()) => {
                problems.push(format!("{panel}: no data for {expr}"));
            }
            Ok(_) => {}
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(queries.len() >= 30, "{} queries", queries.len());
}

#[test]
fn metric_names_are_found_in_expressions() {
    let names = selected_metrics(
        r#"histogram_quantile(0.99, sum by (le) (rate(a_bucket{job="x{y"}[5m]))) / b{c="d"} + time()"#,
    );
    assert_eq!(names, BTreeSet::from(["a_bucket".into(), "b".into()]));
}
