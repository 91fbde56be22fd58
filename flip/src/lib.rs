//! Zero-downtime binary upgrades for network servers.
//!
//! A running server gets SIGHUP, starts its new binary, hands it every listening socket, waits
//! until the new process says it is ready, then drains its in-flight work and exits. No
//! connection is refused: the new process accepts from the very same sockets, accept queues
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

// The layers, lowest first; a module imports only from the layers below it.
// 1. The operating system: every `unsafe` block and syscall.
mod percent;
mod sync;
mod sys;
// 2. What the upgrade is made of: errors, registry keys and addresses, the handoff protocol, the
//    registry, the pid file.
mod address;
mod error;
mod fds;
mod handoff;
mod key;
mod pidfile;
// 3. The upgrade: starting processes, the old process's handle on the new one (`child`), the new
//    process's link to the old one (`parent`), the standby, and the state machine.
mod child;
mod launch;
mod options;
mod parent;
mod signal;
mod standby;
mod upgrader;
// 4. Gitaly's bootstrap: starters, signals, readiness, the wait loop, the grace period; beside
//    it, what follows it from outside: systemd and flip's own supervisor.
mod bootstrap;
pub mod control;
mod notify;
mod server;
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
    Bootstrap, BoxError, BoxFuture, DEFAULT_GRACE_PERIOD, Drain, ErrorSender, Observer, Outcome,
    Shutdown, ShutdownTrigger, StartContext, StartError, StopMode, UpgradeRequester, UpgradeResult,
};
pub use error::{Chain, Error, ExitStatus, HandoffError, Result};
pub use fds::{Fds, Listener, PacketSocket};
pub use flip_macros::{main, starter};
/// The environment variable that tells a process it was started by an upgrade (the handoff
/// marker). flip removes it at startup, so nothing the server spawns sees it.
pub use handoff::MARKER_VAR as HANDOFF_VAR;
pub use key::{Key, Kind};
pub use options::{DEFAULT_BACKLOG, DEFAULT_UNIX_SOCKET_MODE, DEFAULT_UPGRADE_TIMEOUT, Options};
pub use pidfile::DEFAULT_MODE as DEFAULT_PID_FILE_MODE;
pub use server::GracefulStoppableServer;
pub use signal::upgrade_signal;
pub use standby::{FreshStart, SuccessorStart};
pub use upgrader::Upgrader;

/// Entry point of the cargo-fuzz target in `fuzz/` (feature `fuzzing`; not an API).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz {
    pub use crate::handoff::fuzz::decode;
}
