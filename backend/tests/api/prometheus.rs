//! A real Prometheus server (Debian package `prometheus`; `.ci/run` installs it) started
//! by a test, scraping test apps every second, optionally with rule files loaded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Prometheus {
    pub port: u16,
    dir: PathBuf,
    client: reqwest::Client,
    _server: tokio::process::Child,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` as job `backend`, with `rule_files` loaded,
    /// and waits until its API answers.
    pub async fn start(targets: &[SocketAddr], rule_files: &[&Path]) -> Prometheus {
        let dir = std::env::temp_dir().join(crate::helpers::unique_name("prometheus"));
        std::fs::create_dir_all(&dir).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("'{}'", p.canonicalize().unwrap().display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [{}]\n\
             scrape_configs:\n  - job_name: backend\n    static_configs:\n      - targets: [{}]\n",
            rules.join(", "),
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let server = tokio::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus is installed (Debian package prometheus; .ci/run installs it)");
        let prometheus = Prometheus {
            port,
            dir,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            _server: server,
        };
        prometheus
            .wait_for("vector(1)", Duration::from_secs(30), |r| !r.is_empty())
            .await;
        prometheus
    }

    /// Runs an instant query: the `result` array, or Prometheus' error text.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let response = self
            .client
            .get(self.api("/api/v1/query"))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("not JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Polls `expr` until `done` holds for its result; panics after `deadline`.
    pub async fn wait_for(
        &self,
        expr: &str,
        deadline: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let until = Instant::now() + deadline;
        loop {
            let last = self.query(expr).await;
            if let Ok(result) = &last
                && done(result)
            {
                return result.clone();
            }
            assert!(
                Instant::now() < until,
                "Prometheus: {expr} not as expected within {deadline:?}; last: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// GET on the Prometheus API, as JSON.
    pub async fn get(&self, path: &str) -> Value {
        self.client
            .get(self.api(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first sample's value of an instant-query result.
pub fn first_value(result: &[Value]) -> Option<f64> {
    result.first()?["value"][1].as_str()?.parse().ok()
}
