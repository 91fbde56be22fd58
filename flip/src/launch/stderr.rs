//! The relay of a starting process's standard error: everything it writes is passed on to ours,
//! and the last lines are kept to report a failed start with.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sync::lock;
use crate::sys;

/// How many lines a failure reports.
const TAIL_LINES: usize = 20;
/// Longest line kept, in characters.
const LINE_CHARS: usize = 500;

/// The last lines a process wrote to the relayed pipe, and whether the pipe reached EOF.
#[derive(Debug, Default, Clone)]
pub(crate) struct StderrTail(Arc<TailState>);

#[derive(Debug, Default)]
struct TailState {
    lines: Mutex<VecDeque<String>>,
    closed: tokio::sync::watch::Sender<bool>,
}

impl StderrTail {
    /// Passes what arrives on `pipe` on to our standard error, keeping the last lines, until
    /// the pipe reaches EOF (the process put its real stderr back at ready, or exited). Needs
    /// a tokio runtime with I/O enabled.
    pub(crate) fn relay(pipe: OwnedFd) -> io::Result<StderrTail> {
        sys::fd::set_nonblocking(pipe.as_fd())?;
        let pipe = sys::fd::async_readable(pipe)?;
        let tail = StderrTail::default();
        let state = tail.0.clone();
        tokio::spawn(async move {
            let mut partial = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let Ok(mut guard) = pipe.readable().await else {
                    break;
                };
                let n = match guard.try_io(|fd| sys::fd::read(fd.get_ref().as_fd(), &mut buf)) {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => n,
                    Err(_would_block) => continue,
                };
                let _ = std::io::Write::write_all(&mut std::io::stderr(), &buf[..n]);
                partial.extend_from_slice(&buf[..n]);
                while let Some(end) = partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=end).collect();
                    state.keep(&String::from_utf8_lossy(&line[..line.len() - 1]));
                }
                if partial.len() > 4096 {
                    partial.clear();
                }
            }
            state.closed.send_replace(true);
        });
        Ok(tail)
    }

    /// The last lines, once the relay read everything (the process ended: at most a moment)
    /// or after 250 ms (something else holds the pipe).
    pub(crate) async fn last_lines(&self) -> Vec<String> {
        let mut closed = self.0.closed.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(250), closed.wait_for(|c| *c)).await;
        lock(&self.0.lines).iter().cloned().collect()
    }
}

impl TailState {
    fn keep(&self, line: &str) {
        let mut lines = lock(&self.lines);
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line.chars().take(LINE_CHARS).collect());
    }
}
