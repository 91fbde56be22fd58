//! Idle keep-alive connections held open across upgrades: each has had one request answered
//! and then sits still, as a browser's or a pool's spare connection does. After each upgrade the
//! benchmark looks at every one of them: closed cleanly (end of stream, nothing sent and
//! nothing lost), reset, or still open (then it must answer a request).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n";

/// What the idle connections saw over a run.
#[derive(Default)]
pub struct Tally {
    pub opened: usize,
    pub closed_cleanly: usize,
    pub reset: usize,
    /// Still open after the upgrade, and answered a request.
    pub open_answered: usize,
    /// Still open after the upgrade, and failed a request.
    pub open_failed: usize,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "idle keep-alive connections: {} opened, after their upgrade {} closed cleanly, {} reset, {} still open and answered, {} still open and failed",
            self.opened, self.closed_cleanly, self.reset, self.open_answered, self.open_failed
        )
    }
}

/// Idle connections to one address.
pub struct IdleSet {
    addr: String,
    conns: Vec<TcpStream>,
    pub tally: Tally,
}

impl IdleSet {
    pub fn new(addr: &str) -> IdleSet {
        IdleSet {
            addr: addr.into(),
            conns: Vec::new(),
            tally: Tally::default(),
        }
    }

    /// Opens connections, each with one answered request, until there are `n`.
    pub fn fill(&mut self, n: usize) -> Result<(), String> {
        while self.conns.len() < n {
            let mut s = TcpStream::connect(&self.addr)
                .map_err(|e| format!("idle connection {}: {e}", self.conns.len()))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            s.write_all(REQUEST).map_err(|e| e.to_string())?;
            if !read_response(&mut s) {
                return Err(format!(
                    "idle connection {}: no answer to its first request",
                    self.conns.len()
                ));
            }
            self.conns.push(s);
            self.tally.opened += 1;
        }
        Ok(())
    }

    /// Looks at every connection after an upgrade and keeps those still open.
    pub fn check(&mut self) {
        let mut kept = Vec::with_capacity(self.conns.len());
        for mut s in std::mem::take(&mut self.conns) {
            let mut byte = [0u8; 1];
            let _ = s.set_nonblocking(true);
            let seen = s.read(&mut byte);
            let _ = s.set_nonblocking(false);
            match seen {
                Ok(0) => self.tally.closed_cleanly += 1,
                // A byte nobody asked for is as bad as a reset.
                Ok(_) => self.tally.reset += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if s.write_all(REQUEST).is_ok() && read_response(&mut s) {
                        self.tally.open_answered += 1;
                        kept.push(s);
                    } else {
                        self.tally.open_failed += 1;
                    }
                }
                Err(_) => self.tally.reset += 1,
            }
        }
        self.conns = kept;
    }
}

/// Reads one whole response with a `content-length`; false on anything else.
fn read_response(s: &mut TcpStream) -> bool {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let Some(len) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
            else {
                return false;
            };
            if buf.len() >= end + 4 + len {
                return head.starts_with("http/1.1 200");
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
