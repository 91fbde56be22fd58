//! The check's timeline as SVG: each request's latency over time (log scale), a band for each
//! upgrade, failures in red.

use std::fmt::Write as _;
use std::time::Duration;

use super::CheckReport;

const W: f64 = 1000.0;
const H: f64 = 360.0;
const LEFT: f64 = 60.0;
const BOTTOM: f64 = 40.0;
const TOP: f64 = 30.0;
/// At most this many request dots; a longer run is sampled evenly.
const MAX_DOTS: usize = 4_000;

pub(super) fn svg(r: &CheckReport) -> String {
    let total = r.duration.as_secs_f64().max(0.001);
    let x = |d: Duration| LEFT + (W - LEFT - 10.0) * (d.as_secs_f64() / total).min(1.0);
    // Latency from 0.01 ms to 10 s, logarithmic.
    let (lo, hi) = (1e-5_f64.log10(), 10.0_f64.log10());
    let y = |d: Duration| {
        let v = d.as_secs_f64().max(1e-5).log10().clamp(lo, hi);
        TOP + (H - TOP - BOTTOM) * (1.0 - (v - lo) / (hi - lo))
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11"><rect width="{W}" height="{H}" fill="white"/>"#
    );
    for (start, end) in r.windows() {
        let (a, b) = (x(start - r.started), x(end - r.started));
        let _ = write!(
            s,
            r##"<rect x="{a:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#dde8ff"/><line x1="{a:.1}" y1="{TOP}" x2="{a:.1}" y2="{:.1}" stroke="#3060c0" stroke-width="1"/>"##,
            (b - a).max(1.0),
            H - TOP - BOTTOM,
            H - BOTTOM
        );
    }
    let step = (r.load.latencies.len() / MAX_DOTS).max(1);
    for (start, latency) in r.load.latencies.iter().step_by(step) {
        let _ = write!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="1" fill="#444"/>"##,
            x(*start - r.started),
            y(*latency)
        );
    }
    for at in &r.load.failure_times {
        let _ = write!(
            s,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="#e02020" stroke-width="2"/>"##,
            x(*at - r.started),
            H - BOTTOM
        );
    }
    for (label, d) in [
        ("0.1 ms", Duration::from_micros(100)),
        ("1 ms", Duration::from_millis(1)),
        ("10 ms", Duration::from_millis(10)),
        ("100 ms", Duration::from_millis(100)),
        ("1 s", Duration::from_secs(1)),
    ] {
        let yy = y(d);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{W}" y2="{yy:.1}" stroke="#eee"/><text x="5" y="{:.1}">{label}</text>"##,
            yy + 4.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="18">{} requests, {} failed (red), {} keep-alive races; {} upgrades (blue: request to old process exit); latency of each request, log scale</text><text x="{LEFT}" y="{:.1}">0 s</text><text x="{:.1}" y="{:.1}">{total:.1} s</text></svg>"#,
        r.load.answered,
        r.load.failed,
        r.load.idle_close_races,
        r.upgrades.len(),
        H - 10.0,
        W - 60.0,
        H - 10.0
    );
    s
}
