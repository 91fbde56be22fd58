//! Starters, signals, readiness, the wait loop and the grace period: Gitaly's `bootstrap`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::error::Error;
use crate::upgrader::Options;
use crate::upgrader::Upgrader;

mod binary_watch;
mod context;
mod group;
mod observer;
mod outcome;
mod requests;
mod run;
mod shutdown;
mod signals;
mod standby_schedule;
pub(crate) mod startup;
mod stop;

pub use context::{ErrorSender, StartContext};
pub use observer::Observer;
pub use outcome::{Drain, Outcome, StartError, StopMode};
pub use requests::{UpgradeRequester, UpgradeResult};
pub(crate) use shutdown::Stage;
pub use shutdown::{Shutdown, ShutdownTrigger};

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
type HealthFn = Arc<dyn Fn() -> BoxFuture<Result<(), String>> + Send + Sync>;

/// The exit status of a successor whose health check failed during its predecessor's
/// probation (see [`Bootstrap::register_health_check`]): it exits at once, and the
/// predecessor takes service back.
pub const HEALTH_CHECK_FAILED_EXIT: i32 = 4;

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
    probation: Duration,
    health_checks: Vec<(String, HealthFn)>,
    health_interval: Duration,
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
    requests_tx: mpsc::UnboundedSender<requests::Asked>,
    requests_rx: mpsc::UnboundedReceiver<requests::Asked>,
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
            probation: Duration::ZERO,
            health_checks: Vec::new(),
            health_interval: Duration::from_secs(1),
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

    /// How long after an upgrade this process stays, once it drained, ready to take service
    /// back should the successor exit or be killed: the probation (zero, the default, turns
    /// it off).
    ///
    /// The window starts when the successor said it was ready. This process stops accepting
    /// and drains at once, as without probation, but keeps its sockets; once its drain is over
    /// it tells the successor (which may then start its standby) and waits. If the successor
    /// ends within the window, this process serves again on the same sockets (nothing is
    /// refused) and logs `upgrade rolled back` at WARN with the cause. At the end of the window,
    /// or as soon as the successor upgrades in turn, the upgrade is committed and this process
    /// exits.
    ///
    /// `#[flip::main]` sets it from `<PREFIX>_PROBATION` (a duration such as `10s`; `0` turns
    /// it off) or the attribute's `probation = "10s"`; without either it is off. 10 s is a good
    /// window: long enough for a build that crashes on its first requests or timers, short
    /// enough to give the previous generation's memory back soon.
    pub fn set_probation(&mut self, window: Duration) -> &mut Self {
        self.probation = window;
        self
    }

    /// Adds a health check, run during the probation of the upgrade that started this process
    /// (see [`set_probation`](Bootstrap::set_probation)): every
    /// [`health interval`](Bootstrap::set_health_interval) from ready on, as long as the
    /// predecessor runs. A check that fails, or does not answer within the interval, ends
    /// this process at once with exit status [`HEALTH_CHECK_FAILED_EXIT`], after logging
    /// which check failed and why: the predecessor takes service back. A server without a
    /// check is judged by staying alive. `#[flip::health]` registers an `async fn`.
    pub fn register_health_check<F, Fut, E>(
        &mut self,
        name: impl Into<String>,
        check: F,
    ) -> &mut Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.health_checks.push((
            name.into(),
            Arc::new(move || {
                let fut = check();
                Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
            }),
        ));
        self
    }

    /// How often the health checks run during a probation, and how long each may take (1 s
    /// by default; `<PREFIX>_HEALTH_INTERVAL` under `#[flip::main]`).
    pub fn set_health_interval(&mut self, interval: Duration) -> &mut Self {
        self.health_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The probation in force.
    pub fn probation(&self) -> Duration {
        self.probation
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
