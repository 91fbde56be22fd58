//! `--peers R`: the same load and upgrades against flip's `http` example (without and with a
//! standby) and against the servers of `examples/bench/peers` on ecdysis and shellflip, in R
//! rounds that interleave the servers (the order rotates each round, so that none always runs
//! first or on a warmer machine). Every figure is printed beside its ratio to the best peer's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::args::Config;
use crate::report::percentile;
use crate::run::{Figures, Server, upgrade_run};

/// What the rounds of one server added up to.
#[derive(Default)]
struct Pooled {
    /// Each round's p50 of SIGHUP to ready.
    round_p50: Vec<Duration>,
    to_ready: Vec<Duration>,
    to_exit: Vec<Duration>,
    answered: u64,
    failed: u64,
    races: u64,
    failed_upgrades: usize,
}

impl Pooled {
    fn add(&mut self, f: Figures) {
        self.round_p50.push(percentile(&f.to_ready, 0.5));
        self.to_ready.extend(f.to_ready);
        self.to_exit.extend(f.to_exit);
        if let Some(l) = f.load {
            self.answered += l.answered;
            self.failed += l.failed;
            self.races += l.idle_close_races;
        }
        self.failed_upgrades += f.failed_upgrades;
    }
}

/// Where the peers' servers are: `--peers-dir`, or `target/peers/release` beside the
/// `target/release/examples` of this benchmark.
pub fn dir(c: &Config, bench: &Path) -> PathBuf {
    c.peers_dir.clone().unwrap_or_else(|| {
        let target = bench.ancestors().nth(3).unwrap_or(Path::new("target"));
        target.join("peers").join("release")
    })
}

pub fn compare(c: &Config, bench: &Path, rounds: usize) -> Result<(), String> {
    let dir = dir(c, bench);
    let servers = [
        Server::flip(bench, true)?,
        Server::flip(bench, false)?,
        Server::peer(&dir, "ecdysis")?,
        Server::peer(&dir, "shellflip")?,
    ];
    let peers = 2..4;
    println!(
        "bench --peers: mode {}, {} clients + {} slow (200 ms), {} upgrades per run, one upgrade every {} ms, {} rounds",
        c.mode,
        c.clients,
        c.slow,
        c.upgrades,
        c.interval.as_millis(),
        rounds
    );
    let mut pooled: Vec<Pooled> = servers.iter().map(|_| Pooled::default()).collect();
    for round in 0..rounds {
        for k in 0..servers.len() {
            let i = (k + round) % servers.len();
            let f = upgrade_run(c, &servers[i], false)?;
            println!(
                "round {}: {:<14} ready p50 {:.2} ms, {} failed, {} races",
                round + 1,
                servers[i].name,
                percentile(&f.to_ready, 0.5).as_secs_f64() * 1e3,
                f.load.as_ref().map_or(0, |l| l.failed),
                f.load.as_ref().map_or(0, |l| l.idle_close_races),
            );
            pooled[i].add(f);
        }
    }
    for p in &mut pooled {
        p.round_p50.sort();
        p.to_ready.sort();
        p.to_exit.sort();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // A figure of every server, and each one's ratio to the best (lowest) peer's.
    let row = |label: &str, value: &dyn Fn(&Pooled) -> f64, unit: &str| {
        let best = peers
            .clone()
            .map(|i| value(&pooled[i]))
            .fold(f64::INFINITY, f64::min);
        let cells: Vec<String> = pooled
            .iter()
            .map(|p| {
                let v = value(p);
                match best > 0.0 && best.is_finite() {
                    true => format!("{v:.2}{unit} ({:.2}x)", v / best),
                    false => format!("{v:.2}{unit}"),
                }
            })
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
    println!();
    println!(
        "| mode {}, {} rounds x {} upgrades; (ratio to the best peer) | {} |",
        c.mode,
        rounds,
        c.upgrades,
        names.join(" | ")
    );
    println!("|---|{}", "---|".repeat(names.len()));
    row(
        "SIGHUP to ready p50 (median of the rounds' p50s)",
        &|p| ms(percentile(&p.round_p50, 0.5)),
        " ms",
    );
    row(
        "SIGHUP to ready p99 (all rounds)",
        &|p| ms(percentile(&p.to_ready, 0.99)),
        " ms",
    );
    row(
        "SIGHUP to old exit p50",
        &|p| ms(percentile(&p.to_exit, 0.5)),
        " ms",
    );
    let count = |label: &str, value: &dyn Fn(&Pooled) -> String| {
        let cells: Vec<String> = pooled.iter().map(value).collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    if c.mode != "none" {
        count("answered", &|p| p.answered.to_string());
        count("failed requests / keep-alive races", &|p| {
            format!("{} / {}", p.failed, p.races)
        });
    }
    count("upgrades without a new pid", &|p| {
        p.failed_upgrades.to_string()
    });
    Ok(())
}
