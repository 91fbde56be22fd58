//! Reading and removing process environment variables.

use std::ffi::OsString;

/// Reads `name` and removes it from the process environment, so that no process spawned later
/// inherits it.
///
/// Callers run this once at startup; `#[flip::main]` does it before any thread exists.
pub(crate) fn take_var(name: &str) -> Option<OsString> {
    let value = std::env::var_os(name)?;
    // SAFETY: `remove_var` is unsafe because C code in another thread may call `getenv` at the
    // same moment. std's own readers take the environment lock, so only foreign code is at risk.
    // flip reads the handoff first thing at startup (the generated `main` does it before the
    // runtime starts any thread); a program that calls `Upgrader::new` later accepts the same
    // contract as any call to `std::env::remove_var`, which the `Upgrader` docs state.
    unsafe { std::env::remove_var(name) };
    Some(value)
}
