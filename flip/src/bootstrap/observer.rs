//! What the Bootstrap tells the programs that supervise it: systemd's notification protocol
//! ([`crate::systemd`]), flip's own supervisor, and anything else that wants to follow.

use crate::error::Error;

/// Follows a [`Bootstrap`](crate::Bootstrap) through its life. Every method has an empty
/// default; each is called on the thread that waits for signals, so it must not block.
///
/// ```
/// struct Log;
/// impl flip::Observer for Log {
///     fn upgraded(&self, new_pid: u32) {
///         eprintln!("pid {new_pid} serves now");
///     }
/// }
/// # fn demo(bootstrap: &mut flip::Bootstrap) {
/// bootstrap.observe(Log);
/// # }
/// ```
pub trait Observer: Send + Sync + 'static {
    /// This process declared itself ready. `first` is true on a first start, false in a
    /// process an upgrade started (its predecessor reports [`upgraded`](Observer::upgraded) next).
    fn ready(&self, first: bool) {
        let _ = first;
    }

    /// `SIGHUP` arrived and an upgrade begins.
    fn upgrade_started(&self) {}

    /// The successor `new_pid` is ready and serves; this one drains next.
    fn upgraded(&self, new_pid: u32) {
        let _ = new_pid;
    }

    /// The upgrade failed, or was refused; this process serves on.
    fn upgrade_failed(&self, error: &Error) {
        let _ = error;
    }

    /// The successor ended within the probation (see
    /// [`Bootstrap::set_probation`](crate::Bootstrap::set_probation)): the upgrade is rolled
    /// back, for `cause`; [`serving_again`](Observer::serving_again) follows.
    fn rolled_back(&self, cause: &str) {
        let _ = cause;
    }

    /// The upgrade to `new_pid` is final, and this process exits once its drain is over:
    /// right after [`upgraded`](Observer::upgraded) without a probation; with one, at the
    /// window's end, or earlier when the successor upgrades in turn or is stopped, or this
    /// process is.
    fn committed(&self, new_pid: Option<u32>) {
        let _ = new_pid;
    }

    /// A health check ran in this process while its predecessor waits out its probation
    /// (see [`Bootstrap::register_health_check`](crate::Bootstrap::register_health_check)):
    /// `check` names it, `result` is its error, if any. A failure is followed by this
    /// process's exit. Called on a runtime worker.
    fn health_checked(&self, check: &str, result: Result<(), &str>) {
        let _ = (check, result);
    }

    /// The process that took over died during the drain, and this one serves again.
    fn serving_again(&self) {}

    /// A real stop: SIGTERM or SIGINT, or a server's runtime error, while serving (never from a
    /// process that drains after an upgrade).
    fn stopping(&self) {}
}
