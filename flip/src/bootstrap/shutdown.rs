//! When servers begin accepting and when they stop: the [`Shutdown`] token.

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
/// when to stop accepting and drain ([`Shutdown::wait`]).
///
/// A new process begins accepting once it has declared itself ready: until then its
/// predecessor serves every connection, and the new process's CPU goes to getting ready, which
/// under load shortens the upgrade severalfold. Connections that arrive meanwhile wait in the
/// shared accept queue; none is refused.
#[derive(Debug, Clone)]
pub struct Shutdown(pub(super) watch::Receiver<Stage>);

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
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Waits until the process is ready to serve (or already stopping): the moment to begin
    /// accepting. Readiness comes after every starter returned, so a starter must not wait for
    /// its own server to answer.
    pub async fn serving(&mut self) {
        let _ = self.0.wait_for(|stage| *stage >= Stage::Serving).await;
    }

    /// Waits until the graceful stop begins.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stage| *stage == Stage::Stopping).await;
    }

    /// Whether the graceful stop has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.0.borrow() == Stage::Stopping
    }
}
