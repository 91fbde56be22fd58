//! What a check saw, and how it is told: the verdict, the figures, and the JSON of `flip check`.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::check::{UpgradeTiming, Via};
use super::load::{Mode, Report};

/// What a check saw.
#[derive(Debug)]
pub struct CheckReport {
    /// The process serving when the check began.
    pub first_pid: u32,
    /// How the clients used connections.
    pub mode: Mode,
    /// How upgrades were asked for.
    pub via: Via,
    /// How long the check ran.
    pub duration: Duration,
    /// When it began (the load's timestamps are on the same clock).
    pub started: Instant,
    /// What the clients saw.
    pub load: Report,
    /// Each upgrade.
    pub upgrades: Vec<UpgradeTiming>,
    /// What the gRPC clients saw, with [`Check::grpc`](super::Check::grpc).
    #[cfg(feature = "testing-grpc")]
    pub grpc: Option<super::grpc::GrpcReport>,
}

/// p50 and p99 of `v` (sorted here).
fn percentiles(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort_unstable();
    let at = |p: f64| {
        if v.is_empty() {
            return Duration::ZERO;
        }
        let i = ((v.len() - 1) as f64 * p).round() as usize;
        v[i.min(v.len() - 1)]
    };
    (at(0.5), at(0.99))
}

impl CheckReport {
    /// Nothing was lost: no request failed, no keep-alive connection was closed under a
    /// request, and every upgrade succeeded.
    pub fn lossless(&self) -> bool {
        #[cfg(feature = "testing-grpc")]
        let grpc_lost = self.grpc.as_ref().is_some_and(|g| g.failed > 0);
        #[cfg(not(feature = "testing-grpc"))]
        let grpc_lost = false;
        self.load.failed == 0
            && self.load.idle_close_races == 0
            && self.failed_upgrades() == 0
            && !grpc_lost
    }

    /// Upgrades that did not succeed.
    pub fn failed_upgrades(&self) -> usize {
        self.upgrades.iter().filter(|u| u.error.is_some()).count()
    }

    /// (start, end) of each upgrade, on the load's clock: from the request to the old
    /// process's exit (or the end of the wait).
    pub fn windows(&self) -> Vec<(Instant, Instant)> {
        self.upgrades
            .iter()
            .map(|u| {
                let start = self.started + u.at;
                let end = u.to_old_exit.or(u.to_ready).unwrap_or(Duration::ZERO);
                (start, start + end)
            })
            .collect()
    }

    /// Latency p50 and p99 of short requests outside upgrades, then during them.
    pub fn latency(&self) -> ((Duration, Duration), (Duration, Duration)) {
        let windows = self.windows();
        let (mut during, mut outside) = (Vec::new(), Vec::new());
        for (start, latency) in &self.load.latencies {
            if windows.iter().any(|(a, b)| start >= a && start <= b) {
                during.push(*latency);
            } else {
                outside.push(*latency);
            }
        }
        (percentiles(&mut outside), percentiles(&mut during))
    }

    /// SIGHUP (or request) to ready, p50 and p99; then to the predecessor's exit.
    pub fn upgrade_times(&self) -> ((Duration, Duration), (Duration, Duration)) {
        let mut ready: Vec<Duration> = self.upgrades.iter().filter_map(|u| u.to_ready).collect();
        let mut exit: Vec<Duration> = self.upgrades.iter().filter_map(|u| u.to_old_exit).collect();
        (percentiles(&mut ready), percentiles(&mut exit))
    }

    /// How the new processes were started, with how many upgrades each (`standby`, `fresh:
    /// <why>`), most first; empty when the server did not say (upgrades by signal).
    pub fn starts(&self) -> Vec<(String, usize)> {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for start in self.upgrades.iter().filter_map(|u| u.started.as_deref()) {
            match counts.iter_mut().find(|(s, _)| s == start) {
                Some((_, n)) => *n += 1,
                None => counts.push((start.to_owned(), 1)),
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counts
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        let f = &self.load.failures;
        let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
        let ((out50, out99), (dur50, dur99)) = self.latency();
        let ((r50, r99), (e50, e99)) = self.upgrade_times();
        let upgrades: Vec<String> = self
            .upgrades
            .iter()
            .map(|u| {
                format!(
                    "{{\"old_pid\":{},\"new_pid\":{},\"to_ready_ms\":{},\"to_old_exit_ms\":{},\"started\":{},\"error\":{}}}",
                    u.old_pid,
                    u.new_pid.map_or("null".into(), |p| p.to_string()),
                    u.to_ready.map_or("null".into(), ms),
                    u.to_old_exit.map_or("null".into(), ms),
                    u.started.as_deref().map_or("null".into(), json_string),
                    u.error.as_deref().map_or("null".into(), json_string),
                )
            })
            .collect();
        #[cfg(feature = "testing-grpc")]
        let grpc = match &self.grpc {
            Some(g) => format!(
                ",\"grpc\":{{\"answered\":{},\"failed\":{},\"retried_unprocessed\":{}}}",
                g.answered, g.failed, g.retried
            ),
            None => String::new(),
        };
        #[cfg(not(feature = "testing-grpc"))]
        let grpc = String::new();
        format!(
            "{{\"lossless\":{},\"mode\":\"{}\",\"via\":\"{}\",\"duration_ms\":{},\"answered\":{},\"failed\":{},\"failures\":{{\"refused\":{},\"eof_before_response\":{},\"bad_status\":{},\"reset_or_cut\":{}}},\"keepalive_close_races\":{},\"upgrades_succeeded\":{},\"upgrades_failed\":{},\"to_ready_ms\":{{\"p50\":{},\"p99\":{}}},\"to_old_exit_ms\":{{\"p50\":{},\"p99\":{}}},\"latency_outside_ms\":{{\"p50\":{},\"p99\":{}}},\"latency_during_ms\":{{\"p50\":{},\"p99\":{}}},\"upgrades\":[{}]{}}}",
            self.lossless(),
            mode_name(self.mode),
            via_name(self.via),
            ms(self.duration),
            self.load.answered,
            self.load.failed,
            f.connect,
            f.no_response,
            f.bad_status,
            f.other,
            self.load.idle_close_races,
            self.upgrades.len() - self.failed_upgrades(),
            self.failed_upgrades(),
            ms(r50),
            ms(r99),
            ms(e50),
            ms(e99),
            ms(out50),
            ms(out99),
            ms(dur50),
            ms(dur99),
            upgrades.join(","),
            grpc
        )
    }

    /// A timeline a browser shows: latency of each request over time, one mark per upgrade,
    /// failures in red.
    pub fn to_svg(&self) -> String {
        super::plot::svg(self)
    }

    /// Writes [`to_svg`](CheckReport::to_svg) to `path`.
    pub fn write_svg(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_svg())
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Close => "close",
        Mode::KeepAlive => "keepalive",
    }
}

fn via_name(via: Via) -> &'static str {
    match via {
        Via::Control => "control",
        Via::Signal => "signal",
    }
}

/// `s` as a JSON string literal, quoted and escaped.
pub fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.load;
        let fl = &l.failures;
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
        let ((out50, out99), (dur50, dur99)) = self.latency();
        let ((r50, r99), (e50, e99)) = self.upgrade_times();
        writeln!(
            f,
            "{}: {} upgrades ({} failed) in {:.1} s, {} mode, via {}",
            if self.lossless() {
                "LOSSLESS"
            } else {
                "LOST REQUESTS"
            },
            self.upgrades.len(),
            self.failed_upgrades(),
            self.duration.as_secs_f64(),
            mode_name(self.mode),
            via_name(self.via),
        )?;
        writeln!(
            f,
            "requests: {} answered, {} failed (refused {}, EOF before a response {}, bad status {}, reset or cut short {}), {} keep-alive close races",
            l.answered,
            l.failed,
            fl.connect,
            fl.no_response,
            fl.bad_status,
            fl.other,
            l.idle_close_races
        )?;
        writeln!(
            f,
            "upgrade to ready: p50 {} p99 {}; to old process exit: p50 {} p99 {}",
            ms(r50),
            ms(r99),
            ms(e50),
            ms(e99)
        )?;
        let starts = self.starts();
        if !starts.is_empty() {
            let list: Vec<String> = starts.iter().map(|(s, n)| format!("{n} {s}")).collect();
            writeln!(f, "new processes started: {}", list.join(", "))?;
        }
        write!(
            f,
            "latency: outside upgrades p50 {} p99 {}; during upgrades p50 {} p99 {}",
            ms(out50),
            ms(out99),
            ms(dur50),
            ms(dur99)
        )?;
        #[cfg(feature = "testing-grpc")]
        if let Some(g) = &self.grpc {
            write!(
                f,
                "\ngrpc: {} calls answered, {} failed, {} never processed by the server and retried (gRPC transparent retry)",
                g.answered, g.failed, g.retried
            )?;
            for e in &g.errors {
                write!(f, "\ngrpc error: {e}")?;
            }
        }
        for u in self.upgrades.iter().filter(|u| u.error.is_some()) {
            write!(
                f,
                "\nupgrade of {} failed: {}",
                u.old_pid,
                u.error.as_deref().unwrap_or("")
            )?;
        }
        Ok(())
    }
}
