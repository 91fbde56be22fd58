//! Printing what a load run saw: answered and failed requests, latency during and outside
//! upgrades.

use std::time::{Duration, Instant};

use flip_suite::load::Report;

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

pub fn print_stats(label: &str, s: &Report, elapsed: Duration, windows: &[(Instant, Instant)]) {
    let (mut during, mut outside): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    // Requests during upgrades by when they started after the SIGHUP, to show where a tail
    // comes from: the new process's first moments, or the old one's drain and exit.
    let phases = [
        ("0-5 ms", Duration::ZERO, Duration::from_millis(5)),
        (
            "5-50 ms",
            Duration::from_millis(5),
            Duration::from_millis(50),
        ),
        ("50 ms-exit", Duration::from_millis(50), Duration::MAX),
    ];
    let mut by_phase: Vec<Vec<Duration>> = vec![Vec::new(); phases.len()];
    for (start, lat) in &s.latencies {
        match windows.iter().find(|(a, b)| start >= a && start <= b) {
            Some((a, _)) => {
                during.push(*lat);
                let offset = start.duration_since(*a);
                if let Some(i) = phases
                    .iter()
                    .position(|(_, from, to)| offset >= *from && offset < *to)
                {
                    by_phase[i].push(*lat);
                }
            }
            None => outside.push(*lat),
        }
    }
    during.sort();
    outside.sort();
    for v in &mut by_phase {
        v.sort();
    }
    println!(
        "{label}: {} answered ({:.0}/s), {} failed (connect {}, no response {}, bad status {}, other {}), {} idle keep-alive close races",
        s.answered,
        s.answered as f64 / elapsed.as_secs_f64(),
        s.failed,
        s.failures.connect,
        s.failures.no_response,
        s.failures.bad_status,
        s.failures.other,
        s.idle_close_races
    );
    println!(
        "{label}: latency (short requests) outside upgrades p50 {} p99 {} ({} requests); during upgrades p50 {} p99 {} ({} requests)",
        ms(percentile(&outside, 0.5)),
        ms(percentile(&outside, 0.99)),
        outside.len(),
        ms(percentile(&during, 0.5)),
        ms(percentile(&during, 0.99)),
        during.len()
    );
    if !during.is_empty() {
        let parts: Vec<String> = phases
            .iter()
            .zip(&by_phase)
            .map(|((name, ..), v)| {
                format!(
                    "{name} p50 {} p99 {} ({})",
                    ms(percentile(v, 0.5)),
                    ms(percentile(v, 0.99)),
                    v.len()
                )
            })
            .collect();
        println!(
            "{label}: latency during upgrades by start after SIGHUP: {}",
            parts.join("; ")
        );
    }
}
