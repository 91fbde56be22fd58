//! The benchmark's options.

use std::time::Duration;

use flip_suite::load::{LoadConfig, Mode};

#[derive(Clone)]
pub struct Config {
    pub upgrades: usize,
    pub mode: String,
    pub clients: usize,
    pub slow: usize,
    pub interval: Duration,
    pub ballast_mb: usize,
    pub addr: String,
    pub baseline: Duration,
    pub tail: Duration,
    pub compare_secs: u64,
    pub compare_runs: usize,
    pub same_session: bool,
    pub server_log: Option<String>,
    pub standby: bool,
    /// Listening sockets of the server: the HTTP one and `listeners - 1` unix sockets.
    pub listeners: usize,
    /// Idle keep-alive connections held open across each upgrade.
    pub idle: usize,
    /// Compare against the peers' servers, in this many interleaved rounds.
    pub peers: Option<usize>,
    /// Where the peers' servers are (`target/peers/release` beside this binary's `target`).
    pub peers_dir: Option<std::path::PathBuf>,
    /// The server of a single run: `flip` (the `http` example), `ecdysis` or `shellflip`.
    pub server: String,
    /// Only measure what N listeners cost any tokio server (`floor.rs`).
    pub floor: Option<usize>,
    /// Deploy a new binary this long before each `SIGHUP`: the server runs from a `current`
    /// symlink that is switched between two copies of its binary (`deploy.rs`).
    pub deploy_lead: Option<Duration>,
}

pub fn parse_args() -> Result<Config, String> {
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
        standby: true,
        listeners: 1,
        idle: 0,
        peers: None,
        peers_dir: None,
        server: "flip".into(),
        floor: None,
        deploy_lead: None,
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
        if flag == "--no-standby" {
            c.standby = false;
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
            "--listeners" => c.listeners = (num()? as usize).max(1),
            "--idle" => c.idle = num()? as usize,
            "--floor" => c.floor = Some((num()? as usize).max(1)),
            "--deploy-lead-ms" => c.deploy_lead = Some(Duration::from_millis(num()?)),
            "--peers" => c.peers = Some((num()? as usize).max(1)),
            "--peers-dir" => c.peers_dir = Some(value.into()),
            "--server"
                if ["flip", "flip-lean", "ecdysis", "shellflip"].contains(&value.as_str()) =>
            {
                c.server = value
            }
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

impl Config {
    /// The load to drive at `addr`, with `slow` clients of 200 ms requests; `None` in mode
    /// `none`. Every client stops by itself after `limit`.
    pub fn load(&self, addr: &str, slow: usize, limit: Duration) -> Option<LoadConfig> {
        let mode = match self.mode.as_str() {
            "close" => Mode::Close,
            "keepalive" => Mode::KeepAlive,
            _ => return None,
        };
        Some(
            LoadConfig::new(addr, self.clients, mode)
                .slow(slow, "/sleep/200")
                .limit(limit)
                .record_latencies(),
        )
    }
}
