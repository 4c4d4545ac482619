//! The standard `process_*` families, read from /proc at each scrape (prometheus-client
//! has no process collector). Missing values (e.g. not on Linux) are left out.

use std::sync::OnceLock;

use procfs::process::Process;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug)]
pub struct ProcessCollector;

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<f64>,
) -> Result<(), std::fmt::Error> {
    if let Some(value) = value {
        let metric = ConstGauge::new(value);
        metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
    }
    Ok(())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(process) = Process::myself() else {
            return Ok(());
        };
        let stat = process.stat().ok();
        let ticks = procfs::ticks_per_second() as f64;
        let page = procfs::page_size() as f64;
        if let Some(stat) = &stat {
            let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
        }
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            stat.as_ref().map(|s| s.rss as f64 * page),
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            stat.as_ref().map(|s| s.vsize as f64),
        )?;
        gauge(
            &mut encoder,
            "process_open_fds",
            "Number of open file descriptors",
            process.fd_count().ok().map(|n| n as f64),
        )?;
        // One syscall instead of parsing /proc/self/limits.
        let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map_or(f64::INFINITY, |v| v as f64);
        gauge(
            &mut encoder,
            "process_max_fds",
            "Maximum number of open file descriptors",
            Some(max_fds),
        )?;
        // Constant for the process: computed on the first scrape (the boot time comes
        // from /proc/stat, which is long on many-core machines).
        static START: OnceLock<Option<f64>> = OnceLock::new();
        let start = *START.get_or_init(|| match (&stat, procfs::boot_time_secs()) {
            (Some(s), Ok(boot)) => Some(boot as f64 + s.starttime as f64 / ticks),
            _ => None,
        });
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            start,
        )?;
        gauge(
            &mut encoder,
            "process_threads",
            "Number of OS threads in the process",
            stat.as_ref().map(|s| s.num_threads as f64),
        )?;
        Ok(())
    }
}
