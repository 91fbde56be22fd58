//! The builds around this process, pinned by descriptor: the one it runs, registered for its
//! successor, and the one its predecessor ran, which [`Upgrader::rollback`] starts again even
//! after a deploy replaced or removed the file.
//!
//! Each generation registers its own executable as the file `flip.build.<generation>`; the
//! successor claims its predecessor's (one generation below its own), and readiness closes the
//! older ones nobody claimed. So every process holds exactly one previous build, and a rollback
//! of a rollback goes forward again.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use super::Upgrader;
use crate::registry::Fds;

const PREFIX: &str = "flip.build.";

fn name(generation: u64) -> String {
    format!("{PREFIX}{generation}")
}

/// Registers the running executable for the successor, and claims the predecessor's; returns
/// the latter. Failures only cost the rollback, so they are logged, not returned.
pub(super) fn pin(fds: &Fds, generation: u64) -> Option<File> {
    // `/proc/self/exe` opens the very file running, even when the path was replaced.
    match File::open("/proc/self/exe") {
        Ok(own) => {
            if let Err(e) = fds.add_file(&name(generation), &own) {
                tracing::debug!(error = %crate::error::Chain(&e), "cannot register the running build");
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot pin the running build"),
    }
    let previous = generation.checked_sub(1).filter(|&g| g > 0)?;
    fds.file(&name(previous)).ok().flatten()
}

impl Upgrader {
    /// A path that opens the build the predecessor ran, while this process runs: `None` in a
    /// first start, or when the predecessor did not pass it (a flip before 0.2).
    pub fn previous_build(&self) -> Option<PathBuf> {
        let file = self.shared.previous_build.get()?.as_ref()?;
        Some(PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            file.as_raw_fd()
        )))
    }
}
