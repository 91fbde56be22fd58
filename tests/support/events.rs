//! The event log the test servers write: one line per event, appended to `$TS_EVENTS`.

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
