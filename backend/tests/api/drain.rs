//! Zero-downtime restart, proven behind a real load balancer: HAProxy (Debian package
//! `haproxy`; `.ci/run` installs it) in front of two real `backend` processes, checking
//! `GET /health/ready`. Under a steady load, one instance gets SIGTERM, exits, and is
//! started again on the same port. With the drain delay, no request fails; with the drain
//! delay at 0, the listener closes before HAProxy has noticed, and requests fail.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::helpers::{TestDatabase, parse_metrics, unique_name};
use crate::process::Process;

/// HAProxy's health checking: every 250 ms, down after 2 failures, up after 2 successes.
/// It notices a draining instance within about 0.5 s, well inside the drain delay.
/// `retries 0`: a refused connection is not retried, as with kube-proxy and most L4 load
/// balancers; HAProxy's default retries would hide a listener closed too early.
const HAPROXY_BACKEND: &str = "\
backend app
  balance roundrobin
  retries 0
  option httpchk GET /health/ready
  http-check expect status 200
  timeout check 2s
  default-server inter 250ms fall 2 rise 2
";

/// The load: clients sending one request at a time (keep-alive), each at most one per
/// `PACE` (2,000 requests/s in all), so the machine keeps CPU for the instances.
const CLIENTS: usize = 4;
const PACE: Duration = Duration::from_millis(2);

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

struct Instance {
    port: u16,
    database_url: String,
    drain_delay: &'static str,
}

impl Instance {
    fn start(&self) -> Process {
        let bind = format!("127.0.0.1:{}", self.port);
        Process::spawn(&[
            ("BIND_ADDR", bind.as_str()),
            ("DATABASE_URL", self.database_url.as_str()),
            ("BROKERS", "none"),
            // The production timings: the test timings (400ms/300ms) take an instance
            // out whenever the machine is busy with the other tests.
            ("HEALTH_CHECK_INTERVAL", "5s"),
            ("HEALTH_CHECK_TIMEOUT", "2s"),
            ("SHUTDOWN_DRAIN_DELAY", self.drain_delay),
            ("SHUTDOWN_TIMEOUT", "5s"),
        ])
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

struct Haproxy {
    port: u16,
    stats_port: u16,
    dir: std::path::PathBuf,
    _child: tokio::process::Child,
}

impl Haproxy {
    fn start(servers: &[&Instance]) -> Haproxy {
        let (port, stats_port) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(unique_name("haproxy"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = format!(
            "defaults\n  mode http\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n\n\
             frontend web\n  bind 127.0.0.1:{port}\n  default_backend app\n\n\
             listen stats\n  bind 127.0.0.1:{stats_port}\n  stats enable\n  stats uri /stats\n\n\
             {HAPROXY_BACKEND}"
        );
        for (i, server) in servers.iter().enumerate() {
            config.push_str(&format!("  server s{i} 127.0.0.1:{} check\n", server.port));
        }
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, config).unwrap();
        let child = tokio::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy is installed (Debian package haproxy; .ci/run installs it)");
        Haproxy {
            port,
            stats_port,
            dir,
            _child: child,
        }
    }

    /// Server name -> status (`UP`, `DOWN`, …) from the CSV stats.
    async fn server_status(&self, client: &reqwest::Client) -> Vec<(String, String)> {
        let url = format!("http://127.0.0.1:{}/stats;csv", self.stats_port);
        let Ok(response) = client.get(url).send().await else {
            return Vec::new();
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("app,s"))
            .map(|l| {
                let fields: Vec<&str> = l.split(',').collect();
                (fields[1].to_owned(), fields[17].to_owned())
            })
            .collect()
    }

    async fn wait_status(&self, client: &reqwest::Client, server: &str, status: &str) {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let all = self.server_status(client).await;
            if all
                .iter()
                .any(|(s, st)| s == server && st.starts_with(status))
            {
                return;
            }
            assert!(
                Instant::now() < until,
                "HAProxy never saw {server} {status}: {all:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn wait_ready(client: &reqwest::Client, instance: &Instance, process: &Process) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let status = client
            .get(instance.url("/health/ready"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if status.as_ref().is_ok_and(|s| *s == 200) {
            return;
        }
        assert!(
            Instant::now() < until,
            "instance on {} never ready: {}",
            instance.port,
            process.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Outcome {
    succeeded: u64,
    failed: u64,
    /// A few failures, for the message.
    examples: Vec<String>,
    /// Requests the restarted instance served.
    served_after_restart: f64,
    /// Warnings the instances logged (a check failing makes HAProxy take one out).
    warnings: String,
}

/// The whole scenario with the given `SHUTDOWN_DRAIN_DELAY` on both instances.
async fn restart_one_instance_under_load(drain_delay: &'static str) -> Outcome {
    let db = TestDatabase::new("drain");
    let instances = [0, 1].map(|_| Instance {
        port: free_port(),
        database_url: db.url(),
        drain_delay,
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // One after the other: the first creates the database and applies the migrations.
    let mut first = instances[0].start();
    wait_ready(&client, &instances[0], &first).await;
    let second = instances[1].start();
    wait_ready(&client, &instances[1], &second).await;
    let haproxy = Haproxy::start(&[&instances[0], &instances[1]]);
    haproxy.wait_status(&client, "s0", "UP").await;
    haproxy.wait_status(&client, "s1", "UP").await;

    // The load, through HAProxy until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let succeeded = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let url = format!("http://127.0.0.1:{}/health", haproxy.port);
    let mut load = Vec::new();
    for _ in 0..CLIENTS {
        let (stop, succeeded, failures) = (stop.clone(), succeeded.clone(), failures.clone());
        let (client, url) = (client.clone(), url.clone());
        load.push(tokio::spawn(async move {
            let mut pace = tokio::time::interval(PACE);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        succeeded.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => failures.lock().unwrap().push(format!("error {e}")),
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    first.signal("-TERM").await;
    let exit = tokio::time::timeout(Duration::from_secs(20), first.child.wait())
        .await
        .expect("the signalled instance exits within drain delay + shutdown timeout")
        .unwrap();
    assert_eq!(exit.code(), Some(0), "{}", first.output());
    haproxy.wait_status(&client, "s0", "DOWN").await;

    let restarted = instances[0].start();
    wait_ready(&client, &instances[0], &restarted).await;
    haproxy.wait_status(&client, "s0", "UP").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }

    let metrics = client
        .get(instances[0].url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let served_after_restart = parse_metrics(&metrics)
        .iter()
        .filter(|(series, _)| {
            series.starts_with("http_requests_total{") && series.contains(r#"handler="/health""#)
        })
        .map(|(_, v)| v)
        .sum();
    let warnings = [&first, &restarted, &second]
        .iter()
        .flat_map(|p| p.output().lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
        .collect::<Vec<_>>()
        .join("\n");
    drop((restarted, second, haproxy));
    let failures = failures.lock().unwrap();
    Outcome {
        succeeded: succeeded.load(Ordering::Relaxed),
        failed: failures.len() as u64,
        examples: failures.iter().take(5).cloned().collect(),
        served_after_restart,
        warnings,
    }
}

#[tokio::test]
async fn a_rolling_restart_behind_haproxy_fails_no_request() {
    let outcome = restart_one_instance_under_load("5s").await;
    eprintln!(
        "drain delay 5s: {} succeeded, {} failed",
        outcome.succeeded, outcome.failed
    );
    assert_eq!(
        outcome.failed, 0,
        "failures: {:?}\ninstance warnings:\n{}",
        outcome.examples, outcome.warnings
    );
    assert!(outcome.succeeded > 1000, "{} requests", outcome.succeeded);
    assert!(
        outcome.served_after_restart > 0.0,
        "the restarted instance took traffic again"
    );
}

/// Shows that the test above can fail: without the drain delay the listener closes
/// before HAProxy notices, and the requests sent to it in between fail.
#[tokio::test]
async fn without_a_drain_delay_the_same_restart_fails_requests() {
    let outcome = restart_one_instance_under_load("0s").await;
    eprintln!(
        "drain delay 0s: {} succeeded, {} failed, e.g. {:?}",
        outcome.succeeded, outcome.failed, outcome.examples
    );
    assert!(outcome.failed > 0, "{} succeeded", outcome.succeeded);
}
