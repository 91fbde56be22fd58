//! What the test servers share: the event log (one line per event, appended to `$TS_EVENTS`)
//! and reading durations from the environment.

use std::io::Write;

/// Appends `line` to the file named by `TS_EVENTS`, if set.
pub fn event(line: &str) {
    if let Some(path) = std::env::var_os("TS_EVENTS")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
    {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

/// A duration in milliseconds from the environment variable `name`.
pub fn env_ms(name: &str) -> Option<std::time::Duration> {
    std::env::var(name)
        .ok()?
        .parse()
        .ok()
        .map(std::time::Duration::from_millis)
}
