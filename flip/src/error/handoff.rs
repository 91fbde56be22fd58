//! Why a successor rejects its handoff: every way the marker, the manifest or a descriptor
//! can be wrong.

use std::io;

/// Why a handoff from the predecessor was rejected: the source of an [`Error`](super::Error) of kind
/// [`Handoff`](super::ErrorKind::Handoff).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandoffError {
    /// The process that started this one speaks another version of the handoff.
    #[error(
        "the process that started this one speaks handoff version {theirs}; this binary speaks versions {ours}: it cannot take over from it (restart the service to move to this build)"
    )]
    Version {
        /// The version the marker carries.
        theirs: String,
        /// The version this binary speaks.
        ours: &'static str,
    },
    /// The `FLIP_HANDOFF` environment variable is malformed.
    #[error("malformed FLIP_HANDOFF marker {value:?}: {reason}")]
    Marker {
        /// The variable's value (lossy).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The marker is well formed but was not made for this process: it was inherited by a
    /// process that no upgrade started (its handoff pipe is missing, or the token differs).
    #[error("the FLIP_HANDOFF marker was not made for this process: {reason}")]
    NotForUs {
        /// What did not match.
        reason: String,
    },
    /// The manifest sent by the predecessor is malformed.
    #[error("malformed manifest at line {line}: {reason}")]
    Manifest {
        /// Line number (1-based).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A descriptor named by the manifest is not what the manifest says.
    #[error("fd {fd} ({what}): {reason}")]
    Fd {
        /// Descriptor number.
        fd: i32,
        /// What it should be.
        what: String,
        /// What it is instead.
        reason: String,
    },
    /// Reading the handoff failed.
    #[error("reading the handoff")]
    Io(#[source] io::Error),
    /// This process was started as a standby (see [`Options::standby`](crate::Options::standby))
    /// and its predecessor let it go without handing anything over: the binary changed, the predecessor
    /// is stopping, or it exited. Nothing is wrong; the process should exit quietly.
    #[error("the predecessor withdrew this standby process before handing anything over")]
    Withdrawn,
}
