//! The operating-system layer: every `unsafe` block of flip lives below this module, and so
//! does every call into `nix` and `libc` outside tests.
//!
//! Each submodule wraps one family of syscalls behind a small safe function, so that the rest of
//! the crate reads as plain Rust. Nothing here knows about upgrades, manifests or servers.

pub(crate) mod env;
pub(crate) mod fd;
pub(crate) mod fs;
pub(crate) mod pidref;
pub(crate) mod process;
pub(crate) mod socket;
pub(crate) mod spawn;
pub(crate) mod watch;
