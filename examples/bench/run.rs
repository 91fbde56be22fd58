//! One upgrade run: start a server, drive load at it, upgrade it N times, and collect what the
//! load saw and how long each upgrade took.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use flip_suite::load::{Load, Report};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::args::Config;
use crate::deploy::Releases;
use crate::idle::IdleSet;
use crate::process::{
    alive, fd_count, read_pid, ready_logged_at, reap_orphans, rss_kib, server_command, wait_until,
};
use crate::report::print_stats;

/// A server binary to upgrade, and the environment that configures it.
#[derive(Clone)]
pub struct Server {
    /// What the tables call it.
    pub name: String,
    pub exe: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Server {
    /// flip's `http` example beside this benchmark, with or without a standby.
    pub fn flip(bench: &Path, standby: bool) -> Result<Server, String> {
        let exe = sibling(bench, "http")?;
        Ok(Server {
            name: if standby { "flip" } else { "flip, no standby" }.into(),
            exe,
            env: vec![(
                "FLIP_STANDBY".into(),
                if standby { "1" } else { "0" }.into(),
            )],
        })
    }

    /// flip's server of `examples/bench/peers`, built like the peers' (HTTP only), in `dir`.
    pub fn flip_lean(dir: &Path, standby: bool) -> Result<Server, String> {
        let mut server = Server::peer(dir, "flip")?;
        server.name = if standby {
            "flip-lean"
        } else {
            "flip-lean, no standby"
        }
        .into();
        server.env = vec![(
            "FLIP_STANDBY".into(),
            if standby { "1" } else { "0" }.into(),
        )];
        Ok(server)
    }

    /// A server of `examples/bench/peers` (`ecdysis` or `shellflip`), in `dir`.
    pub fn peer(dir: &Path, name: &str) -> Result<Server, String> {
        let exe = dir.join(format!("{name}-server"));
        if !exe.exists() {
            return Err(format!(
                "{} is missing: run `cargo build --release --manifest-path examples/bench/peers/Cargo.toml --target-dir target/peers` first",
                exe.display()
            ));
        }
        Ok(Server {
            name: name.into(),
            exe,
            env: Vec::new(),
        })
    }
}

/// The example `name` in the directory of this benchmark's binary.
pub fn sibling(bench: &Path, name: &str) -> Result<PathBuf, String> {
    let mut exe = bench.to_owned();
    exe.set_file_name(name);
    match exe.exists() {
        true => Ok(exe),
        false => Err(format!(
            "{} is missing: run `cargo build --release --examples` first",
            exe.display()
        )),
    }
}

/// What one run measured.
pub struct Figures {
    /// The load during the upgrades (none in mode `none`).
    pub load: Option<Report>,
    pub elapsed: Duration,
    /// Each upgrade's (SIGHUP, old process gone or given up on).
    pub windows: Vec<(Instant, Instant)>,
    /// SIGHUP to the new process's `ready` line, sorted.
    pub to_ready: Vec<Duration>,
    /// SIGHUP to the old process's exit, sorted.
    pub to_exit: Vec<Duration>,
    /// Upgrades after which no new pid appeared within a minute.
    pub failed_upgrades: usize,
    /// (descriptors, anonymous KiB, file-backed KiB) of the serving process after the first
    /// and after the last upgrade: drift across generations.
    pub first_gen: Option<(usize, u64, u64)>,
    pub last_gen: Option<(usize, u64, u64)>,
    /// What the idle keep-alive connections saw, with `--idle N`.
    pub idle: Option<crate::idle::Tally>,
}

/// Starts `server` at `c.addr`, runs the baseline when `baseline` (printed), then the upgrades
/// under load, and stops the server.
pub fn upgrade_run(c: &Config, server: &Server, baseline: bool) -> Result<Figures, String> {
    drop(std::net::TcpListener::bind(&c.addr).map_err(|e| {
        format!(
            "{} is taken ({e}): a server left over from another run?",
            c.addr
        )
    })?);
    let dir = std::env::temp_dir().join(format!("flip-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let log_path = dir.join(format!("{}.log", server.name.replace(", ", "-")));
    let figures = run_in(c, server, baseline, &dir, &log_path);
    // Nothing is left behind, whatever the outcome, unless the log was asked for.
    if c.server_log.is_some() {
        println!("server log: {}", log_path.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    figures
}

/// The run of [`upgrade_run`], in its scratch directory `dir`; the server is stopped on every
/// path out.
fn run_in(
    c: &Config,
    server: &Server,
    baseline: bool,
    dir: &Path,
    log_path: &Path,
) -> Result<Figures, String> {
    let pid_file = dir.join("server.pid");
    let _ = std::fs::remove_file(&pid_file);
    let log = std::fs::File::create(log_path).map_err(|e| e.to_string())?;
    let (mut releases, exe) = match c.deploy_lead {
        Some(_) => {
            let (releases, exe) = Releases::install(dir, &server.exe)?;
            (Some(releases), exe)
        }
        None => (None, server.exe.clone()),
    };
    let mut cmd = server_command(c, &exe);
    cmd.env("HTTP_ADDR", &c.addr)
        .env("FLIP_PID_FILE", &pid_file)
        .env("BALLAST_MB", c.ballast_mb.to_string())
        .env("EXTRA_LISTENERS", c.listeners.saturating_sub(1).to_string())
        .env("EXTRA_LISTENERS_DIR", dir)
        // The `ready` line, with its timestamp, is what the upgrade time is read from.
        .env(
            "RUST_LOG",
            c.server_log
                .as_deref()
                .unwrap_or("warn,flip::bootstrap=info,flip_bench_peers=info"),
        );
    for (k, v) in &server.env {
        cmd.env(k, v);
    }
    let first = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", server.exe.display()))?;
    let first_pid = first.id() as i32;
    let figures = match wait_until(Duration::from_secs(30), || {
        read_pid(&pid_file) == Some(first_pid)
    }) {
        Some(_) => upgrades(c, &pid_file, log_path, baseline, releases.as_mut()),
        None => Err(format!("{} did not become ready", server.name)),
    };
    // The serving process; or the first one, which never became ready.
    let pid = read_pid(&pid_file).unwrap_or(first_pid);
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    wait_until(Duration::from_secs(10), || !alive(pid));
    reap_orphans();
    figures
}

fn upgrades(
    c: &Config,
    pid_file: &Path,
    log_path: &Path,
    baseline: bool,
    mut releases: Option<&mut Releases>,
) -> Result<Figures, String> {
    if baseline
        && !c.baseline.is_zero()
        && let Some(config) = c.load(&c.addr, c.slow, c.baseline + Duration::from_secs(60))
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
    let mut f = Figures {
        load: None,
        elapsed: Duration::ZERO,
        windows: Vec::new(),
        to_ready: Vec::new(),
        to_exit: Vec::new(),
        failed_upgrades: 0,
        first_gen: None,
        last_gen: None,
        idle: None,
    };
    let mut idle = (c.idle > 0).then(|| IdleSet::new(&c.addr));
    let gen_state = |pid: i32| {
        let (anon, file) = rss_kib(pid)?;
        Some((fd_count(pid)?, anon, file))
    };
    for i in 0..c.upgrades {
        std::thread::sleep(c.interval);
        let old = read_pid(pid_file).ok_or("no pid in the pid file")?;
        if i == 1 {
            f.first_gen = gen_state(old);
        }
        if c.ballast_mb > 0 {
            // The ballast is taken in the background after start: upgrade a server that holds
            // it, not one still filling it.
            let want = c.ballast_mb as u64 * 1024;
            wait_until(Duration::from_secs(60), || {
                rss_kib(old).is_some_and(|(anon, _)| anon >= want)
            })
            .ok_or(format!("pid {old} never held its {} MiB", c.ballast_mb))?;
        }
        if let Some(idle) = &mut idle {
            idle.fill(c.idle)?;
        }
        if let (Some(releases), Some(lead)) = (releases.as_deref_mut(), c.deploy_lead) {
            releases.switch()?;
            // The deploy script's pause between the new binary and the reload, not a wait
            // for anything.
            std::thread::sleep(lead);
        }
        let t0 = Instant::now();
        let sent = std::time::SystemTime::now();
        kill(Pid::from_raw(old), Signal::SIGHUP).map_err(|e| format!("kill -HUP {old}: {e}"))?;
        let changed = wait_until(Duration::from_secs(60), || {
            read_pid(pid_file).is_some_and(|p| p != old)
        });
        if changed.is_none() {
            f.failed_upgrades += 1;
            continue;
        }
        // When the new process said it was ready, not when this loop, which competes for the
        // same CPU, happened to look.
        let new = read_pid(pid_file).unwrap_or(0);
        let mut logged = None;
        wait_until(Duration::from_secs(5), || {
            logged = ready_logged_at(log_path, new);
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
        f.windows.push((t0, end));
        f.to_ready.push(ready);
        if exited.is_some() {
            // Seen by polling every 50 µs from the SIGHUP on.
            f.to_exit.push(end - t0);
        }
        if let Some(idle) = &mut idle {
            idle.check();
        }
    }
    f.idle = idle.map(|i| i.tally);
    if let Some(pid) = read_pid(pid_file) {
        f.last_gen = gen_state(pid);
    }
    f.load = load.map(Load::finish);
    f.elapsed = started.elapsed();
    f.to_ready.sort();
    f.to_exit.sort();
    // Keep serving a while, for an outside load generator (wrk) that ends after the upgrades.
    std::thread::sleep(c.tail);
    Ok(f)
}
