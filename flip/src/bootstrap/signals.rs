//! The signals the Bootstrap waits for, and how often it says it ignored one.

use std::time::{Duration, Instant};

use tokio::signal::unix::{Signal, SignalKind, signal};

pub(super) struct Signals {
    pub(super) term: Signal,
    pub(super) int: Signal,
    pub(super) hup: Signal,
}

impl Signals {
    pub(super) fn subscribe() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: crate::signal::upgrade_signal()?,
        })
    }
}

/// How a drain ended.
/// At most one log line a second for a repeated event; the others are counted.
#[derive(Default)]
pub(super) struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(events suppressed since the last line)` when a line may be logged now.
    pub(super) fn log_now(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl Signals {
    /// Drops the SIGHUPs received before this process served: they were meant for the process
    /// serving then (see [`crate::signal::upgrade_signal`]), and upgrades wait for readiness.
    pub(super) fn discard_early_hups(&mut self) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut discarded = 0;
        while let std::task::Poll::Ready(Some(())) = self.hup.poll_recv(&mut cx) {
            discarded += 1;
        }
        if discarded > 0 {
            tracing::info!("ignored a SIGHUP sent before this process served");
        }
    }
}
