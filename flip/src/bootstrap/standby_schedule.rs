//! When the Bootstrap starts or checks its standby process (see
//! [`Options::standby`](crate::Options::standby)): once the predecessor has exited (at once, with
//! [`Options::max_draining`](crate::Options::max_draining)), as soon as a new
//! binary is in place at the path an upgrade starts, and every second after that, since a
//! binary replaced on disk makes the standby stale.

use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};

use super::BoxFuture;
use super::binary_watch::BinaryWatch;
use crate::upgrader::Upgrader;

/// How often the serving process checks that its standby process still runs the binary an
/// upgrade would start, for what the watch on the binary cannot see (a link switched further
/// up, a file system without inotify).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The standby's timer and the watch on the predecessor, armed only when a standby is wanted: without
/// one, no timer wakes the process and no descriptor is held.
pub(super) struct Schedule {
    armed: Option<Armed>,
}

struct Armed {
    check: Interval,
    /// Resolves once the process that started this one exited; `None` once it did.
    parent: Option<BoxFuture<()>>,
    /// `None` when the binary's directories cannot be watched, or once the watch failed.
    binary: Option<BinaryWatch>,
}

impl Schedule {
    /// `inherited_watch`: what [`BinaryWatch::inherited`] claimed before readiness.
    pub(super) fn new(
        upgrader: &Upgrader,
        upgrades_enabled: bool,
        inherited_watch: Option<OwnedFd>,
    ) -> Schedule {
        if !upgrades_enabled || !upgrader.options().standby_enabled() {
            return Schedule { armed: None };
        }
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        check.reset();
        let parent = upgrader.has_parent().then(|| {
            let upgrader = upgrader.clone();
            Box::pin(async move {
                // Once it exited, or only waits out its probation. An error watching it: the
                // periodic check starts the standby instead.
                let _ = upgrader.predecessor_drained().await;
            }) as BoxFuture<()>
        });
        let binary = BinaryWatch::new(upgrader.executable(), upgrader.fds(), inherited_watch)
            .inspect_err(|e| {
                tracing::debug!(error = %e, path = %upgrader.executable().display(), "cannot watch for a new binary; checking every second");
            })
            .ok();
        Schedule {
            armed: Some(Armed {
                check,
                parent,
                binary,
            }),
        }
    }

    /// Resolves when the standby should be started or checked; never without a standby.
    pub(super) async fn due(&mut self) {
        let Some(armed) = self.armed.as_mut() else {
            return std::future::pending().await;
        };
        let parent = async {
            match armed.parent.as_mut() {
                Some(parent) => parent.await,
                None => std::future::pending().await,
            }
        };
        let binary = async {
            match armed.binary.as_mut() {
                Some(binary) => binary.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = armed.check.tick() => {}
            () = parent => armed.parent = None,
            changed = binary => match changed {
                Ok(()) => tracing::debug!("the binary changed on disk"),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot watch for a new binary any more; checking every second");
                    armed.binary = None;
                }
            },
        }
    }
}
