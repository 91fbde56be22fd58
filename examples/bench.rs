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

#[path = "../tests/support/ansi.rs"]
mod ansi;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

#[derive(Clone)]
struct Config {
    upgrades: usize,
    mode: String,
    clients: usize,
    slow: usize,
    interval: Duration,
    ballast_mb: usize,
    addr: String,
    baseline: Duration,
    tail: Duration,
    compare_secs: u64,
    compare_runs: usize,
    same_session: bool,
    server_log: Option<String>,
    standby: bool,
}

fn parse_args() -> Result<Config, String> {
    let mut c = Config {
        upgrades: 20,
        mode: "close".into(),
        clients: 16,
        slow: 4,
        interval: Duration::from_millis(200),
        ballast_mb: 0,
        addr: "127.0.0.1:18080".into(),
        baseline: Duration::from_secs(3),
        tail: Duration::ZERO,
        compare_secs: 0,
        compare_runs: 5,
        same_session: false,
        server_log: None,
        standby: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--same-session" {
            c.same_session = true;
            continue;
        }
        if flag == "--standby" {
            c.standby = true;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: {value:?} is not a number"))
        };
        match flag.as_str() {
            "--upgrades" => c.upgrades = num()? as usize,
            "--compare-runs" => c.compare_runs = (num()? as usize).max(1),
            "--mode" if ["close", "keepalive", "none"].contains(&value.as_str()) => c.mode = value,
            "--clients" => c.clients = num()? as usize,
            "--slow" => c.slow = num()? as usize,
            "--interval-ms" => c.interval = Duration::from_millis(num()?),
            "--ballast-mb" => c.ballast_mb = num()? as usize,
            "--addr" => c.addr = value,
            "--baseline-secs" => c.baseline = Duration::from_secs(num()?),
            "--tail-secs" => c.tail = Duration::from_secs(num()?),
            "--compare-secs" => c.compare_secs = num()?,
            "--server-log" => c.server_log = Some(value),
            _ => return Err(format!("unknown option {flag} {value}")),
        }
    }
    if !c.addr.starts_with("127.")
        && !c.addr.starts_with("[::1]")
        && !c.addr.starts_with("localhost")
    {
        return Err("--addr must be a loopback address".into());
    }
    Ok(c)
}

#[derive(Default)]
struct Stats {
    ok: u64,
    connect: u64,
    no_response: u64,
    bad_status: u64,
    other: u64,
    idle_close_races: u64,
    /// (start, latency)
    latencies: Vec<(Instant, Duration)>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.ok += o.ok;
        self.connect += o.connect;
        self.no_response += o.no_response;
        self.bad_status += o.bad_status;
        self.other += o.other;
        self.idle_close_races += o.idle_close_races;
        self.latencies.extend(o.latencies);
    }
    fn failed(&self) -> u64 {
        self.connect + self.no_response + self.bad_status + self.other
    }
}

enum Outcome {
    Ok { close: bool },
    NoResponse,
    BadStatus,
    Other,
}

/// Sends one request on `stream` and reads the whole response.
fn exchange(stream: &mut BufReader<TcpStream>, path: &str, keepalive: bool) -> Outcome {
    let conn = if keepalive { "keep-alive" } else { "close" };
    let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: {conn}\r\n\r\n");
    if stream.get_mut().write_all(req.as_bytes()).is_err() {
        return Outcome::NoResponse;
    }
    let mut status = String::new();
    match stream.read_line(&mut status) {
        Ok(0) | Err(_) => return Outcome::NoResponse,
        Ok(_) => {}
    }
    if !status.starts_with("HTTP/1.1 200") {
        return Outcome::BadStatus;
    }
    let (mut length, mut close) = (0usize, false);
    loop {
        let mut line = String::new();
        match stream.read_line(&mut line) {
            Ok(0) | Err(_) => return Outcome::Other,
            Ok(_) => {}
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if l == "connection: close" {
            close = true;
        }
    }
    let mut body = vec![0u8; length];
    if stream.read_exact(&mut body).is_err() || !body.starts_with(b"hello from") {
        return Outcome::Other;
    }
    Outcome::Ok { close }
}

fn client(addr: String, path: &'static str, keepalive: bool, stop: Arc<AtomicBool>) -> Stats {
    let mut s = Stats::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let reused = conn.is_some();
        let mut stream = match conn.take() {
            Some(c) => c,
            None => match TcpStream::connect(&addr) {
                Ok(c) => {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                    BufReader::new(c)
                }
                Err(_) => {
                    s.connect += 1;
                    continue;
                }
            },
        };
        match exchange(&mut stream, path, keepalive) {
            Outcome::Ok { close } => {
                s.ok += 1;
                // The slow requests take 200 ms by design: latency figures are the short ones'.
                if path == "/" {
                    s.latencies.push((started, started.elapsed()));
                }
                if keepalive && !close {
                    conn = Some(stream);
                }
            }
            // On a reused keep-alive connection, a close without a response is the race between
            // the server closing an idle connection and our next request (retried, as HTTP
            // clients do for idempotent requests; counted apart).
            Outcome::NoResponse if reused => s.idle_close_races += 1,
            Outcome::NoResponse => s.no_response += 1,
            Outcome::BadStatus => s.bad_status += 1,
            Outcome::Other => s.other += 1,
        }
    }
    s
}

fn run_load(c: &Config, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Stats>> {
    let mut handles = Vec::new();
    if c.mode == "none" {
        return handles;
    }
    let keepalive = c.mode == "keepalive";
    for i in 0..c.clients + c.slow {
        let path = if i < c.clients { "/" } else { "/sleep/200" };
        let (addr, stop) = (c.addr.clone(), stop.clone());
        handles.push(std::thread::spawn(move || {
            client(addr, path, keepalive, stop)
        }));
    }
    handles
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn read_pid(path: &PathBuf) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    let _ = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG));
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp as tracing-subscriber writes it
/// (`2026-11-25T16:30:39.123456Z`).
fn parse_utc(ts: &str) -> Option<std::time::SystemTime> {
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<u64>());
    let (h, min, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let nanos: u64 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's civil algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let secs = days * 86_400 + h * 3600 + min * 60 + s;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

/// When process `pid` logged that it was ready: flip logs `ready pid=N` right after it wrote the
/// pid file and told its parent, with a microsecond clock (a file's mtime comes from the
/// kernel's coarse clock, up to a tick, 4 ms here, behind).
fn ready_logged_at(log: &std::path::Path, pid: i32) -> Option<std::time::SystemTime> {
    let text = std::fs::read_to_string(log).ok()?;
    let needle = format!("pid={pid} ");
    ansi::strip(&text).lines().find_map(|line| {
        let ready = line.contains(" ready ") && line.contains(&needle);
        ready.then(|| parse_utc(line.split_whitespace().next()?))?
    })
}

fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    None
}

fn print_stats(label: &str, s: &Stats, elapsed: Duration, windows: &[(Instant, Instant)]) {
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
        s.ok,
        s.ok as f64 / elapsed.as_secs_f64(),
        s.failed(),
        s.connect,
        s.no_response,
        s.bad_status,
        s.other,
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

/// The standby's pid and memory in KiB: (pid, resident, private). Most of its resident pages
/// are the binary's code, shared with the serving process; private ones are its own cost.
fn standby_kib(server: i32) -> Option<(i32, u64, u64)> {
    let children =
        std::fs::read_to_string(format!("/proc/{server}/task/{server}/children")).ok()?;
    let standby: i32 = children.split_whitespace().next()?.parse().ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{standby}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = rollup.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((
        standby,
        field("Rss:")?,
        field("Private_Clean:")? + field("Private_Dirty:")?,
    ))
}

/// Resident memory of a process in KiB: (anonymous, file-backed).
fn rss_kib(pid: i32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("RssAnon:")?, field("RssFile:")?))
}

/// A command that starts a server binary, in a session of its own unless `--same-session`.
///
/// A server runs as a service: its own cgroup under systemd, or its own session (and so, with
/// the kernel's autogroup scheduling, its own share of the CPU) when started by a daemon
/// launcher. The load generator stands in for clients on other machines; in the server's
/// session, its many busy threads would outnumber the server's and take CPU from it, which
/// measures the scheduler, not the server.
fn server_command(c: &Config, exe: &std::path::Path) -> Command {
    let mut cmd = Command::new(exe);
    if !c.same_session {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs between fork and exec and only calls setsid(2), which is
        // async-signal-safe and touches no memory of this process.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(drop)
                    .map_err(std::io::Error::from)
            });
        }
    }
    cmd
}

/// What a steady-state run measured: requests per second, (anonymous, file-backed) RSS in KiB
/// after the load, and the standby's (resident, private) KiB when there is one.
type Steady = (f64, (u64, u64), Option<(u64, u64)>);

/// Steady-state load against one server binary.
fn steady(c: &Config, exe: &std::path::Path, addr: &str, use_wrk: bool) -> Result<Steady, String> {
    // A server left over from an interrupted run would answer in place of this one.
    drop(
        std::net::TcpListener::bind(addr)
            .map_err(|e| format!("{addr} is taken ({e}): a server left over from another run?"))?,
    );
    let server = server_command(c, exe)
        .env("HTTP_ADDR", addr)
        .env("FLIP_PID_FILE", "")
        .env("FLIP_STANDBY", if c.standby { "1" } else { "0" })
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", exe.display()))?;
    let pid = server.id() as i32;
    wait_until(Duration::from_secs(30), || TcpStream::connect(addr).is_ok())
        .ok_or("the server did not start")?;
    if !matches!(
        waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)),
        Ok(nix::sys::wait::WaitStatus::StillAlive)
    ) {
        return Err(format!("{} exited at start", exe.display()));
    }
    let rate = match use_wrk {
        true => wrk(c, addr).ok_or("wrk printed no Requests/sec figure")?,
        false => {
            let mut load = c.clone();
            load.addr = addr.to_owned();
            load.slow = 0;
            let stop = Arc::new(AtomicBool::new(false));
            let started = Instant::now();
            let handles = run_load(&load, &stop);
            std::thread::sleep(Duration::from_secs(c.compare_secs));
            stop.store(true, Ordering::SeqCst);
            let mut total = Stats::default();
            for h in handles {
                total.merge(h.join().map_err(|_| "a client panicked")?);
            }
            total.ok as f64 / started.elapsed().as_secs_f64()
        }
    };
    let rss = rss_kib(pid).unwrap_or((0, 0));
    let standby = standby_kib(pid);
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let _ = waitpid(Pid::from_raw(pid), None);
    if let Some((standby, ..)) = standby {
        // It exits once its parent is gone, and comes to us (the subreaper) to be reaped.
        wait_until(Duration::from_secs(10), || {
            !matches!(
                waitpid(Pid::from_raw(standby), Some(WaitPidFlag::WNOHANG)),
                Ok(nix::sys::wait::WaitStatus::StillAlive)
            )
        });
    }
    Ok((rate, rss, standby.map(|(_, rss, private)| (rss, private))))
}

/// Requests per second that `wrk` measured against `addr`, with as many
/// connections as the benchmark has clients. wrk spends far less CPU per request than the
/// benchmark's blocking clients, so more of the two cores measure the server.
fn wrk(c: &Config, addr: &str) -> Option<f64> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", &format!("-c{}", c.clients.max(2))])
        .arg(format!("-d{}s", c.compare_secs))
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    if c.mode == "close" {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd.arg(format!("http://{addr}/")).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("Requests/sec:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn which_wrk() -> bool {
    Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn compare(c: &Config, exe: &std::path::Path) -> Result<(), String> {
    let mut plain = exe.to_owned();
    plain.set_file_name("plain");
    if !plain.exists() {
        return Err(format!(
            "{} is missing: run `cargo build --release --examples`",
            plain.display()
        ));
    }
    let addr = "127.0.0.1:18181";
    // Decided once, so that every run of both servers is measured the same way.
    let use_wrk = which_wrk();
    // Alternate, and swap the order every other pair (plain, flip, flip, plain, ...), so that
    // neither always runs first or on a warmer machine.
    let (mut flip_rates, mut plain_rates, mut flip_rss, mut plain_rss, mut standbys) =
        (vec![], vec![], vec![], vec![], vec![]);
    for run in 0..c.compare_runs {
        for flip_turn in [run % 2 == 1, run % 2 == 0] {
            if flip_turn {
                let (r, m, standby) = steady(c, exe, addr, use_wrk)?;
                flip_rates.push(r);
                flip_rss.push(m);
                standbys.extend(standby);
            } else {
                let (r, m, _) = steady(c, &plain, addr, use_wrk)?;
                plain_rates.push(r);
                plain_rss.push(m);
            }
        }
    }
    // The median: on a shared 2-core machine single runs swing by a quarter either way.
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let avg_kib = |v: &[(u64, u64)], anon: bool| {
        v.iter().map(|m| if anon { m.0 } else { m.1 }).sum::<u64>() as f64 / v.len() as f64
    };
    let (fr, pr) = (median(&flip_rates), median(&plain_rates));
    let runs = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "steady state runs (req/s, {}): flip {}; plain hyper {}",
        if use_wrk { "wrk" } else { "built-in clients" },
        runs(&flip_rates),
        runs(&plain_rates)
    );
    println!(
        "steady state ({} mode, {} clients, {} s x{} each, alternating), medians: flip {:.0} req/s, plain hyper {:.0} req/s, ratio {:.3}",
        c.mode,
        c.clients,
        c.compare_secs,
        c.compare_runs,
        fr,
        pr,
        fr / pr
    );
    let (fa, pa) = (avg_kib(&flip_rss, true), avg_kib(&plain_rss, true));
    let (ff, pf) = (avg_kib(&flip_rss, false), avg_kib(&plain_rss, false));
    println!(
        "RSS after load: flip {:.0} KiB, plain hyper {:.0} KiB, overhead {:.0} KiB (anonymous {:.0} -> {:.0}, +{:.0} KiB; file-backed code {:.0} -> {:.0}, +{:.0} KiB)",
        fa + ff,
        pa + pf,
        (fa + ff) - (pa + pf),
        pa,
        fa,
        fa - pa,
        pf,
        ff,
        ff - pf,
    );
    if c.standby {
        if standbys.is_empty() {
            return Err("--standby: the server kept no standby process".into());
        }
        let n = standbys.len() as f64;
        let rss = standbys.iter().map(|s| s.0).sum::<u64>() as f64 / n;
        let private = standbys.iter().map(|s| s.1).sum::<u64>() as f64 / n;
        println!(
            "standby process: RSS {rss:.0} KiB, of which {private:.0} KiB private (the rest is code shared with the server); flip + standby overhead {:.0} KiB",
            (fa + ff) - (pa + pf) + private
        );
    }
    Ok(())
}

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
    if c.mode != "none" && !c.baseline.is_zero() {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let handles = run_load(&c, &stop);
        std::thread::sleep(c.baseline);
        stop.store(true, Ordering::SeqCst);
        let mut total = Stats::default();
        for h in handles {
            total.merge(h.join().map_err(|_| "a client panicked")?);
        }
        print_stats("baseline (no upgrades)", &total, started.elapsed(), &[]);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles = run_load(&c, &stop);
    let windows = Arc::new(Mutex::new(Vec::new()));
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
        windows.lock().map_err(|_| "lock")?.push((t0, end));
        to_ready.push(ready);
        if exited.is_some() {
            // Seen by polling every 50 µs from the SIGHUP on.
            to_exit.push(end - t0);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = Stats::default();
    for h in handles {
        total.merge(h.join().map_err(|_| "a client panicked")?);
    }
    let elapsed = started.elapsed();
    to_ready.sort();
    to_exit.sort();
    if c.mode != "none" {
        print_stats(
            "upgrades",
            &total,
            elapsed,
            &windows.lock().map_err(|_| "lock")?,
        );
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
    if c.server_log.is_some() {
        println!("server log: {}", log_path.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
