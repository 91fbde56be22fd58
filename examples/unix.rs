//! The `http` example's endpoints on a unix socket, upgraded on SIGHUP.
//!
//! ```text
//! HTTP_SOCKET=/tmp/flip-unix.sock cargo run --release --example unix
//! curl --unix-socket /tmp/flip-unix.sock http://localhost/
//! kill -HUP "$(cat /tmp/flip-unix.pid)"
//! ```
//!
//! The socket path is passed to the successor with the listener: it is never unlinked or
//! rebound during an upgrade, so clients see no gap. A stale socket left by a crash is replaced
//! at first start.

mod common;

#[flip::starter]
async fn unix(ctx: &flip::StartContext) -> Result<(), flip::Error> {
    let path = std::env::var("HTTP_SOCKET").unwrap_or_else(|_| "/tmp/flip-unix.sock".into());
    let listener = ctx.unix_listener(&path)?;
    tracing::info!(%path, "listening");
    common::serve_http(ctx, listener);
    Ok(())
}

#[flip::main(pidfile = "/tmp/flip-unix.pid")]
fn main() {}
