//! Zero-downtime binary upgrades for network servers.
//!
//! A running server gets SIGHUP, starts its new binary, hands it every listening socket, waits
//! until the successor says it is ready, then drains its in-flight work and exits. No
//! connection is refused: the successor accepts from the very same sockets, accept queues
//! included.
//!
//! The core is [`Upgrader`]: open sockets through its registry ([`Upgrader::fds`]), call
//! [`Upgrader::ready`] once serving, call [`Upgrader::upgrade`] on SIGHUP
//! ([`upgrade_signal`]), and stop accepting when [`Upgrader::exit`] resolves. With
//! [`Options::standby`] (on by default under `#[flip::main]`; `FLIP_STANDBY=0` turns it off) the next process is started
//! ahead of time and waits for the handoff, so that an upgrade only hands the sockets over.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let upgrader = flip::Upgrader::new(flip::Options::new().pid_file("/tmp/app.pid"))?;
//! let listener = tokio::net::TcpListener::from_std(upgrader.fds().tcp_listener("127.0.0.1:8080")?)?;
//! let mut hup = flip::upgrade_signal()?;
//! upgrader.ready()?;
//! loop {
//!     tokio::select! {
//!         _ = hup.recv() => match upgrader.upgrade().await {
//!             Ok(pid) => println!("upgraded to {pid}"),
//!             Err(e) => eprintln!("upgrade failed: {e}"),
//!         },
//!         () = upgrader.exit() => break, // drain, then return
//!         conn = listener.accept() => { let _ = conn?; /* serve it */ }
//!     }
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

// The layers, lowest first; a module imports only from the layers below it, and nothing
// imports through this root (`tests/layers.rs` keeps both rules).
// 1. The ground: every `unsafe` block and syscall (`sys`), the lock helper, the percent codec,
//    and the vocabulary (errors, registry keys, addresses).
mod address;
mod error;
mod key;
mod percent;
mod sync;
mod sys;
// 2. What an upgrade is made of: the handoff's wire format (a codec, no I/O), the registry of
//    sockets, starting processes, the pid file, readiness notifications, the upgrade signal.
mod handoff;
mod launch;
mod notify;
mod pidfile;
mod registry;
mod signal;
// 3. One upgrade, both sides: the predecessor's handle on its successor, the successor's link
//    to its predecessor, the standby, and the phases.
mod upgrader;
// 4. Gitaly's bootstrap: starters, signals, readiness, the wait loop, the grace period.
mod bootstrap;
mod server;
// 5. What observes the Bootstrap or runs around it: systemd, the control socket, flip's own
//    supervisor, and what it checks of the process's surroundings.
pub mod control;
mod supervisor;
mod surroundings;
pub mod systemd;
// 5. What the macros' expansions call.
mod rt;
#[doc(hidden)]
pub mod __rt {
    //! Support for the macros' expansions; not a stable API.
    pub use crate::rt::*;
}
// On top: server adapters, which use only the public API; and the test kit.
mod adapters;
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "tonic")]
pub use adapters::grpc;
#[cfg(feature = "hyper")]
pub use adapters::http;
#[cfg(feature = "tls")]
pub use adapters::tls;

pub use bootstrap::{
    Bootstrap, BoxError, BoxFuture, DEFAULT_GRACE_PERIOD, Drain, ErrorSender,
    HEALTH_CHECK_FAILED_EXIT, Observer, Outcome, Shutdown, ShutdownTrigger, StartContext,
    StartError, StopMode, UpgradeRequester, UpgradeResult,
};
pub use error::{Chain, Error, ErrorKind, ExitStatus, HandoffError, Result};
pub use flip_macros::{health, main, starter};
/// The environment variable that tells a process it was started by an upgrade (the handoff
/// marker). flip removes it at startup, so nothing the server spawns sees it.
pub use handoff::MARKER_VAR as HANDOFF_VAR;
pub use key::{Key, Kind};
pub use pidfile::DEFAULT_MODE as DEFAULT_PID_FILE_MODE;
pub use registry::{Fds, Listener, PacketSocket};
pub use server::GracefulStoppableServer;
pub use signal::upgrade_signal;
pub use upgrader::{
    DEFAULT_BACKLOG, DEFAULT_UNIX_SOCKET_MODE, DEFAULT_UPGRADE_TIMEOUT, FreshStart, Options,
    SuccessorStart, Upgrader,
};

/// Entry point of the cargo-fuzz target in `fuzz/` (feature `fuzzing`; not an API).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz {
    pub use crate::handoff::fuzz::decode;
}
