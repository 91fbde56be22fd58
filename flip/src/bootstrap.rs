//! Starters, signals, readiness, the wait loop and the grace period: Gitaly's `bootstrap`.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::error::Error;
use crate::fds::Listener;
use crate::upgrader::{Options, Upgrader};

/// Default time the old process has to drain after an upgrade.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(60);

/// Any error a starter or a server reports.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A boxed future, as starters and stop actions return them.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Starters and the stop action can run more than once: again when this process takes service
/// back after its successor died.
type StarterFn = Arc<dyn Fn(StartContext) -> BoxFuture<Result<(), BoxError>> + Send + Sync>;
type StopAction = Arc<dyn Fn() -> BoxFuture<()> + Send + Sync>;

/// Sends runtime errors of a server to [`Bootstrap::wait`], which then stops at once.
///
/// During the grace period after an upgrade, errors are logged and otherwise ignored: a listener
/// that fails while draining does not cut the drain short.
#[derive(Debug, Clone)]
pub struct ErrorSender(mpsc::UnboundedSender<BoxError>);

impl ErrorSender {
    /// Reports a runtime error.
    pub fn send(&self, error: impl Into<BoxError>) {
        // The receiver lives as long as the Bootstrap's wait: after that nobody listens.
        let _ = self.0.send(error.into());
    }
}

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
pub struct Shutdown(watch::Receiver<Stage>);

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
    /// A token and its trigger, for servers run without a [`Bootstrap`] (the Bootstrap makes
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

/// What a starter receives: the listen function, the error channel, and the drain group.
///
/// Serving tasks spawned with [`StartContext::serve`] form the drain group: the default stop
/// action signals [`Shutdown`] and waits for all of them, so a server that watches its
/// [`StartContext::shutdown`] token needs no other wiring to drain on upgrade.
#[derive(Clone)]
pub struct StartContext {
    upgrader: Upgrader,
    errors: ErrorSender,
    shutdown: watch::Receiver<Stage>,
    tasks: Arc<std::sync::Mutex<JoinSet<()>>>,
}

impl std::fmt::Debug for StartContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartContext").finish_non_exhaustive()
    }
}

impl StartContext {
    /// The listen function: a listener from the upgrader's registry (`tcp`, `tcp4`, `tcp6`,
    /// `unix`). On first boot a stale unix socket path is replaced; during an upgrade the
    /// inherited socket is returned.
    pub fn listen(&self, network: &str, address: &str) -> Result<Listener, Error> {
        self.upgrader.fds().listen(network, address)
    }

    /// A tokio TCP listener on `address` from the registry.
    pub fn tcp_listener(&self, address: &str) -> Result<tokio::net::TcpListener, Error> {
        let l = self.upgrader.fds().tcp_listener(address)?;
        tokio::net::TcpListener::from_std(l).map_err(|source| Error::Socket {
            network: "tcp".into(),
            address: address.into(),
            source,
        })
    }

    /// A tokio unix listener at `path` from the registry.
    pub fn unix_listener(&self, path: &str) -> Result<tokio::net::UnixListener, Error> {
        let l = self.upgrader.fds().unix_listener(path)?;
        tokio::net::UnixListener::from_std(l).map_err(|source| Error::Socket {
            network: "unix".into(),
            address: path.into(),
            source,
        })
    }

    /// The upgrader, for its registry (datagram sockets, files) and state.
    pub fn upgrader(&self) -> &Upgrader {
        &self.upgrader
    }

    /// The channel for runtime errors.
    pub fn errors(&self) -> ErrorSender {
        self.errors.clone()
    }

    /// A token that resolves when the graceful stop begins.
    pub fn shutdown(&self) -> Shutdown {
        Shutdown(self.shutdown.clone())
    }

    /// Runs a serving task in the drain group: an error it returns is a runtime error, and the
    /// graceful stop waits for it to end (within the grace period).
    pub fn serve<F, E>(&self, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let errors = self.errors.clone();
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.spawn(async move {
            if let Err(e) = task.await {
                errors.send(e);
            }
        });
    }
}

/// How [`Bootstrap::wait`] ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// SIGTERM or SIGINT: immediate stop, nothing drained.
    Signaled(&'static str),
    /// A starter reported a runtime error: immediate stop.
    Failed(BoxError),
    /// A new process took over; this one drained.
    Upgraded {
        /// Pid of the new process.
        new_pid: Option<u32>,
        /// How the drain ended.
        drain: Drain,
    },
}

/// How the grace period after an upgrade ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Drain {
    /// Every server finished its work.
    Completed,
    /// The grace period ran out first.
    GracePeriodExpired,
    /// A second SIGTERM or SIGINT ended it.
    Forced(&'static str),
    /// The new process died during the drain and this one took service back; never part of
    /// an [`Outcome`].
    Resumed,
}

impl Outcome {
    /// The exit code `#[flip::main]` ends the process with:
    ///
    /// | code | meaning |
    /// |---|---|
    /// | 0 | stopped by SIGTERM/SIGINT, or upgraded and fully drained |
    /// | 1 | a starter failed (at setup or at run time) |
    /// | 2 | bad environment or configuration (reported before start) |
    /// | 3 | upgraded, but the drain was cut short (grace period expired, or forced) |
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Signaled(_) => 0,
            Outcome::Failed(_) => 1,
            Outcome::Upgraded {
                drain: Drain::Completed,
                ..
            } => 0,
            Outcome::Upgraded { .. } => 3,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Signaled(sig) => write!(f, "stopped by {sig}"),
            Outcome::Failed(e) => write!(f, "a server failed: {e}"),
            Outcome::Upgraded { new_pid, drain } => {
                match new_pid {
                    Some(pid) => write!(f, "upgraded to pid {pid}; ")?,
                    None => write!(f, "upgraded; ")?,
                }
                match drain {
                    Drain::Completed => write!(f, "drain completed"),
                    Drain::GracePeriodExpired => {
                        write!(f, "grace period expired before the drain completed")
                    }
                    Drain::Forced(sig) => write!(f, "drain forced to end by {sig}"),
                    Drain::Resumed => write!(f, "service taken back"),
                }
            }
        }
    }
}

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
///                 _ = shutdown.wait() => return Ok::<_, std::io::Error>(()),
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
    starters: Vec<(String, StarterFn)>,
    stop_action: Option<StopAction>,
    errors_tx: ErrorSender,
    errors_rx: mpsc::UnboundedReceiver<BoxError>,
    shutdown_tx: watch::Sender<Stage>,
    tasks: Arc<std::sync::Mutex<JoinSet<()>>>,
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
        let (tx, rx) = mpsc::unbounded_channel();
        let (shutdown_tx, _) = watch::channel(Stage::Starting);
        Ok(Bootstrap {
            upgrader,
            upgrades_enabled,
            grace: DEFAULT_GRACE_PERIOD,
            starters: Vec::new(),
            stop_action: None,
            errors_tx: ErrorSender(tx),
            errors_rx: rx,
            shutdown_tx,
            tasks: Arc::new(std::sync::Mutex::new(JoinSet::new())),
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

    /// How long the old process may drain after an upgrade (default 60 s).
    pub fn set_grace_period(&mut self, grace: Duration) -> &mut Self {
        self.grace = grace;
        self
    }

    /// The grace period in force.
    pub fn grace_period(&self) -> Duration {
        self.grace
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
        let run: StarterFn = Arc::new(move |ctx| {
            let fut = starter(ctx);
            Box::pin(async move { fut.await.map_err(Into::into) })
        });
        self.starters.push((name.into(), run));
        self
    }

    /// Names of the registered starters, in the order they run.
    pub fn starter_names(&self) -> Vec<&str> {
        self.starters.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Calls every starter in order. The first setup error stops here and is returned.
    pub async fn start(&mut self) -> Result<(), StartError> {
        let starters = self.starters.clone();
        for (name, run) in starters {
            let ctx = StartContext {
                upgrader: self.upgrader.clone(),
                errors: self.errors_tx.clone(),
                shutdown: self.shutdown_tx.subscribe(),
                tasks: self.tasks.clone(),
            };
            tracing::debug!(starter = %name, "starting");
            run(ctx).await.map_err(|source| StartError {
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
    /// [`Outcome::Failed`] at once, and the parent, if any, keeps serving.
    pub async fn wait(mut self) -> Outcome {
        let signals = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            crate::signal::upgrade_signal(),
        );
        let (mut term, mut int, mut hup) = match signals {
            (Ok(t), Ok(i), Ok(h)) => (t, i, h),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return Outcome::Failed(format!("cannot subscribe to signals: {e}").into());
            }
        };
        if let Err(e) = self.upgrader.ready() {
            // The servers may have accepted connections already: serve those (the parent, still
            // serving, takes every new one) before giving up.
            tracing::error!(error = %e, "cannot declare readiness; draining what was accepted");
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

        let mut standby_check = tokio::time::interval(STANDBY_CHECK);
        standby_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        standby_check.reset();
        let upgrader = self.upgrader.clone();
        let parent_gone = async move { upgrader.parent_exited().await };
        tokio::pin!(parent_gone);
        // Without a standby, neither the periodic check nor the parent watch is armed: no timer
        // wakes this process and no descriptor is held for them.
        let standby = self.upgrades_enabled && self.upgrader.options().standby_enabled();
        let mut parent_running = standby && self.upgrader.has_parent();
        loop {
            self.refresh_standby();
            // Serving, until an upgrade succeeds (or an immediate stop).
            let exit = self.upgrader.exit();
            tokio::pin!(exit);
            // The upgrade runs right here, on the thread that waits for signals, not on the
            // runtime's workers: under load they are busy serving, and every moment spent in
            // their queues is added to the upgrade.
            let mut in_flight: Option<BoxFuture<Option<u32>>> = None;
            let mut new_pid = None;
            loop {
                tokio::select! {
                    _ = term.recv() => return self.stop_now(in_flight, Outcome::Signaled("SIGTERM")).await,
                    _ = int.recv() => return self.stop_now(in_flight, Outcome::Signaled("SIGINT")).await,
                    Some(e) = self.errors_rx.recv() => return self.stop_now(in_flight, Outcome::Failed(e)).await,
                    _ = hup.recv() => {
                        if !self.upgrades_enabled {
                            tracing::warn!("SIGHUP ignored: upgrades are disabled (set FLIP_UPGRADES_ENABLED=1, or the prefix your main uses, to enable them)");
                        } else if in_flight.is_some() {
                            // Refused at once (in progress); this logs why.
                            upgrade(self.upgrader.clone()).await;
                        } else {
                            in_flight = Some(Box::pin(upgrade(self.upgrader.clone())));
                        }
                    }
                    done = async {
                        match in_flight.as_mut() {
                            Some(upgrade) => upgrade.await,
                            None => std::future::pending().await,
                        }
                    }, if in_flight.is_some() => {
                        in_flight = None;
                        new_pid = new_pid.or(done);
                        if done.is_none() {
                            self.refresh_standby();
                        }
                    }
                    _ = standby_check.tick(), if in_flight.is_none() && standby => {
                        self.refresh_standby();
                    }
                    _ = &mut parent_gone, if parent_running => {
                        parent_running = false;
                        self.refresh_standby();
                    }
                    () = &mut exit => break,
                }
            }
            // The upgrade that succeeded may not have returned yet.
            if let Some(upgrade) = in_flight.take() {
                new_pid = new_pid.or(upgrade.await);
            }

            // Draining, within the grace period.
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
            let drain = loop {
                tokio::select! {
                    _ = &mut drain => break Drain::Completed,
                    () = &mut deadline => break Drain::GracePeriodExpired,
                    _ = term.recv() => break Drain::Forced("SIGTERM"),
                    _ = int.recv() => break Drain::Forced("SIGINT"),
                    Some(e) = self.errors_rx.recv() => {
                        tracing::debug!(error = %e, "error while draining, ignored");
                    }
                    status = &mut successor_exited => {
                        // Nobody serves now but us: take service back on the same sockets.
                        tracing::error!(%status, "the new process died; taking service back");
                        if let Err(e) = self.resume().await {
                            return Outcome::Failed(e);
                        }
                        break Drain::Resumed;
                    }
                }
            };
            if drain != Drain::Resumed {
                return Outcome::Upgraded { new_pid, drain };
            }
        }
    }

    /// Starts or replaces the standby process when [`Options::standby`] asks for one.
    fn refresh_standby(&self) {
        if let Err(e) = self.upgrader.refresh_standby() {
            tracing::warn!(error = %e, "cannot start a standby process; upgrades start one afresh");
        }
    }

    /// Signals [`Shutdown`] and takes the drain group, for the caller to wait on.
    fn start_drain(&mut self) -> JoinSet<()> {
        self.shutdown_tx.send_replace(Stage::Stopping);
        std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Serves again after the successor died during the drain: new shutdown token and drain
    /// group, the starters once more (the registry hands out the same sockets), and the
    /// upgrader ready again with the pid file naming this process.
    async fn resume(&mut self) -> Result<(), BoxError> {
        self.shutdown_tx = watch::channel(Stage::Starting).0;
        *self.tasks.lock().unwrap_or_else(|p| p.into_inner()) = JoinSet::new();
        self.upgrader.resume()?;
        self.start().await?;
        self.shutdown_tx.send_replace(Stage::Serving);
        tracing::info!(pid = std::process::id(), "serving again");
        Ok(())
    }

    /// Immediate stop: cancels an upgrade in flight and waits (briefly) until its new process
    /// is killed and reaped, so none outlives this one.
    async fn stop_now(
        &self,
        in_flight: Option<BoxFuture<Option<u32>>>,
        outcome: Outcome,
    ) -> Outcome {
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

/// How often the serving process checks that its standby process still runs the binary an
/// upgrade would start.
const STANDBY_CHECK: Duration = Duration::from_secs(1);

/// One upgrade, logged with its outcome and duration; the new pid on success.
async fn upgrade(upgrader: Upgrader) -> Option<u32> {
    let started = Instant::now();
    tracing::info!("SIGHUP: upgrading");
    match upgrader.upgrade().await {
        Ok(pid) => {
            tracing::info!(new_pid = pid, elapsed = ?started.elapsed(), "upgrade succeeded");
            Some(pid)
        }
        Err(e) => {
            tracing::warn!(error = %e, elapsed = ?started.elapsed(), "upgrade failed; still serving");
            None
        }
    }
}

/// A starter failed to set up.
#[derive(Debug, thiserror::Error)]
#[error("starter {starter} failed: {source}")]
pub struct StartError {
    /// The starter's name.
    pub starter: String,
    /// Its error.
    #[source]
    pub source: BoxError,
}
