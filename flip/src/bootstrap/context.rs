//! What a starter receives: the listen function, the error channel and the drain group.

use std::future::Future;
use tokio::sync::{mpsc, watch};

use super::BoxError;
use super::group::DrainGroup;
use super::shutdown::{Shutdown, Stage};
use crate::error::{Error, Repr};
use crate::registry::Listener;
use crate::upgrader::Upgrader;

/// Sends runtime errors of a server to [`Bootstrap::wait`](crate::Bootstrap::wait), which then stops at once.
///
/// During the grace period after an upgrade, errors are logged and otherwise ignored: a listener
/// that fails while draining does not cut the drain short.
#[derive(Debug, Clone)]
pub struct ErrorSender(pub(super) mpsc::UnboundedSender<BoxError>);

impl ErrorSender {
    /// Reports a runtime error.
    pub fn send(&self, error: impl Into<BoxError>) {
        // The receiver lives as long as the Bootstrap's wait: after that nobody listens.
        let _ = self.0.send(error.into());
    }
}

/// What a starter receives: the listen function, the error channel, and the drain group.
///
/// Serving tasks spawned with [`StartContext::serve`] form the drain group: the default stop
/// action signals [`Shutdown`] and waits for all of them, so a server that watches its
/// [`StartContext::shutdown`] token needs no other wiring to drain on upgrade.
#[derive(Clone)]
pub struct StartContext {
    pub(super) upgrader: Upgrader,
    pub(super) errors: ErrorSender,
    pub(super) shutdown: watch::Receiver<Stage>,
    pub(super) tasks: DrainGroup,
}

impl std::fmt::Debug for StartContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartContext").finish_non_exhaustive()
    }
}

impl StartContext {
    /// The listen function: a listener from the upgrader's registry (`tcp`, `tcp4`, `tcp6`,
    /// `unix`). On first boot a stale unix socket path is replaced; during an upgrade the
    /// inherited socket is returned.
    pub fn listen(&self, network: &str, address: &str) -> Result<Listener, Error> {
        self.upgrader.fds().listen(network, address)
    }

    /// A tokio TCP listener on `address` from the registry.
    pub fn tcp_listener(&self, address: &str) -> Result<tokio::net::TcpListener, Error> {
        let l = self.upgrader.fds().tcp_listener(address)?;
        tokio::net::TcpListener::from_std(l).map_err(|source| {
            Error::from(Repr::Socket {
                network: "tcp".into(),
                address: address.into(),
                source,
            })
        })
    }

    /// A tokio unix listener at `path` from the registry.
    pub fn unix_listener(&self, path: &str) -> Result<tokio::net::UnixListener, Error> {
        let l = self.upgrader.fds().unix_listener(path)?;
        tokio::net::UnixListener::from_std(l).map_err(|source| {
            Error::from(Repr::Socket {
                network: "unix".into(),
                address: path.into(),
                source,
            })
        })
    }

    /// The upgrader, for its registry (datagram sockets, files) and state.
    pub fn upgrader(&self) -> &Upgrader {
        &self.upgrader
    }

    /// The channel for runtime errors.
    pub fn errors(&self) -> ErrorSender {
        self.errors.clone()
    }

    /// A token that resolves when the graceful stop begins.
    pub fn shutdown(&self) -> Shutdown {
        Shutdown::new(self.shutdown.clone())
    }

    /// Runs a serving task in the drain group: an error it returns is a runtime error, and the
    /// graceful stop waits for it to end (within the grace period).
    pub fn serve<F, E>(&self, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let errors = self.errors.clone();
        self.tasks.spawn(async move {
            if let Err(e) = task.await {
                errors.send(e);
            }
        });
    }
}
