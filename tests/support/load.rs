//! HTTP load for the tests: bounded in time, loopback only, counting every failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{DEADLINE, wait_for};

/// How clients use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A new connection per request (`Connection: close`).
    Close,
    /// One connection for many requests, reconnecting when the server says `Connection: close`.
    KeepAlive,
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub answered: u64,
    pub failed: u64,
    /// A reused keep-alive connection closed without answering the request sent on it.
    pub idle_close_races: u64,
    pub pids: Vec<u32>,
}

impl Report {
    /// Nothing failed, and each of `generations` answered some request.
    pub fn assert_lossless_across(&self, generations: &[u32]) {
        assert_eq!(self.failed, 0, "{self:?}");
        for g in generations {
            assert!(
                self.pids.contains(g),
                "generation {g} never answered: {self:?}"
            );
        }
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    paused: AtomicBool,
    /// Clients waiting while paused.
    parked: std::sync::atomic::AtomicUsize,
    answered: AtomicU64,
    failed: AtomicU64,
    races: AtomicU64,
    pids: Mutex<Vec<u32>>,
}

pub struct Load {
    shared: Arc<Shared>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

/// Sends `GET path` and reads one response; returns the body and whether the server asked to
/// close.
fn exchange(
    conn: &mut BufReader<TcpStream>,
    path: &str,
    keep_alive: bool,
) -> Option<(String, bool)> {
    let header = if keep_alive { "keep-alive" } else { "close" };
    conn.get_mut()
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: {header}\r\n\r\n").as_bytes(),
        )
        .ok()?;
    let mut status = String::new();
    if conn.read_line(&mut status).ok()? == 0 || !status.starts_with("HTTP/1.1 200") {
        return None;
    }
    let (mut length, mut close) = (0, false);
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        close |= line == "connection: close";
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).ok()?;
    Some((String::from_utf8(body).ok()?, close))
}

fn client(addr: String, mode: Mode, shared: Arc<Shared>) {
    let end = Instant::now() + Duration::from_secs(120);
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !shared.stop.load(Ordering::SeqCst) && Instant::now() < end {
        if shared.paused.load(Ordering::SeqCst) {
            conn = None; // a paused client holds no connection
            shared.parked.fetch_add(1, Ordering::SeqCst);
            while shared.paused.load(Ordering::SeqCst) && Instant::now() < end {
                std::thread::park_timeout(Duration::from_millis(1));
            }
            shared.parked.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let reused = conn.is_some();
        let mut c = match conn.take() {
            Some(c) => c,
            None => match TcpStream::connect(&addr) {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                    BufReader::new(s)
                }
                Err(_) => {
                    shared.failed.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
            },
        };
        match exchange(&mut c, "/", mode == Mode::KeepAlive) {
            Some((body, close)) => {
                shared.answered.fetch_add(1, Ordering::SeqCst);
                if let Some(pid) = body
                    .trim()
                    .strip_prefix("hello from ")
                    .and_then(|p| p.parse().ok())
                {
                    let mut pids = shared.pids.lock().unwrap();
                    if !pids.contains(&pid) {
                        pids.push(pid);
                    }
                }
                if mode == Mode::KeepAlive && !close {
                    conn = Some(c);
                }
            }
            None if reused => {
                shared.races.fetch_add(1, Ordering::SeqCst);
            }
            None => {
                shared.failed.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

impl Load {
    pub fn start(addr: &str, clients: usize, mode: Mode) -> Load {
        let shared = Arc::new(Shared::default());
        let clients = (0..clients)
            .map(|_| {
                let (addr, shared) = (addr.to_owned(), shared.clone());
                std::thread::spawn(move || client(addr, mode, shared))
            })
            .collect();
        Load { shared, clients }
    }

    /// Waits until `n` more requests were answered.
    pub fn wait_for_more(&self, n: u64) {
        let target = self.shared.answered.load(Ordering::SeqCst) + n;
        wait_for(&format!("{n} more answered requests"), DEADLINE, || {
            (self.shared.answered.load(Ordering::SeqCst) >= target).then_some(())
        });
    }

    /// Runs `f` while every client waits with no connection open, and returns what it returned.
    pub fn paused<T>(&self, f: impl FnOnce() -> T) -> T {
        self.shared.paused.store(true, Ordering::SeqCst);
        let n = self.clients.len();
        wait_for("the clients to pause", DEADLINE, || {
            (self.shared.parked.load(Ordering::SeqCst) == n).then_some(())
        });
        let out = f();
        self.shared.paused.store(false, Ordering::SeqCst);
        out
    }

    pub fn finish(self) -> Report {
        self.shared.stop.store(true, Ordering::SeqCst);
        for c in self.clients {
            c.join().expect("client thread");
        }
        let mut pids = self.shared.pids.lock().unwrap().clone();
        pids.sort_unstable();
        Report {
            answered: self.shared.answered.load(Ordering::SeqCst),
            failed: self.shared.failed.load(Ordering::SeqCst),
            idle_close_races: self.shared.races.load(Ordering::SeqCst),
            pids,
        }
    }
}
