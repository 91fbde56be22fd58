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
//! alternating runs of N seconds each, and print the ratios of the medians), `--compare-runs N`
//! (5: how many runs of each),
//! `--same-session` (run the server in this program's session instead of one of its own),
//! `--server-log FILTER` (the server's `RUST_LOG`; its log is kept), `--standby` (run the server
//! with `FLIP_STANDBY=1`: each upgrade hands over to a process started ahead of time; the
//! comparison then also prints the standby's memory). Traffic goes to loopback
//! only and every loop is bounded by the number of upgrades and a deadline.

mod args;
mod process;
mod report;
mod steady;

use std::process::Stdio;
use std::time::{Duration, Instant};

use flip_suite::load::Load;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use args::parse_args;
use process::{
    alive, read_pid, ready_logged_at, reap_orphans, rss_kib, server_command, wait_until,
};
use report::{ms, percentile, print_stats};
use steady::compare;

fn main() -> Result<(), String> {
    let c = parse_args()?;
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("subreaper: {e}"))?;
    let mut exe = std::env::current_exe().map_err(|e| e.to_string())?;
    exe.set_file_name("http");
    if !exe.exists() {
        return Err(format!(
            "{} is missing: run `cargo build --release --examples` first",
            exe.display()
        ));
    }
    if c.compare_secs > 0 && c.mode != "none" {
        compare(&c, &exe)?;
    }
    let dir = std::env::temp_dir().join(format!("flip-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let pid_file = dir.join("http.pid");
    let log_path = dir.join("log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    drop(std::net::TcpListener::bind(&c.addr).map_err(|e| {
        format!(
            "{} is taken ({e}): a server left over from another run?",
            c.addr
        )
    })?);
    let first = server_command(&c, &exe)
        .env("HTTP_ADDR", &c.addr)
        .env("FLIP_PID_FILE", &pid_file)
        .env("BALLAST_MB", c.ballast_mb.to_string())
        .env("FLIP_STANDBY", if c.standby { "1" } else { "0" })
        // The `ready` line, with its timestamp, is what the upgrade time is read from.
        .env(
            "RUST_LOG",
            c.server_log
                .as_deref()
                .unwrap_or("warn,flip::bootstrap=info"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", exe.display()))?;
    let first_pid = first.id() as i32;
    wait_until(Duration::from_secs(30), || {
        read_pid(&pid_file) == Some(first_pid)
    })
    .ok_or("the server did not become ready")?;
    println!(
        "bench: mode {}, {} clients + {} slow (200 ms), {} upgrades, ballast {} MiB, standby {}, {}",
        c.mode,
        c.clients,
        c.slow,
        c.upgrades,
        c.ballast_mb,
        if c.standby { "on" } else { "off" },
        c.addr
    );

    // Baseline: the same load, no upgrade.
    if let Some(config) = c.load(&c.addr, c.slow, c.baseline + Duration::from_secs(60))
        && !c.baseline.is_zero()
    {
        let started = Instant::now();
        let load = Load::run(config);
        std::thread::sleep(c.baseline);
        let total = load.finish();
        print_stats("baseline (no upgrades)", &total, started.elapsed(), &[]);
    }

    // Bounded: every upgrade waits at most 60 s for the new pid and 120 s for the old exit.
    let limit = (c.interval + Duration::from_secs(190)) * (c.upgrades as u32 + 1);
    let started = Instant::now();
    let load = c.load(&c.addr, c.slow, limit).map(Load::run);
    let mut windows = Vec::new();
    let (mut to_ready, mut to_exit) = (Vec::new(), Vec::new());
    let mut failures = 0;
    for _ in 0..c.upgrades {
        std::thread::sleep(c.interval);
        let old = read_pid(&pid_file).ok_or("no pid in the pid file")?;
        if c.ballast_mb > 0 {
            // The ballast is taken in the background after start: upgrade a server that holds
            // it, not one still filling it.
            let want = c.ballast_mb as u64 * 1024;
            wait_until(Duration::from_secs(60), || {
                rss_kib(old).is_some_and(|(anon, _)| anon >= want)
            })
            .ok_or(format!("pid {old} never held its {} MiB", c.ballast_mb))?;
        }
        let t0 = Instant::now();
        let sent = std::time::SystemTime::now();
        kill(Pid::from_raw(old), Signal::SIGHUP).map_err(|e| format!("kill -HUP {old}: {e}"))?;
        let changed = wait_until(Duration::from_secs(60), || {
            read_pid(&pid_file).is_some_and(|p| p != old)
        });
        if changed.is_none() {
            failures += 1;
            continue;
        }
        // When the new process said it was ready, not when this loop, which competes for the
        // same CPU, happened to look.
        let new = read_pid(&pid_file).unwrap_or(0);
        let mut logged = None;
        wait_until(Duration::from_secs(5), || {
            logged = ready_logged_at(&log_path, new);
            logged.is_some()
        });
        let Some(ready) = logged.and_then(|at| at.duration_since(sent).ok()) else {
            return Err(format!(
                "no ready line for pid {new} in {}",
                log_path.display()
            ));
        };
        let exited = wait_until(Duration::from_secs(120), || !alive(old));
        let end = Instant::now();
        windows.push((t0, end));
        to_ready.push(ready);
        if exited.is_some() {
            // Seen by polling every 50 µs from the SIGHUP on.
            to_exit.push(end - t0);
        }
    }
    let total = load.map(Load::finish);
    let elapsed = started.elapsed();
    to_ready.sort();
    to_exit.sort();
    if let Some(total) = &total {
        print_stats("upgrades", total, elapsed, &windows);
    }
    println!(
        "upgrades: {} succeeded, {} failed; SIGHUP to new process ready p50 {} p99 {}; SIGHUP to old process exit p50 {} p99 {}",
        to_ready.len(),
        failures,
        ms(percentile(&to_ready, 0.5)),
        ms(percentile(&to_ready, 0.99)),
        ms(percentile(&to_exit, 0.5)),
        ms(percentile(&to_exit, 0.99)),
    );
    // Keep serving a while, for an outside load generator (wrk) that ends after the upgrades.
    std::thread::sleep(c.tail);
    if let Some(pid) = read_pid(&pid_file) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        wait_until(Duration::from_secs(10), || !alive(pid));
    }
    reap_orphans();
    if c.server_log.is_some() {
        println!("server log: {}", log_path.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
