//! System checks read from the kernel (procfs, statvfs): `cpu:utilization`,
//! `memory:utilization`, `disk:utilization` (the data dir's file system) and
//! `process:info`. They do no network I/O; CPU usage is the change between two runs.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use procfs::process::{LimitValue, Process};
use procfs::{Current, CurrentSI, KernelStats, Meminfo};
use serde_json::json;
use tokio::time::Instant;

use super::{Check, CheckFuture, CheckInfo, ComponentType, Observation, Status, round2};

/// CPU counters at one instant.
#[derive(Clone, Copy)]
struct CpuSample {
    at: Instant,
    /// Host busy and total ticks over all cores.
    host_busy: u64,
    host_total: u64,
    /// This process's user + system ticks.
    process: u64,
}

fn cpu_sample() -> Result<CpuSample, String> {
    let stats = KernelStats::current().map_err(|e| format!("reading /proc/stat: {e}"))?;
    let t = stats.total;
    let idle = t.idle + t.iowait.unwrap_or(0);
    let total = t.user
        + t.nice
        + t.system
        + t.idle
        + t.iowait.unwrap_or(0)
        + t.irq.unwrap_or(0)
        + t.softirq.unwrap_or(0)
        + t.steal.unwrap_or(0);
    let stat = Process::myself()
        .and_then(|p| p.stat())
        .map_err(|e| format!("reading /proc/self/stat: {e}"))?;
    Ok(CpuSample {
        at: Instant::now(),
        host_busy: total.saturating_sub(idle),
        host_total: total,
        process: stat.utime + stat.stime,
    })
}

/// `cpu:utilization`: host CPU % (all cores) and process CPU % (of one core, like `top`).
pub struct CpuCheck {
    pub warn_percent: f64,
    pub critical: bool,
    previous: Mutex<Option<CpuSample>>,
}

impl CpuCheck {
    pub fn new(warn_percent: f64, critical: bool) -> Self {
        // A first sample now, so the first round already has a span to measure over.
        Self {
            warn_percent,
            critical,
            previous: Mutex::new(cpu_sample().ok()),
        }
    }
}

impl Check for CpuCheck {
    fn info(&self) -> CheckInfo {
        CheckInfo {
            keys: &["cpu:utilization"],
            component_type: ComponentType::System,
            critical: self.critical,
        }
    }
    fn run(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let now = match cpu_sample() {
                Ok(s) => s,
                Err(e) => return vec![Observation::fail("cpu:utilization", e)],
            };
            let previous = self.previous.lock().ok().and_then(|mut p| p.replace(now));
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let (host, process) = match previous {
                Some(prev) if now.host_total > prev.host_total => {
                    let host = (now.host_busy - prev.host_busy.min(now.host_busy)) as f64 * 100.0
                        / (now.host_total - prev.host_total) as f64;
                    let wall = now.at.duration_since(prev.at).as_secs_f64();
                    let ticks = procfs::ticks_per_second() as f64;
                    let process = if wall > 0.0 {
                        now.process.saturating_sub(prev.process) as f64 / ticks / wall * 100.0
                    } else {
                        0.0
                    };
                    (Some(round2(host)), Some(round2(process)))
                }
                _ => (None, None),
            };
            let mut host_obs = Observation::pass("cpu:utilization")
                .component("host")
                .value(json!(host), "percent")
                .field("cores", cores);
            if let Some(h) = host
                && h > self.warn_percent
            {
                host_obs = host_obs.worsen(
                    Status::Warn,
                    format!("host CPU {h}% (warn above {}%)", self.warn_percent),
                );
            }
            let process_obs = Observation::pass("cpu:utilization")
                .component("process")
                .value(json!(process), "percent")
                .field("note", "percent of one core");
            vec![host_obs, process_obs]
        })
    }
}

/// `memory:utilization`: host memory used (total minus available) and process RSS.
pub struct MemoryCheck {
    pub warn_percent: f64,
    pub fail_percent: f64,
    pub critical: bool,
}

impl Check for MemoryCheck {
    fn info(&self) -> CheckInfo {
        CheckInfo {
            keys: &["memory:utilization"],
            component_type: ComponentType::System,
            critical: self.critical,
        }
    }
    fn run(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let info = match Meminfo::current() {
                Ok(info) => info,
                Err(e) => {
                    return vec![Observation::fail(
                        "memory:utilization",
                        format!("reading /proc/meminfo: {e}"),
                    )];
                }
            };
            let total = info.mem_total;
            let available = info.mem_available.unwrap_or(info.mem_free);
            let used = total.saturating_sub(available);
            let percent = if total > 0 {
                used as f64 * 100.0 / total as f64
            } else {
                0.0
            };
            let mut host = Observation::pass("memory:utilization")
                .component("host")
                .value(round2(percent), "percent")
                .field("usedBytes", used)
                .field("totalBytes", total)
                .field("availableBytes", available);
            if percent > self.fail_percent {
                host = host.worsen(
                    Status::Fail,
                    format!(
                        "{percent:.1}% of memory used (fail above {}%)",
                        self.fail_percent
                    ),
                );
            } else if percent > self.warn_percent {
                host = host.worsen(
                    Status::Warn,
                    format!(
                        "{percent:.1}% of memory used (warn above {}%)",
                        self.warn_percent
                    ),
                );
            }
            let rss = Process::myself()
                .and_then(|p| p.stat())
                .map(|s| s.rss * procfs::page_size())
                .ok();
            let process = Observation::pass("memory:utilization")
                .component("process")
                .value(json!(rss), "bytes");
            vec![host, process]
        })
    }
}

/// `disk:utilization`: the file system holding the data directory.
pub struct DiskCheck {
    pub path: PathBuf,
    pub warn_percent: f64,
    pub fail_percent: f64,
    pub critical: bool,
}

impl Check for DiskCheck {
    fn info(&self) -> CheckInfo {
        CheckInfo {
            keys: &["disk:utilization"],
            component_type: ComponentType::System,
            critical: self.critical,
        }
    }
    fn run(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let path = self.path.display().to_string();
            let stat = match rustix::fs::statvfs(&self.path) {
                Ok(stat) => stat,
                Err(e) => {
                    return vec![Observation::fail(
                        "disk:utilization",
                        format!("statvfs {path}: {e}"),
                    )];
                }
            };
            let block = stat.f_frsize.max(1);
            let total = stat.f_blocks * block;
            let free_for_us = stat.f_bavail * block;
            let used = (stat.f_blocks - stat.f_bfree.min(stat.f_blocks)) * block;
            // Like df: used / (used + available to unprivileged users).
            let denominator = used + free_for_us;
            let percent = if denominator > 0 {
                used as f64 * 100.0 / denominator as f64
            } else {
                0.0
            };
            let mut obs = Observation::pass("disk:utilization")
                .component(path)
                .value(round2(percent), "percent")
                .field("freeBytes", free_for_us)
                .field("usedBytes", used)
                .field("totalBytes", total);
            if percent > self.fail_percent {
                obs = obs.worsen(
                    Status::Fail,
                    format!("{percent:.1}% used (fail above {}%)", self.fail_percent),
                );
            } else if percent > self.warn_percent {
                obs = obs.worsen(
                    Status::Warn,
                    format!("{percent:.1}% used (warn above {}%)", self.warn_percent),
                );
            }
            vec![obs]
        })
    }
}

/// `process:info`: pid, memory, threads, open files against the limit, uptime.
pub struct ProcessCheck {
    pub fds_warn_percent: f64,
    pub critical: bool,
}

impl Check for ProcessCheck {
    fn info(&self) -> CheckInfo {
        CheckInfo {
            keys: &["process:info"],
            component_type: ComponentType::System,
            critical: self.critical,
        }
    }
    fn run(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let process = match Process::myself() {
                Ok(p) => p,
                Err(e) => {
                    return vec![Observation::fail(
                        "process:info",
                        format!("reading /proc/self: {e}"),
                    )];
                }
            };
            let stat = match process.stat() {
                Ok(s) => s,
                Err(e) => {
                    return vec![Observation::fail(
                        "process:info",
                        format!("reading /proc/self/stat: {e}"),
                    )];
                }
            };
            let fds = process.fd_count().ok();
            let fd_limit = process
                .limits()
                .ok()
                .and_then(|l| match l.max_open_files.soft_limit {
                    LimitValue::Value(v) => Some(v),
                    LimitValue::Unlimited => None,
                });
            let start = procfs::boot_time_secs().ok().map(|boot| {
                boot as f64 + stat.starttime as f64 / procfs::ticks_per_second() as f64
            });
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let mut obs = Observation::pass("process:info")
                .value(std::process::id(), "pid")
                .field("pid", std::process::id())
                .field("residentMemoryBytes", stat.rss * procfs::page_size())
                .field("virtualMemoryBytes", stat.vsize)
                .field("threads", stat.num_threads)
                .field("openFds", json!(fds))
                .field("maxFds", json!(fd_limit))
                .field("startTimeSeconds", json!(start.map(|s| s.floor())))
                .field("uptimeSeconds", json!(start.map(|s| round2(now - s))));
            if let (Some(open), Some(limit)) = (fds, fd_limit)
                && limit > 0
            {
                let percent = open as f64 * 100.0 / limit as f64;
                if percent > self.fds_warn_percent {
                    obs = obs.worsen(
                        Status::Warn,
                        format!(
                            "{open} of {limit} file descriptors open (warn above {}%)",
                            self.fds_warn_percent
                        ),
                    );
                }
            }
            vec![obs]
        })
    }
}
