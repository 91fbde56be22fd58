//! The load client of `flip::testing::load`, with the tests' way of failing: a wait that takes
//! longer than [`DEADLINE`] fails the test.

pub use flip::testing::load::{Failures, LoadConfig, Mode, Report};

use crate::DEADLINE;

/// Load running in the background until [`Load::finish`].
pub struct Load(flip::testing::load::Load);

impl Load {
    /// `clients` clients of short requests at `addr`.
    pub fn start(addr: &str, clients: usize, mode: Mode) -> Load {
        Load(flip::testing::load::Load::start(addr, clients, mode))
    }

    /// Starts the clients `config` describes.
    pub fn run(config: LoadConfig) -> Load {
        Load(flip::testing::load::Load::run(config))
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.0.answered()
    }

    /// Waits until `n` more requests were answered.
    pub fn wait_for_more(&self, n: u64) {
        assert!(
            self.0.wait_for_more(n, DEADLINE),
            "timed out after {DEADLINE:?} waiting for {n} more answered requests"
        );
    }

    /// Runs `f` while every client waits with no connection open, and returns what it returned.
    pub fn paused<T>(&self, f: impl FnOnce() -> T) -> T {
        self.0
            .paused(DEADLINE, f)
            .unwrap_or_else(|| panic!("the clients did not pause within {DEADLINE:?}"))
    }

    /// Stops the clients and adds up what they saw.
    pub fn finish(self) -> Report {
        self.0.finish()
    }
}

/// Nothing failed, and each of `generations` answered some request.
pub trait AssertLossless {
    fn assert_lossless_across(&self, generations: &[u32]);
}

impl AssertLossless for Report {
    fn assert_lossless_across(&self, generations: &[u32]) {
        assert_eq!(self.failed, 0, "{self:?}");
        for g in generations {
            assert!(
                self.pids.contains(g),
                "generation {g} never answered: {self:?}"
            );
        }
    }
}
