//! Starters, signals, readiness, the wait loop and the grace period: Gitaly's `bootstrap`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::error::{Error, Repr};
use crate::upgrader::Options;
use crate::upgrader::Upgrader;

mod binary_watch;
mod context;
mod group;
mod observer;
mod outcome;
mod shutdown;
mod signals;
mod standby_schedule;
pub(crate) mod startup;
mod stop;

pub use context::{ErrorSender, StartContext};
pub use observer::Observer;
pub use outcome::{Drain, Outcome, StartError, StopMode};
pub(crate) use shutdown::Stage;
pub use shutdown::{Shutdown, ShutdownTrigger};
use signals::{Signals, Throttle};

/// Default time the predecessor has to drain after an upgrade.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(60);

/// Any error a starter or a server reports.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A boxed future, as starters and stop actions return them.
pub type BoxFuture<T> = crate::sync::BoxFuture<'static, T>;

/// Starters and the stop action can run more than once: again when this process takes service
/// back after its successor died.
type StarterFn = Arc<dyn Fn(StartContext) -> BoxFuture<Result<(), BoxError>> + Send + Sync>;
type StopAction = Arc<dyn Fn() -> BoxFuture<()> + Send + Sync>;

/// Graceful upgrades for a set of servers, as Gitaly's `bootstrap` package.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let mut bootstrap = flip::Bootstrap::new(Some("/run/app.pid"), true)?;
/// bootstrap.register_starter("http", |ctx: flip::StartContext| async move {
///     let listener = ctx.tcp_listener("127.0.0.1:8080")?;
///     let mut shutdown = ctx.shutdown();
///     ctx.serve(async move {
///         loop {
///             tokio::select! {
///                 _ = shutdown.draining() => return Ok::<_, std::io::Error>(()),
///                 conn = listener.accept() => { let _ = conn?; /* serve */ }
///             }
///         }
///     });
///     Ok::<_, flip::Error>(())
/// });
/// bootstrap.start().await?;
/// let outcome = bootstrap.wait().await;
/// println!("{outcome}");
/// # Ok(()) }
/// ```
pub struct Bootstrap {
    upgrader: Upgrader,
    upgrades_enabled: bool,
    grace: Duration,
    stop_mode: StopMode,
    starters: Vec<(String, StarterFn)>,
    /// flip's own starters, run after the application's.
    services: Vec<(String, StarterFn)>,
    stop_action: Option<StopAction>,
    errors_tx: ErrorSender,
    errors_rx: mpsc::UnboundedReceiver<BoxError>,
    shutdown_tx: watch::Sender<Stage>,
    tasks: group::DrainGroup,
    observers: Observers,
    requests_tx: mpsc::UnboundedSender<oneshot::Sender<UpgradeResult>>,
    requests_rx: mpsc::UnboundedReceiver<oneshot::Sender<UpgradeResult>>,
}

/// Every [`Observer`], told in the order they were added.
#[derive(Clone, Default)]
struct Observers(Arc<Vec<Arc<dyn Observer>>>);

impl Observers {
    fn each(&self, f: impl Fn(&dyn Observer)) {
        for o in self.0.iter() {
            f(o.as_ref());
        }
    }
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrap")
            .field("upgrades_enabled", &self.upgrades_enabled)
            .field("grace", &self.grace)
            .field(
                "starters",
                &self.starters.iter().map(|s| &s.0).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Bootstrap {
    /// Builds the upgrader (reading the handoff, if any) with an optional pid file. See
    /// [`Upgrader::new`] for what that waits for and when it fails.
    pub fn new(
        pid_file: Option<impl Into<PathBuf>>,
        upgrades_enabled: bool,
    ) -> Result<Bootstrap, Error> {
        let mut options = Options::new();
        if let Some(p) = pid_file {
            options = options.pid_file(p);
        }
        Self::with_options(options, upgrades_enabled)
    }

    /// Builds the upgrader with full [`Options`].
    pub fn with_options(options: Options, upgrades_enabled: bool) -> Result<Bootstrap, Error> {
        let upgrader = Upgrader::new(options)?;
        let (requests_tx, requests_rx) = mpsc::unbounded_channel();
        let (tx, rx) = mpsc::unbounded_channel();
        let (shutdown_tx, _) = watch::channel(Stage::Starting);
        Ok(Bootstrap {
            upgrader,
            upgrades_enabled,
            grace: DEFAULT_GRACE_PERIOD,
            stop_mode: StopMode::default(),
            starters: Vec::new(),
            services: Vec::new(),
            stop_action: None,
            errors_tx: ErrorSender(tx),
            errors_rx: rx,
            shutdown_tx,
            tasks: group::DrainGroup::default(),
            observers: Observers::default(),
            requests_tx,
            requests_rx,
        })
    }

    /// The upgrader underneath.
    pub fn upgrader(&self) -> &Upgrader {
        &self.upgrader
    }

    /// Whether SIGHUP upgrades.
    pub fn upgrades_enabled(&self) -> bool {
        self.upgrades_enabled
    }

    /// How long the predecessor may drain after an upgrade (default 60 s).
    pub fn set_grace_period(&mut self, grace: Duration) -> &mut Self {
        self.grace = grace;
        self
    }

    /// The grace period in force.
    pub fn grace_period(&self) -> Duration {
        self.grace
    }

    /// What SIGTERM and SIGINT do: stop at once (the default, as Gitaly's bootstrap), or
    /// drain (see [`StopMode`]).
    pub fn set_stop_mode(&mut self, mode: StopMode) -> &mut Self {
        self.stop_mode = mode;
        self
    }

    /// What SIGTERM and SIGINT do.
    pub fn stop_mode(&self) -> StopMode {
        self.stop_mode
    }

    /// Replaces the stop action, which runs at the start of the grace period after
    /// [`Shutdown`] has been signalled. The drain waits for it and for every task of the drain
    /// group ([`StartContext::serve`]).
    pub fn set_stop_action<F, Fut>(&mut self, action: F) -> &mut Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.stop_action = Some(Arc::new(move || Box::pin(action())));
        self
    }

    /// Adds a starter; [`start`](Bootstrap::start) calls starters in registration order.
    /// A starter runs again if this process takes service back after its successor died.
    pub fn register_starter<F, Fut, E>(&mut self, name: impl Into<String>, starter: F) -> &mut Self
    where
        F: Fn(StartContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.starters.push((name.into(), starter_fn(starter)));
        self
    }

    /// A handle that asks for upgrades as `SIGHUP` does and learns how each ended.
    pub fn upgrade_requester(&self) -> UpgradeRequester {
        UpgradeRequester(self.requests_tx.clone())
    }

    /// Adds an observer, told of readiness, upgrades and stops (see [`Observer`]).
    pub fn observe(&mut self, observer: impl Observer) -> &mut Self {
        let mut all: Vec<Arc<dyn Observer>> = self.observers.0.iter().cloned().collect();
        all.push(Arc::new(observer));
        self.observers = Observers(Arc::new(all));
        self
    }

    /// Adds a starter of flip's own (the control socket): it runs after the application's and
    /// is not among [`starter_names`](Bootstrap::starter_names).
    pub(crate) fn register_service<F, Fut, E>(&mut self, name: &str, starter: F)
    where
        F: Fn(StartContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.services.push((name.to_owned(), starter_fn(starter)));
    }

    /// Names of the registered starters, in the order they run.
    pub fn starter_names(&self) -> Vec<&str> {
        self.starters.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Calls every starter in order. The first setup error stops here and is returned.
    pub async fn start(&mut self) -> Result<(), StartError> {
        let starters = self.starters.iter().chain(&self.services).cloned();
        let starters: Vec<_> = starters.collect();
        for (name, run) in starters {
            let ctx = StartContext {
                upgrader: self.upgrader.clone(),
                errors: self.errors_tx.clone(),
                shutdown: self.shutdown_tx.subscribe(),
                tasks: self.tasks.clone(),
            };
            tracing::debug!(starter = %name, "starting");
            self.tasks
                .batched(run(ctx))
                .await
                .map_err(|source| StartError {
                    starter: name,
                    source,
                })?;
        }
        Ok(())
    }

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
        let mut standby =
            standby_schedule::Schedule::new(&self.upgrader, self.upgrades_enabled, inherited_watch);
        loop {
            let new_pid = match self.serve_until_upgraded(&mut signals, &mut standby).await {
                Ok(new_pid) => new_pid,
                Err(stopped) => return stopped,
            };
            match self.drain(&mut signals).await {
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
                        in_flight = Some(Box::pin(upgrade(self.upgrader.clone(), self.observers.clone(), "SIGHUP")));
                    }
                }
                Some(reply) = self.requests_rx.recv() => {
                    if !self.upgrades_enabled {
                        let _ = reply.send(UpgradeResult::refused(Error::from(Repr::UpgradesDisabled)));
                    } else if in_flight.is_some() {
                        let _ = reply.send(UpgradeResult::refused(Error::from(Repr::InProgress)));
                    } else {
                        in_flight = Some(Box::pin(upgrade(self.upgrader.clone(), self.observers.clone(), "requested")));
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

    /// Drains within the grace period, or takes service back when the successor died.
    async fn drain(&mut self, signals: &mut Signals) -> DrainEnd {
        tracing::info!(grace = ?self.grace, "draining");
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
        loop {
            tokio::select! {
                _ = &mut drain => return DrainEnd::Ended(Drain::Completed),
                () = &mut deadline => return DrainEnd::Ended(Drain::GracePeriodExpired),
                _ = signals.term.recv() => {
                    if let Some(forced) = self.stop_while_draining(&mut stopping, "SIGTERM") {
                        return DrainEnd::Ended(forced);
                    }
                    watching_successor = false;
                }
                _ = signals.int.recv() => {
                    if let Some(forced) = self.stop_while_draining(&mut stopping, "SIGINT") {
                        return DrainEnd::Ended(forced);
                    }
                    watching_successor = false;
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
                        if self.stop_mode == StopMode::Drain {
                            tracing::info!(%status, "the successor was stopped; finishing the drain");
                            self.give_up_service();
                            continue;
                        }
                        tracing::info!(%status, "the successor was stopped; stopping too");
                        return DrainEnd::Ended(Drain::Forced("the successor's stop"));
                    }
                    // Nobody serves now but us: take service back on the same sockets.
                    tracing::error!(%status, "the successor died; taking service back");
                    return match self.resume().await {
                        Ok(()) => DrainEnd::Resumed,
                        Err(e) => DrainEnd::Failed(e),
                    };
                }
            }
        }
    }

    /// Starts or replaces the standby process when [`Options::standby`] asks for one.
    fn refresh_standby(&self) {
        if let Err(e) = self.upgrader.refresh_standby() {
            tracing::warn!(error = %crate::error::Chain(&e), "cannot start a standby process; upgrades start one afresh");
        }
    }

    /// Signals [`Shutdown`] and takes the drain group, for the caller to wait on.
    fn start_drain(&mut self) -> JoinSet<()> {
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

/// A starter, boxed.
fn starter_fn<F, Fut, E>(starter: F) -> StarterFn
where
    F: Fn(StartContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    Arc::new(move |ctx| {
        let fut = starter(ctx);
        Box::pin(async move { fut.await.map_err(Into::into) })
    })
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
async fn upgrade(upgrader: Upgrader, observers: Observers, why: &'static str) -> UpgradeResult {
    let started = Instant::now();
    tracing::info!("{why}: upgrading");
    observers.each(|o| o.upgrade_started());
    let result = upgrader.upgrade().await;
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

/// How an upgrade ended: the new pid, or why not; and how long it took.
#[derive(Debug)]
pub struct UpgradeResult {
    /// The successor's pid, or the error (a refusal when [`Error::is_refusal`]).
    pub result: Result<u32, Error>,
    /// From the start of the upgrade to its end.
    pub elapsed: Duration,
}

impl UpgradeResult {
    fn refused(error: Error) -> UpgradeResult {
        UpgradeResult {
            result: Err(error),
            elapsed: Duration::ZERO,
        }
    }

    fn new_pid(&self) -> Option<u32> {
        self.result.as_ref().ok().copied()
    }
}

/// Asks a [`Bootstrap`] for an upgrade, as `SIGHUP` does, and learns how it ended: what a
/// control socket needs. Made by [`Bootstrap::upgrade_requester`].
#[derive(Debug, Clone)]
pub struct UpgradeRequester(mpsc::UnboundedSender<oneshot::Sender<UpgradeResult>>);

impl UpgradeRequester {
    /// Starts an upgrade and resolves when it ended. Refused at once (with nothing started)
    /// while another runs or when upgrades are disabled; an error result also when the
    /// Bootstrap is not waiting (not started yet, or gone).
    pub async fn upgrade(&self) -> UpgradeResult {
        let (tx, rx) = oneshot::channel();
        if self.0.send(tx).is_err() {
            return UpgradeResult::refused(Error::from(Repr::Terminating));
        }
        rx.await
            .unwrap_or_else(|_| UpgradeResult::refused(Error::from(Repr::Terminating)))
    }
}
