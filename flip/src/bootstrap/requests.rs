//! Asking for upgrades from elsewhere than `SIGHUP` (the control socket), and how each ended.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Repr};

/// How an upgrade ended: the new pid, or why not; and how long it took.
#[derive(Debug)]
pub struct UpgradeResult {
    /// The successor's pid, or the error (a refusal when [`Error::is_refusal`]).
    pub result: Result<u32, Error>,
    /// From the start of the upgrade to its end.
    pub elapsed: Duration,
}

impl UpgradeResult {
    pub(super) fn refused(error: Error) -> UpgradeResult {
        UpgradeResult {
            result: Err(error),
            elapsed: Duration::ZERO,
        }
    }

    pub(super) fn new_pid(&self) -> Option<u32> {
        self.result.as_ref().ok().copied()
    }
}

/// Asks a [`Bootstrap`](super::Bootstrap) for an upgrade, as `SIGHUP` does, and learns how it ended: what a
/// control socket needs. Made by [`Bootstrap::upgrade_requester`](super::Bootstrap::upgrade_requester).
#[derive(Debug, Clone)]
pub struct UpgradeRequester(pub(super) mpsc::UnboundedSender<Asked>);

/// An upgrade asked for: to the deployed build, or back to the previous one; and who to tell.
#[derive(Debug)]
pub(super) struct Asked {
    pub(super) rollback: bool,
    pub(super) reply: oneshot::Sender<UpgradeResult>,
}

impl UpgradeRequester {
    /// Starts an upgrade and resolves when it ended. Refused at once (with nothing started)
    /// while another runs or when upgrades are disabled; an error result also when the
    /// Bootstrap is not waiting (not started yet, or gone).
    pub async fn upgrade(&self) -> UpgradeResult {
        self.ask(false).await
    }

    /// Starts an upgrade to the build the predecessor ran (see
    /// [`Upgrader::rollback`](crate::Upgrader::rollback)), and resolves when it ended; refused
    /// as [`upgrade`](UpgradeRequester::upgrade) is, and when there is no previous build.
    pub async fn rollback(&self) -> UpgradeResult {
        self.ask(true).await
    }

    async fn ask(&self, rollback: bool) -> UpgradeResult {
        let (reply, rx) = oneshot::channel();
        if self.0.send(Asked { rollback, reply }).is_err() {
            return UpgradeResult::refused(Error::from(Repr::Terminating));
        }
        rx.await
            .unwrap_or_else(|_| UpgradeResult::refused(Error::from(Repr::Terminating)))
    }
}
