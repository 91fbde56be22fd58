//! When servers begin accepting and when they stop: the [`Shutdown`] token.

use std::sync::Arc;

use tokio::sync::watch;

/// Where the process stands, as its servers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    /// Starters run; the process has not declared itself ready yet.
    Starting,
    /// Ready: accept and serve.
    Serving,
    /// The graceful stop began: stop accepting and drain.
    Stopping,
}

/// A server's view of the process's life: when to begin accepting ([`Shutdown::serving`]) and
/// when to stop accepting and drain ([`Shutdown::draining`]).
///
/// The one way to wire a server's drain: take the token from
/// [`StartContext::shutdown`](crate::StartContext::shutdown), hand it to the server
/// (`flip::http::HttpServer::serve` with the `hyper` feature, or your own accept loop), and run
/// the server with [`StartContext::serve`](crate::StartContext::serve). The Bootstrap then
/// starts the drain when a successor took over and waits for the server to finish. For a
/// server with a graceful-shutdown future of its own (axum's `with_graceful_shutdown`, tonic's
/// `serve_with_shutdown`), pass it [`Shutdown::signal`].
///
/// A successor begins accepting once it has declared itself ready: until then its
/// predecessor serves every connection, and the successor's CPU goes to getting ready, which
/// under load shortens the upgrade severalfold. Connections that arrive meanwhile wait in the
/// shared accept queue; none is refused.
///
/// Cloning it is cheap, and so is giving a clone to every request: clones share one handle, so
/// a server that hands one to each request of a connection touches only that connection's
/// count (see [`Shutdown::for_connection`]), not the channel every connection shares.
#[derive(Debug, Clone)]
pub struct Shutdown(Arc<watch::Receiver<Stage>>);

/// Starts the graceful stop of the [`Shutdown`] tokens it was made with.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<Stage>);

impl ShutdownTrigger {
    /// Signals every token: the graceful stop begins.
    pub fn trigger(&self) {
        self.0.send_replace(Stage::Stopping);
    }
}

impl Shutdown {
    /// A token and its trigger, for servers run without a [`Bootstrap`](crate::Bootstrap) (the Bootstrap makes
    /// its own). The token is serving at once. Clone the token for each server.
    pub fn pair() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(Stage::Serving);
        (ShutdownTrigger(tx), Shutdown::new(rx))
    }

    pub(super) fn new(rx: watch::Receiver<Stage>) -> Shutdown {
        Shutdown(Arc::new(rx))
    }

    /// A token of its own for one connection, to clone for each of its requests: its clones
    /// count on that connection's handle, which stays on the connection's worker, rather than
    /// on one that every worker's connections share.
    pub fn for_connection(&self) -> Shutdown {
        Shutdown::new((*self.0).clone())
    }

    /// A receiver of our own to wait on (waiting needs one, and clones share theirs).
    fn receiver(&self) -> watch::Receiver<Stage> {
        (*self.0).clone()
    }

    /// Waits until the process is ready to serve (or already stopping): the moment to begin
    /// accepting. Readiness comes after every starter returned, so a starter must not wait for
    /// its own server to answer.
    pub async fn serving(&mut self) {
        let _ = self
            .receiver()
            .wait_for(|stage| *stage >= Stage::Serving)
            .await;
    }

    /// Waits until the drain begins: stop accepting, finish what is in flight.
    pub async fn draining(&mut self) {
        let _ = self
            .receiver()
            .wait_for(|stage| *stage == Stage::Stopping)
            .await;
    }

    /// A future that resolves when the drain begins, for servers that take a shutdown signal
    /// (`axum::serve(..).with_graceful_shutdown(ctx.shutdown().signal())`).
    pub async fn signal(mut self) {
        self.draining().await;
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow() == Stage::Stopping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_signal_resolves_when_the_drain_begins() {
        let (trigger, token) = Shutdown::pair();
        assert!(!token.is_draining());
        let signal = tokio::spawn(token.clone().signal());
        tokio::task::yield_now().await;
        assert!(!signal.is_finished(), "resolved before the drain began");
        trigger.trigger();
        tokio::time::timeout(std::time::Duration::from_secs(20), signal)
            .await
            .expect("the signal resolves")
            .expect("signal task");
        assert!(token.is_draining());
    }
}
