//! What `#[flip::main]` reads before anything starts: the attribute's arguments and the
//! `<PREFIX>_*` variables, each checked and reported by name when malformed.

use std::time::Duration;

use crate::bootstrap::StopMode;

/// Arguments of `#[flip::main]`.
#[derive(Debug, Clone, Copy)]
pub struct MainConfig {
    /// `pidfile = "..."`
    pub pid_file: Option<&'static str>,
    /// `env_prefix = "..."` (default `FLIP`)
    pub env_prefix: &'static str,
    /// `grace = "..."`
    pub grace: Option<Duration>,
    /// `upgrade_timeout = "..."`
    pub upgrade_timeout: Option<Duration>,
    /// `probation = "..."`: the default of `<PREFIX>_PROBATION`.
    pub probation: Option<Duration>,
    /// `standby = false|true`: the default of `<PREFIX>_STANDBY` (on unless said).
    pub standby: bool,
    /// `supervise = true|false`: the default of `<PREFIX>_SUPERVISE`; without either, the
    /// supervisor runs when the process is PID 1.
    pub supervise: Option<bool>,
    /// `control = "..."`: the control socket's path (`""` or `"off"`: none); the default of
    /// `<PREFIX>_CONTROL_SOCKET`. Without either, beside the pid file.
    pub control: Option<&'static str>,
    /// `stop = "drain"|"immediate"`: the default of `<PREFIX>_STOP`; without either, drain.
    pub stop: Option<StopMode>,
}

/// What the environment says, read once before any thread exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// The pid file, after `<PREFIX>_PID_FILE` (an empty value means none).
    pub pid_file: Option<std::path::PathBuf>,
    /// `<PREFIX>_UPGRADES_ENABLED`, default true.
    pub upgrades_enabled: bool,
    /// `<PREFIX>_STANDBY`, default the attribute's `standby` (on unless said): keep the next
    /// process started ahead of time (see [`Options::standby`](crate::Options::standby)).
    pub standby: bool,
    /// `<PREFIX>_SUPERVISE`, or the attribute's `supervise`; `None` when neither says.
    pub supervise: Option<bool>,
    /// `<PREFIX>_MAX_DRAINING`: see [`Options::max_draining`](crate::Options::max_draining).
    pub max_draining: Option<usize>,
    /// The control socket: `<PREFIX>_CONTROL_SOCKET`, the attribute's `control`, or the pid
    /// file's path with the extension `ctl`; `None` when turned off or without a pid file.
    pub control_socket: Option<std::path::PathBuf>,
    /// `<PREFIX>_EXECUTABLE`: the path an upgrade starts, the one the operator deploys to
    /// (a wrapper script's, say); without it, the path this process was started by.
    pub executable: Option<std::path::PathBuf>,
    /// `<PREFIX>_STOP` (`drain` or `immediate`), or the attribute's `stop`; drain unless
    /// said: what SIGTERM and SIGINT do (see [`StopMode`]).
    pub stop: StopMode,
    /// `<PREFIX>_UPGRADE_TIMEOUT` (`"30s"`, `"1500ms"`, `"2m"`, `"1h"`); `None` when unset,
    /// and then the attribute's `upgrade_timeout` or [`Options::upgrade_timeout`](crate::Options::upgrade_timeout)'s default.
    pub upgrade_timeout: Option<Duration>,
    /// `<PREFIX>_PROBATION` (a duration; `0` turns it off); `None` when unset, and then the
    /// attribute's `probation` (see [`Bootstrap::set_probation`](crate::Bootstrap::set_probation)).
    pub probation: Option<Duration>,
    /// `<PREFIX>_HEALTH_INTERVAL` (a duration above 0); `None` when unset: 1 s (see
    /// [`Bootstrap::set_health_interval`](crate::Bootstrap::set_health_interval)).
    pub health_interval: Option<Duration>,
    /// `FLIP_FDSTORE` (a flag, whatever the prefix: flip's supervisor sets it), or systemd's
    /// `FDSTORE` above 0: hand the sockets to the service manager's fd store (see
    /// [`Notify::store_sockets`](crate::systemd::Notify::store_sockets)).
    pub fd_store: bool,
}

/// A duration as flip's variables and attributes write it: a whole number and a unit, `ms`,
/// `s`, `m` or `h` (`"1500ms"`, `"30s"`, `"2m"`, `"1h"`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    // Zero needs no unit: `FLIP_PROBATION=0` turns the probation off, as documented.
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let digits_end = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(digits_end);
    let n: u64 = number.parse().ok()?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(factor).map(Duration::from_millis)
}

/// A bad environment variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?}: {reason}")]
pub struct EnvError {
    /// The variable.
    pub name: String,
    /// Its value (lossy).
    pub value: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// The duration variable `name` through `get`: `None` when unset or empty; `reason` when it is
/// not a duration (or is zero, unless `zero` is allowed).
fn duration_var(
    get: &impl Fn(&str) -> Option<std::ffi::OsString>,
    name: String,
    zero: bool,
    reason: &'static str,
) -> Result<Option<Duration>, EnvError> {
    let Some(v) = get(&name).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let value = v.to_string_lossy();
    match parse_duration(&value) {
        Some(d) if zero || !d.is_zero() => Ok(Some(d)),
        _ => Err(EnvError {
            name,
            value: value.into_owned(),
            reason,
        }),
    }
}

/// Reads `<prefix>_PID_FILE` and `<prefix>_UPGRADES_ENABLED` through `get`.
pub fn read_environment(
    config: &MainConfig,
    get: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Environment, EnvError> {
    let pid_var = format!("{}_PID_FILE", config.env_prefix);
    let pid_file = match get(&pid_var) {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(v.into()),
        None => config.pid_file.map(Into::into),
    };
    let control_var = format!("{}_CONTROL_SOCKET", config.env_prefix);
    let control_socket = match get(&control_var)
        .map(|v| v.to_string_lossy().into_owned())
        .or(config.control.map(str::to_owned))
    {
        Some(v) if v.is_empty() || v == "off" => None,
        Some(v) if !v.starts_with('/') => {
            return Err(EnvError {
                name: control_var,
                value: v,
                reason: "expected an absolute path, or off",
            });
        }
        Some(v) => Some(v.into()),
        None => pid_file.as_deref().map(crate::control::default_socket_path),
    };
    let draining_var = format!("{}_MAX_DRAINING", config.env_prefix);
    let max_draining = match get(&draining_var) {
        None => None,
        Some(v) if v.is_empty() => None,
        Some(v) => match v.to_string_lossy().trim().parse::<usize>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return Err(EnvError {
                    name: draining_var,
                    value: v.to_string_lossy().into_owned(),
                    reason: "expected a number of generations, 1 or more",
                });
            }
        },
    };
    let probation = duration_var(
        &get,
        format!("{}_PROBATION", config.env_prefix),
        true,
        "expected a duration such as 0, 1500ms, 10s or 2m",
    )?;
    let health_interval = duration_var(
        &get,
        format!("{}_HEALTH_INTERVAL", config.env_prefix),
        false,
        "expected a duration above 0 such as 250ms or 1s",
    )?;
    let upgrade_timeout = duration_var(
        &get,
        format!("{}_UPGRADE_TIMEOUT", config.env_prefix),
        false,
        "expected a duration above 0 such as 1500ms, 30s, 2m or 1h",
    )?;
    let executable = get(&format!("{}_EXECUTABLE", config.env_prefix))
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from);
    let stop_var = format!("{}_STOP", config.env_prefix);
    let stop = match get(&stop_var) {
        None => config.stop.unwrap_or(StopMode::Drain),
        Some(v) => v
            .to_string_lossy()
            .parse::<StopMode>()
            .map_err(|reason| EnvError {
                name: stop_var,
                value: v.to_string_lossy().into_owned(),
                reason,
            })?,
    };
    let flag = |name: String, default: Option<bool>| match get(&name) {
        None => Ok(default),
        Some(v) => {
            let text = v.to_string_lossy().to_ascii_lowercase();
            match text.trim() {
                "1" | "true" | "yes" | "on" => Ok(Some(true)),
                "0" | "false" | "no" | "off" => Ok(Some(false)),
                _ => Err(EnvError {
                    name,
                    value: v.to_string_lossy().into_owned(),
                    reason: "expected 1, true, yes, on (enabled) or 0, false, no, off (disabled)",
                }),
            }
        }
    };
    Ok(Environment {
        pid_file,
        upgrades_enabled: flag(
            format!("{}_UPGRADES_ENABLED", config.env_prefix),
            Some(true),
        )?
        .unwrap_or(true),
        standby: flag(
            format!("{}_STANDBY", config.env_prefix),
            Some(config.standby),
        )?
        .unwrap_or(false),
        supervise: flag(format!("{}_SUPERVISE", config.env_prefix), config.supervise)?,
        control_socket,
        max_draining,
        upgrade_timeout,
        probation,
        health_interval,
        stop,
        executable,
        fd_store: flag(crate::registry::FDSTORE_VAR.to_owned(), None)?.unwrap_or(false)
            || get("FDSTORE")
                .and_then(|v| v.to_str().and_then(|v| v.trim().parse::<u32>().ok()))
                .is_some_and(|n| n > 0),
    })
}

#[cfg(test)]
mod zero_tests {
    #[test]
    fn zero_needs_no_unit() {
        assert_eq!(super::parse_duration("0"), Some(std::time::Duration::ZERO));
        assert_eq!(super::parse_duration("0s"), Some(std::time::Duration::ZERO));
        assert_eq!(super::parse_duration("10"), None);
    }
}
