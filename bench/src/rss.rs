//! The server's memory, sampled from `/proc/<pid>/status` during a run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

/// How often the resident set is looked at.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The server's memory over a run, in MiB.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RssReport {
    /// The largest resident set seen while sampling.
    pub peak_sampled_mb: f64,
    /// The kernel's high-water mark of the resident set since the process
    /// started (`VmHWM`), which also catches peaks between two samples.
    pub hwm_mb: f64,
    /// The resident set at the end of the run.
    pub last_mb: f64,
}

/// Samples a process's resident set in the background until stopped.
pub struct RssSampler {
    pid: u32,
    peak_kb: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> Self {
        let peak_kb = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let peak_kb = peak_kb.clone();
            async move {
                loop {
                    if let Some(kb) = status_kb(pid, "VmRSS:") {
                        peak_kb.fetch_max(kb, Ordering::Relaxed);
                    }
                    tokio::time::sleep(SAMPLE_EVERY).await;
                }
            }
        });
        Self { pid, peak_kb, task }
    }

    /// Stops sampling at once (not after the next sample, so that what comes
    /// after a run, such as timing the pipeline's catch-up, is not delayed)
    /// and reports.
    pub async fn stop(self) -> RssReport {
        self.task.abort();
        let _ = self.task.await;
        let mb = |kb: u64| kb as f64 / 1024.0;
        RssReport {
            peak_sampled_mb: mb(self.peak_kb.load(Ordering::Relaxed)),
            hwm_mb: mb(status_kb(self.pid, "VmHWM:").unwrap_or(0)),
            last_mb: mb(status_kb(self.pid, "VmRSS:").unwrap_or(0)),
        }
    }
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
