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
//! [`Options::standby`] (`FLIP_STANDBY=1` under `#[flip::main]`) the next process is started
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

mod bootstrap;
mod child;
mod error;
mod fds;
#[cfg(feature = "tonic")]
pub mod grpc;
pub mod handoff;
#[cfg(feature = "hyper")]
pub mod http;
mod key;
mod parent;
mod pidfile;
#[doc(hidden)]
pub mod __rt {
    //! Support for the macros' expansions; not a stable API.
    pub use crate::rt::*;
}
mod rt;
mod server;
mod signal;
mod socket;
mod sys;
#[cfg(feature = "tls")]
pub mod tls;
mod upgrader;

pub use bootstrap::{
    Bootstrap, BoxError, BoxFuture, DEFAULT_GRACE_PERIOD, Drain, ErrorSender, Outcome, Shutdown,
    ShutdownTrigger, StartContext, StartError,
};
pub use error::{Error, ExitStatus, HandoffError, Result};
pub use fds::{Fds, Listener, PacketSocket};
pub use flip_macros::{main, starter};
pub use key::{Key, Kind};
pub use pidfile::DEFAULT_MODE as DEFAULT_PID_FILE_MODE;
pub use server::GracefulStoppableServer;
pub use signal::upgrade_signal;
pub use upgrader::{
    DEFAULT_BACKLOG, DEFAULT_UNIX_SOCKET_MODE, DEFAULT_UPGRADE_TIMEOUT, Options, Upgrader,
};
