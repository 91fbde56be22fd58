//! The generations around this process: the one that started it (upgrades are refused while it
//! lives) and the one it upgraded to (should it die during the drain, this process takes
//! service back).

use super::{Phase, Upgrader, lock};
use crate::error::{Error, ExitStatus, Result};
use crate::pidfile;

impl Upgrader {
    /// The pid of the process that started this one, while it still runs.
    pub(super) fn living_parent(&self) -> Result<Option<u32>> {
        let mut parent = lock(&self.shared.parent);
        let Some(link) = parent.as_ref() else {
            return Ok(None);
        };
        match link.parent_exited() {
            Ok(true) => {
                *parent = None;
                Ok(None)
            }
            Ok(false) => Ok(Some(link.pid)),
            Err(e) => Err(Error::io("checking whether the parent exited")(e)),
        }
    }

    /// Resolves with the successor's exit status if the process this one upgraded to ends
    /// while this one still runs (it died right after declaring itself ready, say). Nobody else
    /// serves then: see [`resume`](Upgrader::resume).
    pub fn successor_exited(&self) -> impl Future<Output = ExitStatus> + Send + 'static {
        let mut rx = self.shared.successor_exit.subscribe();
        async move {
            let status = match rx.wait_for(Option::is_some).await {
                Ok(status) => *status,
                Err(_) => None,
            };
            match status {
                Some(status) => status,
                // The upgrader is gone: nothing will ever be reported.
                None => std::future::pending().await,
            }
        }
    }

    /// Takes service back after the successor died: this process is ready again (upgrades are
    /// accepted, [`exit`](Upgrader::exit) is pending again) and the pid file names it again.
    /// Only valid after a successful upgrade whose successor has exited.
    pub fn resume(&self) -> Result<()> {
        let mut phase = lock(&self.shared.phase);
        if !matches!(*phase, Phase::Upgraded) || self.shared.successor_exit.borrow().is_none() {
            return Err(Error::NotResumable);
        }
        if let Some(path) = &self.shared.options.pid_file {
            pidfile::write(path, std::process::id(), self.shared.options.pid_file_mode)?;
        }
        *lock(&self.shared.successor_link) = None;
        self.shared.successor_exit.send_replace(None);
        self.shared.exit.send_replace(false);
        *phase = Phase::Ready;
        Ok(())
    }

    /// Resolves once the process that started this one has exited (at once on a first start).
    /// Upgrades are refused until then.
    pub async fn parent_exited(&self) -> Result<()> {
        let afd = {
            let parent = lock(&self.shared.parent);
            match parent.as_ref() {
                None => return Ok(()),
                Some(link) => link.watch_fd().map_err(Error::io("watching the parent"))?,
            }
        };
        loop {
            {
                let parent = lock(&self.shared.parent);
                match parent.as_ref() {
                    None => return Ok(()),
                    Some(link)
                        if link
                            .parent_exited()
                            .map_err(Error::io("watching the parent"))? =>
                    {
                        return Ok(());
                    }
                    Some(_) => {}
                }
            }
            let mut guard = afd
                .readable()
                .await
                .map_err(Error::io("watching the parent"))?;
            guard.clear_ready();
        }
    }
}
