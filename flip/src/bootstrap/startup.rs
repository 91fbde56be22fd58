//! What reaching readiness cost this process, from the kernel's accounting: CPU time, time
//! spent waiting for a CPU, page faults. Logged at debug level once ready, off the path to it,
//! to tell a slow machine from a slow start.

use std::sync::OnceLock;
use std::time::Instant;

static MAIN_ENTERED: OnceLock<Instant> = OnceLock::new();

/// Notes when `main` began, for the log line's `since_main_us`.
pub(crate) fn mark_main() {
    let _ = MAIN_ENTERED.set(Instant::now());
}

/// CPU time and run-queue wait in nanoseconds over every thread so far
/// (`/proc/self/task/*/schedstat`), and (minor, major) page faults (`/proc/self/stat`).
pub(crate) struct StartupCost {
    on_cpu_ns: u64,
    waiting_ns: u64,
    threads: usize,
    minor_faults: u64,
    major_faults: u64,
}

impl StartupCost {
    /// `None` where /proc is not mounted.
    fn read() -> Option<StartupCost> {
        let mut cost = StartupCost {
            on_cpu_ns: 0,
            waiting_ns: 0,
            threads: 0,
            minor_faults: 0,
            major_faults: 0,
        };
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
            cost.on_cpu_ns += fields.next().flatten()?;
            cost.waiting_ns += fields.next().flatten()?;
            cost.threads += 1;
        }
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // After the command name, which may hold spaces: state is field 3, minflt 10, majflt 12.
        let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        cost.minor_faults = rest.get(7)?.parse().ok()?;
        cost.major_faults = rest.get(9)?.parse().ok()?;
        Some(cost)
    }

    /// Logs the cost at debug level, if that level is on. For a standby, the time since `main`
    /// includes its wait for the handoff.
    pub(crate) fn log() {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        if let Some(c) = StartupCost::read() {
            let since_main = MAIN_ENTERED.get().map(|t| t.elapsed().as_micros() as u64);
            tracing::debug!(
                since_main_us = since_main,
                on_cpu_us = c.on_cpu_ns / 1000,
                waiting_for_cpu_us = c.waiting_ns / 1000,
                threads = c.threads,
                minor_faults = c.minor_faults,
                major_faults = c.major_faults,
                "what reaching readiness cost"
            );
        }
    }
}
