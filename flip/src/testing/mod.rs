//! The test kit (feature `testing`): prove that *your* server loses nothing across upgrades.
//!
//! [`Check`] drives HTTP load at a running server while upgrading it again and again, through
//! its control socket or with `SIGHUP`, and returns a [`CheckReport`]: requests answered and
//! failed by kind, keep-alive close races, time from the upgrade request to the successor's
//! readiness and to the predecessor's exit, latency during and outside upgrades. `flip check`
//! is this, on the command line. [`TestServer`] starts a binary for a `cargo test`:
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use flip::testing::{Check, TestServer};
//! // In an integration test: env!("CARGO_BIN_EXE_<your server>").
//! let server = TestServer::start("target/debug/my-server")
//!     .env("HTTP_ADDR", "127.0.0.1:18080")
//!     .ready()?;
//! let report = Check::new(server.pid_file(), "127.0.0.1:18080").upgrades(10).run()?;
//! assert!(report.lossless(), "{report}");
//! # Ok(()) }
//! ```
//!
//! Everything here blocks (threads, no runtime), is bounded in time, and is meant for loopback.

mod check;
#[cfg(feature = "testing-grpc")]
pub mod grpc;
pub mod load;
mod plot;
mod report;
mod server;

pub use check::{Check, CheckError, UpgradeTiming, Via};
pub use report::{CheckReport, json_string};
pub use server::{TestServer, TestServerBuilder};

/// Whether process `pid` runs (a zombie does not), whoever its parent is.
pub(crate) fn alive(pid: u32) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(crate::sys::pidref::Stat::read)
        .is_some_and(|s| !s.zombie)
}

/// The pid a pid file names.
pub(crate) fn read_pid(path: &std::path::Path) -> Option<u32> {
    crate::pidfile::read(path)
}
