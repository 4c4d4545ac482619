//! The real `backend` binary as a child process, its output collected line by line.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

pub struct Process {
    pub child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts with test timings and an ephemeral port; `envs` override them.
    pub fn spawn(envs: &[(&str, &str)]) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_backend"));
        command
            .env("BIND_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("HEALTH_CHECK_INTERVAL", "400ms")
            .env("HEALTH_CHECK_TIMEOUT", "300ms")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("backend binary starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = Arc::clone(&lines);
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Self { child, lines }
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The address from the "listening" log line.
    pub async fn listening_addr(&self) -> String {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.lines.lock().unwrap().iter().find_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                (v["message"] == "listening").then(|| v["addr"].as_str().map(str::to_owned))?
            });
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                Instant::now() < until,
                "no listening line: {}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = tokio::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }
}
