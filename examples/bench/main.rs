//! Upgrade benchmark: drives HTTP load at the `http` example while upgrading it again and again,
//! and prints what was lost and how long upgrades took, beside a steady-state run without
//! upgrades in the same command.
//!
//! ```text
//! cargo build --release --examples
//! ./target/release/examples/bench --upgrades 20 --mode close
//! ./target/release/examples/bench --upgrades 20 --mode keepalive
//! ./target/release/examples/bench --upgrades 20 --mode none   # upgrades only: bring your own load (wrk)
//! ```
//!
//! Options: `--upgrades N` (20), `--mode close|keepalive|none` (close: a new connection per
//! request), `--clients N` (16 short-request clients), `--slow N` (4 clients of 200 ms requests),
//! `--interval-ms N` (200: pause between upgrades), `--ballast-mb N` (0), `--addr HOST:PORT`
//! (127.0.0.1:18080), `--baseline-secs N` (3), `--tail-secs N` (0: how long the server
//! keeps serving after the last upgrade, for an outside load generator), `--compare-secs N` (0:
//! also measure steady-state throughput, with `wrk` when installed, and RSS of the `http`
//! example against the `plain` example, the same server on hyper without flip, in 5
//! alternating runs of N seconds each, and print the ratios of the medians, with each server's
//! CPU time per request), `--compare-runs N`
//! (5: how many runs of each), `--listeners N` (1: the HTTP listener and N-1 unix sockets),
//! `--idle N` (0: idle keep-alive connections held open across each upgrade), `--peers R`
//! (compare with servers on ecdysis and shellflip in R interleaved rounds: see `peers.rs`),
//! `--peers-dir DIR` (where those servers are), `--floor N` (no server: what registering N
//! listeners with tokio and spawning a task each costs any tokio server, see `floor.rs`),
//! `--deploy-lead-ms N` (each upgrade runs a binary new on disk, put in place N ms before the
//! `SIGHUP`, as a deploy does: see `deploy.rs`), `--server flip|flip-lean|ecdysis|shellflip` (the
//! server of a single run; flip's `http` example by default, `flip-lean` the HTTP-only flip
//! server of `bench/peers`, built like the peers'),
//! `--same-session` (run the server in this program's session instead of one of its own),
//! `--server-log FILTER` (the server's `RUST_LOG`; its log is kept), `--no-standby` (run the server
//! with `FLIP_STANDBY=0`: each upgrade starts the new process at `SIGHUP`; by default, as
//! under `#[flip::main]`, each upgrade hands over to a standby process started ahead of time,
//! and the comparison also prints the standby's memory). Traffic goes to loopback
//! only and every loop is bounded by the number of upgrades and a deadline.

mod args;
mod deploy;
mod floor;
mod idle;
mod peers;
mod process;
mod report;
mod run;
mod steady;

use args::parse_args;
use report::{ms, percentile, print_stats};
use run::{Server, upgrade_run};
use steady::compare;

fn main() -> Result<(), String> {
    let c = parse_args()?;
    if let Some(n) = c.floor {
        return floor::floor(n);
    }
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("subreaper: {e}"))?;
    let bench = std::env::current_exe().map_err(|e| e.to_string())?;
    if let Some(rounds) = c.peers {
        return peers::compare(&c, &bench, rounds);
    }
    let server = match c.server.as_str() {
        "flip" => Server::flip(&bench, c.standby)?,
        "flip-lean" => Server::flip_lean(&peers::dir(&c, &bench), c.standby)?,
        peer => Server::peer(&peers::dir(&c, &bench), peer)?,
    };
    if c.compare_secs > 0 && c.server != "flip" {
        return Err(format!(
            "--compare-secs compares flip's example with plain hyper, not {}",
            c.server
        ));
    }
    if c.compare_secs > 0 && c.mode != "none" {
        compare(&c, &server.exe)?;
    }
    println!(
        "bench: mode {}, {} clients + {} slow (200 ms), {} upgrades, ballast {} MiB, standby {}, {} listeners, {} idle connections, {}{}",
        c.mode,
        c.clients,
        c.slow,
        c.upgrades,
        c.ballast_mb,
        if c.standby { "on" } else { "off" },
        c.listeners,
        c.idle,
        c.addr,
        match c.deploy_lead {
            Some(lead) => format!(", a new binary {} ms before each SIGHUP", lead.as_millis()),
            None => String::new(),
        }
    );
    let f = upgrade_run(&c, &server, true)?;
    if let Some(total) = &f.load {
        print_stats("upgrades", total, f.elapsed, &f.windows);
    }
    println!(
        "upgrades: {} succeeded, {} failed; SIGHUP to new process ready p50 {} p99 {}; SIGHUP to old process exit p50 {} p99 {}",
        f.to_ready.len(),
        f.failed_upgrades,
        ms(percentile(&f.to_ready, 0.5)),
        ms(percentile(&f.to_ready, 0.99)),
        ms(percentile(&f.to_exit, 0.5)),
        ms(percentile(&f.to_exit, 0.99)),
    );
    if let Some(idle) = &f.idle {
        println!("{idle}");
    }
    if let (Some(a), Some(b)) = (f.first_gen, f.last_gen) {
        println!(
            "serving process after upgrade 1 and after upgrade {}: {} -> {} descriptors, anonymous {} -> {} KiB, file-backed {} -> {} KiB",
            c.upgrades, a.0, b.0, a.1, b.1, a.2, b.2
        );
    }
    Ok(())
}
