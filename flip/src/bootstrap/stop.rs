//! Stopping: at once (Gitaly's contract), or draining ([`StopMode::Drain`]), for the serving
//! process and for one that drains after an upgrade.

use std::time::{Duration, Instant};

use super::signals::Signals;
use super::{Bootstrap, BoxFuture, Drain, Outcome, StopMode, UpgradeResult};

/// How long a draining stop waits for the servers to accept the connections already queued.
const ACCEPT_QUEUE_WAIT: Duration = Duration::from_secs(1);

/// A stop signal this soon after the first is the same stop, not a second one: a container
/// init that signals the whole process group (dumb-init), or systemd's `KillMode=control-group`,
/// makes a process get one from them and one passed on by flip (the supervisor, or the serving
/// process telling the older generations). Only a signal after this ends a drain at once.
const SAME_STOP_WITHIN: Duration = Duration::from_secs(1);

/// Whether a stop signal now, the first having come at `first`, is a second stop.
fn a_second_stop(first: Instant) -> bool {
    if first.elapsed() < SAME_STOP_WITHIN {
        tracing::debug!("a stop signal right after the first: the same stop, ignored");
        return false;
    }
    true
}

impl Bootstrap {
    /// SIGTERM or SIGINT while this process drains after an upgrade. Stopping at once, or on
    /// a second signal, ends the drain (the returned end); a first signal with
    /// [`StopMode::Drain`] lets it go on, without this process's copies of the sockets and
    /// without taking service back.
    pub(super) fn stop_while_draining(
        &self,
        stopping: &mut Option<Instant>,
        sig: &'static str,
    ) -> Option<Drain> {
        if self.stop_mode == StopMode::Immediate {
            return Some(Drain::Forced(sig));
        }
        if let Some(first) = *stopping {
            return a_second_stop(first).then_some(Drain::Forced(sig));
        }
        *stopping = Some(Instant::now());
        tracing::info!("{sig}: stopping; finishing the drain (a second signal ends it now)");
        self.give_up_service();
        None
    }

    /// Closes this draining process's copies of the sockets: the service stops, and a listener
    /// only refuses connections once nobody holds it.
    pub(super) fn give_up_service(&self) {
        let closed = self.upgrader.fds().close_all();
        tracing::debug!(closed, "closed this process's copies of the sockets");
    }

    /// SIGTERM or SIGINT while serving.
    pub(super) async fn stop(
        &mut self,
        in_flight: Option<BoxFuture<UpgradeResult>>,
        signals: &mut Signals,
        sig: &'static str,
    ) -> Outcome {
        let first = Instant::now();
        self.upgrader.stop_elders();
        if self.stop_mode == StopMode::Immediate {
            return self.stop_now(in_flight, Outcome::Signaled(sig)).await;
        }
        tracing::info!(grace = ?self.grace, "{sig}: stopping; new connections are refused, accepted ones finish (a second signal ends it now)");
        // Cancels an upgrade in flight and ends the standby (which holds copies of the
        // sockets too), then closes ours: from here on, connections are refused.
        let outcome = self.stop_now(in_flight, Outcome::Signaled(sig)).await;
        // No new TCP connection completes its handshake from here on; the servers still
        // accept what is queued, so that closing the listeners resets nobody.
        let listeners = self.upgrader.fds().drop_new_connections();
        let queued = async {
            for listener in &listeners {
                while crate::sys::socket::accept_queue_len(listener).is_ok_and(|n| n > 0) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        if tokio::time::timeout(ACCEPT_QUEUE_WAIT, queued)
            .await
            .is_err()
        {
            tracing::warn!(waited = ?ACCEPT_QUEUE_WAIT, "the servers did not accept every queued connection; those left are reset");
        }
        drop(listeners);
        self.give_up_service();
        let action = self.stop_action.clone();
        let mut group = self.start_drain();
        let drained = async move {
            if let Some(action) = action {
                action().await;
            }
            while group.join_next().await.is_some() {}
        };
        let deadline = tokio::time::Instant::now() + self.grace;
        tokio::pin!(drained);
        let mut drain = loop {
            tokio::select! {
                () = &mut drained => break Drain::Completed,
                () = tokio::time::sleep_until(deadline) => break Drain::GracePeriodExpired,
                _ = signals.term.recv() => if a_second_stop(first) { break Drain::Forced("SIGTERM") },
                _ = signals.int.recv() => if a_second_stop(first) { break Drain::Forced("SIGINT") },
            }
        };
        // The older generations finish their drains too; this process, the one a service
        // manager follows, ends last (systemd signals what is left of the unit once its main
        // process ended, and a second SIGTERM would cut their drains). A second signal ends
        // theirs too.
        if drain == Drain::Completed {
            while self.upgrader.elders_running() {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(5)) => {}
                    () = tokio::time::sleep_until(deadline) => {
                        drain = Drain::GracePeriodExpired;
                        break;
                    }
                    _ = signals.term.recv() => if a_second_stop(first) {
                        self.upgrader.stop_elders();
                        drain = Drain::Forced("SIGTERM");
                        break;
                    },
                    _ = signals.int.recv() => if a_second_stop(first) {
                        self.upgrader.stop_elders();
                        drain = Drain::Forced("SIGINT");
                        break;
                    },
                }
            }
        }
        match outcome {
            Outcome::Signaled(signal) => Outcome::Stopped { signal, drain },
            other => other,
        }
    }

    /// Immediate stop: cancels an upgrade in flight and waits (briefly) until its new process
    /// is killed and reaped, so none outlives this one.
    pub(super) async fn stop_now(
        &self,
        in_flight: Option<BoxFuture<UpgradeResult>>,
        outcome: Outcome,
    ) -> Outcome {
        self.observers.each(|o| o.stopping());
        self.upgrader.stop();
        if let Some(upgrade) = in_flight
            && tokio::time::timeout(Duration::from_secs(5), upgrade)
                .await
                .is_err()
        {
            tracing::warn!("an upgrade in flight did not end within 5 s of the stop");
        }
        outcome
    }
}
