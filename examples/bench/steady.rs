//! Steady-state throughput and memory of the `http` example against `plain` (hyper without
//! flip), alternating runs.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flip_suite::load::{Load, LoadConfig};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use crate::args::Config;
use crate::process::{cpu_time, rss_kib, server_command, standby_kib, wait_until};

/// What a steady-state run measured.
struct Steady {
    /// Requests per second.
    rate: f64,
    /// The server's CPU time (user and system) per request answered.
    cpu_per_request: Duration,
    /// (anonymous, file-backed) RSS in KiB after the load.
    rss: (u64, u64),
    /// The standby's (resident, private) KiB, when there is one.
    standby: Option<(u64, u64)>,
}

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
    let cpu_before = cpu_time(pid).ok_or("cannot read the server's CPU time")?;
    let (rate, answered) = match use_wrk {
        true => wrk(c, addr).ok_or("wrk printed no Requests/sec figure")?,
        false => {
            let run = Duration::from_secs(c.compare_secs);
            let config: LoadConfig = c
                .load(addr, 0, run + Duration::from_secs(60))
                .ok_or("steady state needs a load mode")?;
            let started = Instant::now();
            let load = Load::run(config);
            std::thread::sleep(run);
            let total = load.finish();
            (
                total.answered as f64 / started.elapsed().as_secs_f64(),
                total.answered,
            )
        }
    };
    let cpu = cpu_time(pid).ok_or("cannot read the server's CPU time")? - cpu_before;
    let cpu_per_request = cpu / u32::try_from(answered.max(1)).unwrap_or(u32::MAX);
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
    Ok(Steady {
        rate,
        cpu_per_request,
        rss,
        standby: standby.map(|(_, rss, private)| (rss, private)),
    })
}

/// Requests per second that `wrk` measured against `addr`, and how many it made, with as many
/// connections as the benchmark has clients. wrk spends far less CPU per request than the
/// benchmark's blocking clients, so more of the two cores measure the server.
fn wrk(c: &Config, addr: &str) -> Option<(f64, u64)> {
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
    let rate = line.split_whitespace().nth(1)?.parse().ok()?;
    // "  123456 requests in 3.00s, 12.34MB read"
    let line = text.lines().find(|l| l.contains(" requests in "))?;
    let count = line.split_whitespace().next()?.parse().ok()?;
    Some((rate, count))
}

fn which_wrk() -> bool {
    Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

pub fn compare(c: &Config, exe: &std::path::Path) -> Result<(), String> {
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
    let (mut flip_cpu, mut plain_cpu) = (vec![], vec![]);
    for run in 0..c.compare_runs {
        for flip_turn in [run % 2 == 1, run % 2 == 0] {
            if flip_turn {
                let s = steady(c, exe, addr, use_wrk)?;
                flip_rates.push(s.rate);
                flip_cpu.push(s.cpu_per_request.as_secs_f64() * 1e6);
                flip_rss.push(s.rss);
                standbys.extend(s.standby);
            } else {
                let s = steady(c, &plain, addr, use_wrk)?;
                plain_rates.push(s.rate);
                plain_cpu.push(s.cpu_per_request.as_secs_f64() * 1e6);
                plain_rss.push(s.rss);
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
    let (fc, pc) = (median(&flip_cpu), median(&plain_cpu));
    println!(
        "server CPU time per request (user + system), medians: flip {fc:.2} us, plain hyper {pc:.2} us, ratio {:.3} (runs: flip {}; plain {})",
        fc / pc,
        flip_cpu
            .iter()
            .map(|c| format!("{c:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        plain_cpu
            .iter()
            .map(|c| format!("{c:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
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
            return Err(
                "the server kept no standby process (turn it off with --no-standby)".into(),
            );
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
