//! Runtime support for the code `#[flip::main]` and `#[flip::starter]` generate. Not a public
//! API: its shape follows the macros.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;

pub use inventory;

mod environment;

pub use environment::{EnvError, Environment, MainConfig, parse_duration, read_environment};

use crate::bootstrap::{Bootstrap, BoxError, BoxFuture, Outcome, StartContext};
use crate::error::{Chain, ErrorKind, HandoffError};
use crate::upgrader::Options;

/// A starter collected by `#[flip::starter]`.
#[derive(Debug)]
pub struct StarterEntry {
    /// The function's name.
    pub name: &'static str,
    /// `module_path!()` where it is declared.
    pub module: &'static str,
    /// `line!()` of the declaration.
    pub line: u32,
    /// Calls the starter.
    pub start: fn(StartContext) -> BoxFuture<Result<(), BoxError>>,
}

inventory::collect!(StarterEntry);

/// Every collected starter, in the documented order: by module path, then by position in the
/// source file.
pub fn starters() -> Vec<&'static StarterEntry> {
    let mut all: Vec<&'static StarterEntry> = inventory::iter::<StarterEntry>.into_iter().collect();
    all.sort_by_key(|s| (s.module, s.line, s.name));
    all
}

/// A health check collected by `#[flip::health]`.
#[derive(Debug)]
pub struct HealthEntry {
    /// The function's name.
    pub name: &'static str,
    /// `module_path!()` where it is declared.
    pub module: &'static str,
    /// Runs the check once.
    pub check: fn() -> BoxFuture<Result<(), String>>,
}

inventory::collect!(HealthEntry);

/// What a health check may return: `Result<(), E>` with a displayable error.
#[diagnostic::on_unimplemented(
    message = "a health check must return `Result<(), E>` where `E` implements `Display`; it returns `{Self}`",
    label = "this health check's result"
)]
pub trait HealthResult {
    /// The error's text, if any.
    fn into_health_result(self) -> Result<(), String>;
}

impl<E: std::fmt::Display> HealthResult for Result<(), E> {
    fn into_health_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// What a starter may return: `Result<(), E>` with an error that converts into [`BoxError`].
#[diagnostic::on_unimplemented(
    message = "a starter must return `Result<(), E>` where `E` converts into `Box<dyn std::error::Error + Send + Sync>`; it returns `{Self}`",
    label = "this starter's result",
    note = "any `std::error::Error + Send + Sync + 'static` converts, and so do `String` and `&str`"
)]
pub trait StarterResult {
    /// Converts into the common result type.
    fn into_starter_result(self) -> Result<(), BoxError>;
}

impl<E: Into<BoxError>> StarterResult for Result<(), E> {
    fn into_starter_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

/// What a `main` body may return: `()` or `Result<(), E>`.
#[diagnostic::on_unimplemented(
    message = "a #[flip::main] body must return `()` or `Result<(), E>` where `E` converts into `Box<dyn std::error::Error + Send + Sync>`; it returns `{Self}`",
    label = "this body's result",
    note = "any `std::error::Error + Send + Sync + 'static` converts, and so do `String` and `&str`"
)]
pub trait MainResult {
    /// Converts into the common result type.
    fn into_main_result(self) -> Result<(), BoxError>;
}

impl MainResult for () {
    fn into_main_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<E: Into<BoxError>> MainResult for Result<(), E> {
    fn into_main_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

/// The future of the user's `main` body.
pub type BodyFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + 'a>>;

fn init_logging() {
    #[cfg(feature = "subscriber")]
    {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        // Colour only on a terminal: a log written to a file, a pipe or the journal stays text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            // A write that fails (a closed pipe) is dropped; the default reports it with
            // `eprintln!`, which panics on the same closed pipe.
            .log_internal_errors(false)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// The body of a `#[flip::main]` program. Exit codes: see [`Outcome::exit_code`].
pub fn run(config: MainConfig, body: for<'a> fn(&'a mut Bootstrap) -> BodyFuture<'a>) -> ExitCode {
    crate::bootstrap::startup::mark_main();
    // Everything that reads the environment happens here, before the runtime starts threads.
    let env = match read_environment(&config, |name| std::env::var_os(name)) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    crate::upgrader::stash_marker();
    let upgraded = crate::upgrader::has_marker();
    let supervised = crate::sys::env::take_var(crate::supervisor::SUPERVISED_VAR).is_some();
    let pid1 = std::process::id() == 1;
    if env.supervise.unwrap_or(pid1) && !supervised && !upgraded {
        return crate::supervisor::run(env.executable.clone(), env.stop);
    }
    let upgrade_timeout = env
        .upgrade_timeout
        .or(config.upgrade_timeout)
        .unwrap_or(crate::upgrader::DEFAULT_UPGRADE_TIMEOUT);
    let notify = match crate::systemd::Notify::from_env(upgrade_timeout) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // A process an upgrade started gets its predecessor's sockets, systemd's included.
    let activated = match upgraded {
        true => Vec::new(),
        false => match crate::registry::take_activated() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    // The runtime comes before the handoff is read: a standby process waits for the handoff, so
    // whatever precedes it is done before the upgrade starts. Building it after the handoff
    // would spare a standby a little memory and make every upgrade through it slower, most of
    // all under load (BENCHMARKS.md has the figures).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // Not under flip's own supervisor: whatever follows this pid may take an upgrade for the
    // end of the service.
    let would_end = match supervised || upgraded {
        true => None,
        false => crate::surroundings::upgrade_would_end_the_service(&format!(
            "{}_SUPERVISE",
            config.env_prefix
        )),
    };
    if let (Some(reason), true) = (&would_end, env.upgrades_enabled) {
        tracing::warn!("upgrades will be refused: {reason}");
    }
    let mut options =
        Options::new().standby(env.standby && env.upgrades_enabled && would_end.is_none());
    options.upgrades_would_end_service = would_end;
    if let Some(path) = &env.executable {
        options = options.executable(path);
    }
    if let Some(p) = &env.pid_file {
        options = options.pid_file(p);
    }
    options = options.upgrade_timeout(upgrade_timeout);
    if let Some(n) = &notify {
        options = options.successor_env(crate::notify::NOTIFY_SOCKET_VAR, n.socket_value());
    }
    if let Some(path) = &env.control_socket {
        options = options.control_socket(path);
    }
    if let Some(n) = env.max_draining {
        options = options.max_draining(n);
    }
    let mut bootstrap = match Bootstrap::with_options(options, env.upgrades_enabled) {
        Ok(b) => b,
        Err(e) if matches!(e.handoff(), Some(HandoffError::Withdrawn)) => {
            tracing::debug!("standby process no longer needed");
            runtime.shutdown_background();
            return ExitCode::SUCCESS;
        }
        // A bad pid file, or a handoff marker this process cannot use: bad environment.
        Err(e) if matches!(e.kind(), ErrorKind::PidFile | ErrorKind::Handoff) => {
            tracing::error!("{}", e.chain());
            eprintln!("error: {}", e.chain());
            return ExitCode::from(2);
        }
        Err(e) => {
            tracing::error!("{}", e.chain());
            return ExitCode::from(1);
        }
    };
    if let Some(path) = bootstrap.upgrader().options().control_socket.clone() {
        crate::control::serve(&mut bootstrap, path);
    }
    if let Err(e) = bootstrap.upgrader().fds().add_activated(activated) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if let Some(mut n) = notify {
        if env.fd_store {
            n.store_sockets(bootstrap.upgrader());
        }
        bootstrap.observe(n);
    }
    if let Some(window) = env.probation.or(config.probation) {
        bootstrap.set_probation(window);
    }
    if let Some(g) = config.grace {
        bootstrap.set_grace_period(g);
    }
    bootstrap.set_stop_mode(env.stop);
    for s in starters() {
        bootstrap.register_starter(s.name, s.start);
    }
    let mut checks: Vec<&'static HealthEntry> =
        inventory::iter::<HealthEntry>.into_iter().collect();
    checks.sort_by_key(|c| (c.module, c.name));
    for c in checks {
        bootstrap.register_health_check(c.name, c.check);
    }
    if let Some(interval) = env.health_interval {
        bootstrap.set_health_interval(interval);
    }
    let code = runtime.block_on(async move {
        if let Err(e) = body(&mut bootstrap).await {
            tracing::error!("main failed: {}", Chain(&*e));
            return 1;
        }
        if let Err(e) = bootstrap.start().await {
            tracing::error!("{}", Chain(&e));
            return 1;
        }
        let outcome = bootstrap.wait().await;
        match &outcome {
            Outcome::Failed(_) => tracing::error!(code = outcome.exit_code(), "{outcome}"),
            _ => tracing::info!(code = outcome.exit_code(), "{outcome}"),
        }
        outcome.exit_code()
    });
    // Do not wait for stray tasks or blocking threads: the predecessor must really exit.
    runtime.shutdown_background();
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::StopMode;
    use std::ffi::OsString;
    use std::time::Duration;

    fn config(prefix: &'static str) -> MainConfig {
        MainConfig {
            pid_file: Some("/run/default.pid"),
            env_prefix: prefix,
            grace: None,
            upgrade_timeout: None,
            probation: None,
            standby: false,
            supervise: None,
            control: None,
            stop: None,
        }
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.into())
    }

    #[test]
    fn defaults_apply_without_variables() {
        let e = read_environment(&config("FLIP"), env(&[])).unwrap();
        assert_eq!(e.pid_file, Some("/run/default.pid".into()));
        assert!(e.upgrades_enabled);
        assert!(!e.standby);
    }

    #[test]
    fn the_control_socket_is_beside_the_pid_file_unless_said() {
        let e = read_environment(&config("FLIP"), env(&[])).unwrap();
        assert_eq!(e.control_socket, Some("/run/default.ctl".into()));
        let off = read_environment(&config("FLIP"), env(&[("FLIP_CONTROL_SOCKET", "off")]));
        assert_eq!(off.unwrap().control_socket, None);
        let there = read_environment(&config("FLIP"), env(&[("FLIP_CONTROL_SOCKET", "/s/c")]));
        assert_eq!(there.unwrap().control_socket, Some("/s/c".into()));
        let no_pid = read_environment(&config("FLIP"), env(&[("FLIP_PID_FILE", "")]));
        assert_eq!(no_pid.unwrap().control_socket, None);
        let err = read_environment(&config("FLIP"), env(&[("FLIP_CONTROL_SOCKET", "rel")]));
        assert!(
            err.unwrap_err()
                .to_string()
                .starts_with("FLIP_CONTROL_SOCKET=")
        );
    }

    #[test]
    fn the_supervise_flag_is_unset_unless_said() {
        assert_eq!(
            read_environment(&config("FLIP"), env(&[]))
                .unwrap()
                .supervise,
            None
        );
        let on = read_environment(&config("FLIP"), env(&[("FLIP_SUPERVISE", "1")])).unwrap();
        assert_eq!(on.supervise, Some(true));
        let attr = MainConfig {
            supervise: Some(true),
            ..config("FLIP")
        };
        let off = read_environment(&attr, env(&[("FLIP_SUPERVISE", "off")])).unwrap();
        assert_eq!(off.supervise, Some(false));
        assert!(read_environment(&config("FLIP"), env(&[("FLIP_SUPERVISE", "2")])).is_err());
    }

    #[test]
    fn the_standby_flag_is_read_and_checked() {
        let e = read_environment(&config("FLIP"), env(&[("FLIP_STANDBY", "on")])).unwrap();
        assert!(e.standby);
        // `standby = true` in the attribute is the default the variable overrides.
        let on = MainConfig {
            standby: true,
            ..config("FLIP")
        };
        assert!(read_environment(&on, env(&[])).unwrap().standby);
        let off = read_environment(&on, env(&[("FLIP_STANDBY", "0")])).unwrap();
        assert!(!off.standby);
        let err = read_environment(&config("FLIP"), env(&[("FLIP_STANDBY", "sometimes")]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("FLIP_STANDBY="), "{err}");
    }

    #[test]
    fn good_values_are_read() {
        for (v, want) in [
            ("1", true),
            ("true", true),
            ("YES", true),
            ("on", true),
            ("0", false),
            ("false", false),
            ("No", false),
            ("off", false),
        ] {
            let e =
                read_environment(&config("FLIP"), env(&[("FLIP_UPGRADES_ENABLED", v)])).unwrap();
            assert_eq!(e.upgrades_enabled, want, "{v}");
        }
        let e = read_environment(&config("FLIP"), env(&[("FLIP_PID_FILE", "/tmp/x.pid")])).unwrap();
        assert_eq!(e.pid_file, Some("/tmp/x.pid".into()));
        let e = read_environment(&config("FLIP"), env(&[("FLIP_PID_FILE", "")])).unwrap();
        assert_eq!(e.pid_file, None);
    }

    #[test]
    fn the_stop_drains_unless_said() {
        let e = read_environment(&config("FLIP"), env(&[])).unwrap();
        assert_eq!(e.stop, StopMode::Drain);
        let e = read_environment(&config("FLIP"), env(&[("FLIP_STOP", "immediate")])).unwrap();
        assert_eq!(e.stop, StopMode::Immediate);
        let mut c = config("FLIP");
        c.stop = Some(StopMode::Immediate);
        assert_eq!(
            read_environment(&c, env(&[])).unwrap().stop,
            StopMode::Immediate
        );
        let e = read_environment(&c, env(&[("FLIP_STOP", "Drain")])).unwrap();
        assert_eq!(e.stop, StopMode::Drain);
        let err = read_environment(&c, env(&[("FLIP_STOP", "gently")]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("FLIP_STOP=\"gently\""), "{err}");
    }

    #[test]
    fn the_upgrade_timeout_is_a_duration() {
        for (v, ms) in [
            ("1500ms", 1500),
            ("30s", 30_000),
            ("2m", 120_000),
            (" 1h ", 3_600_000),
        ] {
            let e = read_environment(&config("FLIP"), env(&[("FLIP_UPGRADE_TIMEOUT", v)])).unwrap();
            assert_eq!(e.upgrade_timeout, Some(Duration::from_millis(ms)), "{v}");
        }
        let e = read_environment(&config("FLIP"), env(&[])).unwrap();
        assert_eq!(e.upgrade_timeout, None);
        for v in ["0s", "30", "soon", "-1s", "1.5s", "99999999999999999h"] {
            let err = read_environment(&config("FLIP"), env(&[("FLIP_UPGRADE_TIMEOUT", v)]))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("FLIP_UPGRADE_TIMEOUT="), "{err}");
            assert!(err.contains("duration"), "{err}");
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        for v in ["", "maybe", "2", "enabled"] {
            let err = read_environment(&config("FLIP"), env(&[("FLIP_UPGRADES_ENABLED", v)]))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("FLIP_UPGRADES_ENABLED="), "{err}");
        }
    }

    #[test]
    fn the_prefix_renames_the_variables() {
        let vars = env(&[
            ("APP_PID_FILE", "/tmp/app.pid"),
            ("APP_UPGRADES_ENABLED", "off"),
            ("FLIP_PID_FILE", "/tmp/flip.pid"),
            ("FLIP_UPGRADES_ENABLED", "bogus"),
        ]);
        let e = read_environment(&config("APP"), vars).unwrap();
        assert_eq!(e.pid_file, Some("/tmp/app.pid".into()));
        assert!(!e.upgrades_enabled);
    }
}
