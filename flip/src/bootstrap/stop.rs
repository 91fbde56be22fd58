//! Stopping: at once (Gitaly's contract), or draining ([`StopMode::Drain`]), for the serving
//! process and for one that drains after an upgrade.

use std::time::Duration;

use super::signals::Signals;
use super::{Bootstrap, BoxFuture, Drain, Outcome, StopMode, UpgradeResult};

/// How long a draining stop waits for the servers to accept the connections already queued.
const ACCEPT_QUEUE_WAIT: Duration = Duration::from_secs(1);

impl Bootstrap {
    /// SIGTERM or SIGINT while this process drains after an upgrade. Stopping at once, or on
    /// a second signal, ends the drain (the returned end); a first signal with
    /// [`StopMode::Drain`] lets it go on, without this process's copies of the sockets and
    /// without taking service back.
    pub(super) fn stop_while_draining(
        &self,
        stopping: &mut bool,
        sig: &'static str,
    ) -> Option<Drain> {
        if self.stop_mode == StopMode::Immediate || *stopping {
            return Some(Drain::Forced(sig));
        }
        *stopping = true;
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
        let mut drain = tokio::select! {
            () = drained => Drain::Completed,
            () = tokio::time::sleep_until(deadline) => Drain::GracePeriodExpired,
            _ = signals.term.recv() => Drain::Forced("SIGTERM"),
            _ = signals.int.recv() => Drain::Forced("SIGINT"),
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
                    _ = signals.term.recv() => {
                        self.upgrader.stop_elders();
                        drain = Drain::Forced("SIGTERM");
                        break;
                    }
                    _ = signals.int.recv() => {
                        self.upgrader.stop_elders();
                        drain = Drain::Forced("SIGINT");
                        break;
                    }
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
