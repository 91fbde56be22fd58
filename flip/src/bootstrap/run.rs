//! The wait loop: serve until a stop or an upgrade, then drain, or take service back when the
//! successor dies during the drain. One upgrade, seen from here: `SIGHUP` → [`upgrade`] →
//! the successor is ready → drain → exit.

use std::time::Instant;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::signals::{Signals, Throttle};
use super::{
    Bootstrap, BoxError, BoxFuture, Drain, Observers, Outcome, Stage, StopMode, UpgradeResult,
    Upgrader, binary_watch, standby_schedule, startup,
};
use crate::error::{Error, Repr};

impl Bootstrap {
    /// Declares readiness, then waits for the end: SIGTERM/SIGINT or a runtime error stop at
    /// once; a successful upgrade starts the graceful stop, bounded by the grace period and
    /// cut short by a second SIGTERM/SIGINT.
    ///
    /// If readiness cannot be declared (the pid file cannot be written), this returns
    /// [`Outcome::Failed`] at once, and the predecessor, if any, keeps serving.
    pub async fn wait(mut self) -> Outcome {
        let mut signals = match Signals::subscribe() {
            Ok(signals) => signals,
            Err(e) => return Outcome::Failed(format!("cannot subscribe to signals: {e}").into()),
        };
        // Before readiness closes what nobody claimed.
        let inherited_watch = binary_watch::BinaryWatch::inherited(self.upgrader.fds());
        // Right before readiness (the pid file names this process from then on): a SIGHUP
        // received later is this process's to act on.
        signals.discard_early_hups();
        if let Err(e) = self.upgrader.ready() {
            // The servers may have accepted connections already: serve those (the predecessor, still
            // serving, takes every new one) before giving up.
            tracing::error!(error = %crate::error::Chain(&e), "cannot declare readiness; draining what was accepted");
            let mut group = self.start_drain();
            let drained = async { while group.join_next().await.is_some() {} };
            let _ = tokio::time::timeout(self.grace, drained).await;
            return Outcome::Failed(e.into());
        }
        self.shutdown_tx.send_replace(Stage::Serving);
        tracing::info!(
            pid = std::process::id(),
            upgrades = self.upgrades_enabled,
            "ready"
        );
        let first = !self.upgrader.has_parent();
        self.observers.each(|o| o.ready(first));
        startup::StartupCost::log();
        self.check_health_on_probation();
        let mut standby =
            standby_schedule::Schedule::new(&self.upgrader, self.upgrades_enabled, inherited_watch);
        loop {
            let new_pid = match self.serve_until_upgraded(&mut signals, &mut standby).await {
                Ok(new_pid) => new_pid,
                Err(stopped) => return stopped,
            };
            match self.drain(&mut signals, new_pid).await {
                DrainEnd::Ended(drain) => return Outcome::Upgraded { new_pid, drain },
                DrainEnd::Resumed => {}
                DrainEnd::Failed(e) => return Outcome::Failed(e),
            }
        }
    }

    /// Serves until an upgrade succeeded (the new pid) or an immediate stop (its outcome).
    async fn serve_until_upgraded(
        &mut self,
        signals: &mut Signals,
        standby: &mut standby_schedule::Schedule,
    ) -> Result<Option<u32>, Outcome> {
        self.refresh_standby();
        let exit = self.upgrader.exit();
        tokio::pin!(exit);
        // The upgrade runs right here, on the thread that waits for signals, not on the
        // runtime's workers: under load they are busy serving, and every moment spent in
        // their queues is added to the upgrade.
        let mut in_flight: Option<BoxFuture<UpgradeResult>> = None;
        // Who asked for the upgrade in flight through `UpgradeRequester`, to be told its end.
        let mut asked: Option<oneshot::Sender<UpgradeResult>> = None;
        let mut new_pid = None;
        // A storm of signals makes one line a second, not one each.
        let mut ignored_hups = Throttle::default();
        loop {
            tokio::select! {
                _ = signals.term.recv() => return Err(self.stop(in_flight, signals, "SIGTERM").await),
                _ = signals.int.recv() => return Err(self.stop(in_flight, signals, "SIGINT").await),
                Some(e) = self.errors_rx.recv() => return Err(self.stop_now(in_flight, Outcome::Failed(e)).await),
                _ = signals.hup.recv() => {
                    if !self.upgrades_enabled {
                        if let Some(more) = ignored_hups.log_now() {
                            tracing::warn!(more_since_last = more, "SIGHUP ignored: upgrades are disabled (set FLIP_UPGRADES_ENABLED=1, or the prefix your main uses, to enable them)");
                        }
                    } else if in_flight.is_some() {
                        // One at a time; observers hear nothing of it, so a reload in progress
                        // is not reported as ended.
                        if let Some(more) = ignored_hups.log_now() {
                            tracing::warn!(more_since_last = more, "SIGHUP ignored: {}", Error::from(Repr::InProgress));
                        }
                    } else {
                        in_flight = Some(Box::pin(upgrade(self.upgrader.clone(), self.observers.clone(), "SIGHUP", false)));
                    }
                }
                Some(super::requests::Asked { rollback, reply }) = self.requests_rx.recv() => {
                    if !self.upgrades_enabled {
                        let _ = reply.send(UpgradeResult::refused(Error::from(Repr::UpgradesDisabled)));
                    } else if in_flight.is_some() {
                        let _ = reply.send(UpgradeResult::refused(Error::from(Repr::InProgress)));
                    } else {
                        let why = if rollback { "rollback requested" } else { "requested" };
                        in_flight = Some(Box::pin(upgrade(self.upgrader.clone(), self.observers.clone(), why, rollback)));
                        asked = Some(reply);
                    }
                }
                done = async {
                    match in_flight.as_mut() {
                        Some(upgrade) => upgrade.await,
                        None => std::future::pending().await,
                    }
                }, if in_flight.is_some() => {
                    in_flight = None;
                    new_pid = new_pid.or(done.new_pid());
                    if done.new_pid().is_none() {
                        self.refresh_standby();
                    }
                    if let Some(reply) = asked.take() {
                        let _ = reply.send(done);
                    }
                }
                () = standby.due(), if in_flight.is_none() => self.refresh_standby(),
                () = &mut exit => break,
            }
        }
        // The upgrade that succeeded may not have returned yet.
        if let Some(upgrade) = in_flight.take() {
            let done = upgrade.await;
            new_pid = new_pid.or(done.new_pid());
            if let Some(reply) = asked.take() {
                let _ = reply.send(done);
            }
        }
        Ok(new_pid)
    }

    /// Drains within the grace period, then waits out the probation (if any); takes service
    /// back when the successor died meanwhile. The observers hear the verdict once: committed
    /// or rolled back.
    async fn drain(&mut self, signals: &mut Signals, successor: Option<u32>) -> DrainEnd {
        let mut verdict_pending = true;
        if self.probation.is_zero() {
            verdict_pending = false;
            self.observers.each(|o| o.committed(successor));
        }
        let end = self
            .drain_on_probation(signals, successor, &mut verdict_pending)
            .await;
        if verdict_pending && matches!(end, DrainEnd::Ended(_)) {
            // Stopped, or out of time, before the window's end: the successor serves on.
            self.observers.each(|o| o.committed(successor));
        }
        end
    }

    async fn drain_on_probation(
        &mut self,
        signals: &mut Signals,
        successor: Option<u32>,
        verdict_pending: &mut bool,
    ) -> DrainEnd {
        let ready_at = tokio::time::Instant::now();
        let window_end = ready_at + self.probation;
        tracing::info!(grace = ?self.grace, probation = ?self.probation, "draining");
        let action = self.stop_action.clone();
        let mut group = self.start_drain();
        // A task of its own, so the drain goes on should this process take service back.
        let mut drain = tokio::spawn(async move {
            if let Some(action) = action {
                action().await;
            }
            while group.join_next().await.is_some() {}
        });
        let deadline = tokio::time::sleep(self.grace);
        tokio::pin!(deadline);
        let successor_exited = self.upgrader.successor_exited();
        tokio::pin!(successor_exited);
        let mut watching_successor = true;
        // A draining stop reached this process while it drains (StopMode::Drain).
        let mut stopping = None;
        let committed = self.upgrader.successor_committed();
        tokio::pin!(committed);
        // The drain is over, and this process waits out the probation.
        let mut drained = false;
        loop {
            tokio::select! {
                _ = &mut drain, if !drained => {
                    if !(*verdict_pending && watching_successor) {
                        return DrainEnd::Ended(Drain::Completed);
                    }
                    drained = true;
                    let left = window_end.saturating_duration_since(tokio::time::Instant::now());
                    tracing::info!(?left, "drained; on probation, ready to take service back");
                    self.upgrader.on_probation();
                }
                () = tokio::time::sleep_until(window_end), if *verdict_pending => {
                    *verdict_pending = false;
                    tracing::info!(successor, probation = ?self.probation, "upgrade committed: the probation is over");
                    self.observers.each(|o| o.committed(successor));
                    if drained {
                        return DrainEnd::Ended(Drain::Completed);
                    }
                }
                () = &mut committed, if *verdict_pending => {
                    *verdict_pending = false;
                    tracing::info!(successor, "upgrade committed: the successor upgrades in turn");
                    self.observers.each(|o| o.committed(successor));
                    if drained {
                        return DrainEnd::Ended(Drain::Completed);
                    }
                }
                // The grace period bounds the drain, not the probation that follows it.
                () = &mut deadline, if !drained => return DrainEnd::Ended(Drain::GracePeriodExpired),
                _ = signals.term.recv() => {
                    if let Some(forced) = self.stop_while_draining(&mut stopping, "SIGTERM") {
                        return DrainEnd::Ended(forced);
                    }
                    watching_successor = false;
                    if drained {
                        return DrainEnd::Ended(Drain::Completed);
                    }
                }
                _ = signals.int.recv() => {
                    if let Some(forced) = self.stop_while_draining(&mut stopping, "SIGINT") {
                        return DrainEnd::Ended(forced);
                    }
                    watching_successor = false;
                    if drained {
                        return DrainEnd::Ended(Drain::Completed);
                    }
                }
                Some(e) = self.errors_rx.recv() => {
                    tracing::debug!(error = %crate::error::Chain(&*e), "error while draining, ignored");
                }
                status = &mut successor_exited, if watching_successor => {
                    watching_successor = false;
                    // With several generations draining, the successor may have upgraded in
                    // turn and drained: someone else serves.
                    let clean = matches!(status, crate::error::ExitStatus::Code(0 | 3));
                    if clean && self.upgrader.options().max_draining.is_some() {
                        // It may have been stopped too: then it told us (SIGTERM) as it went.
                        tracing::info!(%status, "the successor upgraded in turn or was stopped, and exited; still draining");
                        continue;
                    }
                    if clean {
                        // It cannot have upgraded while we run: it was stopped, and a stop
                        // stops every generation. Only an abnormal end hands service back.
                        if drained {
                            tracing::info!(%status, "the successor was stopped; the probation ends");
                            return DrainEnd::Ended(Drain::Completed);
                        }
                        if self.stop_mode == StopMode::Drain {
                            tracing::info!(%status, "the successor was stopped; finishing the drain");
                            self.give_up_service();
                            continue;
                        }
                        tracing::info!(%status, "the successor was stopped; stopping too");
                        return DrainEnd::Ended(Drain::Forced("the successor's stop"));
                    }
                    // Nobody serves now but us: take service back on the same sockets.
                    if *verdict_pending {
                        *verdict_pending = false;
                        let why = if status == crate::error::ExitStatus::Code(super::HEALTH_CHECK_FAILED_EXIT) {
                            ": its health check failed"
                        } else {
                            ""
                        };
                        let cause = format!(
                            "the successor{} ended ({status}{why}) {} ms after it said ready",
                            successor.map(|p| format!(" {p}")).unwrap_or_default(),
                            ready_at.elapsed().as_millis()
                        );
                        tracing::warn!(%cause, "upgrade rolled back: serving again on the same sockets");
                        self.observers.each(|o| o.rolled_back(&cause));
                    } else {
                        tracing::error!(%status, "the successor died; taking service back");
                    }
                    return match self.resume().await {
                        Ok(()) => DrainEnd::Resumed,
                        Err(e) => DrainEnd::Failed(e),
                    };
                }
            }
        }
    }

    /// In a successor with health checks: runs them while its predecessor runs (drains, then
    /// waits out its probation); a failure ends this process so that the predecessor takes
    /// service back.
    fn check_health_on_probation(&self) {
        if self.health_checks.is_empty() || !self.upgrader.has_parent() {
            return;
        }
        let checks = self.health_checks.clone();
        let interval = self.health_interval;
        let upgrader = self.upgrader.clone();
        let observers = self.observers.clone();
        tokio::spawn(async move {
            while upgrader.predecessor_alive() {
                for (name, check) in &checks {
                    let failure = match tokio::time::timeout(interval, check()).await {
                        Ok(Ok(())) => {
                            observers.each(|o| o.health_checked(name, Ok(())));
                            continue;
                        }
                        Ok(Err(e)) => e,
                        Err(_) => format!("no answer within {interval:?}"),
                    };
                    observers.each(|o| o.health_checked(name, Err(&failure)));
                    tracing::error!(check = %name, error = %failure, "health check failed during the probation: exiting so that the predecessor takes service back");
                    std::process::exit(super::HEALTH_CHECK_FAILED_EXIT);
                }
                tokio::time::sleep(interval).await;
            }
            tracing::debug!("the predecessor exited: health checks stop");
        });
    }

    /// Starts or replaces the standby process when [`Options::standby`] asks for one.
    fn refresh_standby(&self) {
        if let Err(e) = self.upgrader.refresh_standby() {
            tracing::warn!(error = %crate::error::Chain(&e), "cannot start a standby process; upgrades start one afresh");
        }
    }

    /// Signals [`Shutdown`] and takes the drain group, for the caller to wait on.
    pub(super) fn start_drain(&mut self) -> JoinSet<()> {
        self.shutdown_tx.send_replace(Stage::Stopping);
        self.tasks.take()
    }

    /// Serves again after the successor died during the drain: new shutdown token and drain
    /// group, the starters once more (the registry hands out the same sockets), and the
    /// upgrader ready again with the pid file naming this process.
    async fn resume(&mut self) -> Result<(), BoxError> {
        self.shutdown_tx = watch::channel(Stage::Starting).0;
        drop(self.tasks.take());
        self.upgrader.resume()?;
        self.start().await?;
        self.shutdown_tx.send_replace(Stage::Serving);
        tracing::info!(pid = std::process::id(), "serving again");
        self.observers.each(|o| o.serving_again());
        Ok(())
    }
}

/// The signals [`Bootstrap::wait`] handles.
enum DrainEnd {
    /// The predecessor exits.
    Ended(Drain),
    /// The successor died and this one serves again.
    Resumed,
    /// The successor died and this one could not serve again.
    Failed(BoxError),
}

/// One upgrade, logged with its outcome and duration; the new pid on success.
async fn upgrade(
    upgrader: Upgrader,
    observers: Observers,
    why: &'static str,
    rollback: bool,
) -> UpgradeResult {
    let started = Instant::now();
    if rollback {
        tracing::info!(previous_build = ?upgrader.previous_build(), "{why}: upgrading to the previous build");
    } else {
        tracing::info!("{why}: upgrading");
    }
    observers.each(|o| o.upgrade_started());
    let result = if rollback {
        upgrader.rollback().await
    } else {
        upgrader.upgrade().await
    };
    let elapsed = started.elapsed();
    match &result {
        Ok(pid) => {
            let started = upgrader.last_successor_start().map(tracing::field::display);
            tracing::info!(new_pid = pid, ?elapsed, started, "upgrade succeeded");
            observers.each(|o| o.upgraded(*pid));
        }
        Err(e) => {
            observers.each(|o| o.upgrade_failed(e));
            tracing::warn!(error = %crate::error::Chain(e), ?elapsed, "upgrade failed; still serving");
        }
    }
    UpgradeResult { result, elapsed }
}
