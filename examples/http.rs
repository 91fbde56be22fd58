//! An HTTP/1.1 and HTTP/2 server that upgrades itself on SIGHUP without refusing or losing a
//! request.
//!
//! ```text
//! cargo run --release --example http     # HTTP_ADDR (127.0.0.1:8080), FLIP_PID_FILE (/tmp/flip-http.pid)
//! curl http://127.0.0.1:8080/            # hello from <pid>
//! curl http://127.0.0.1:8080/sleep/500   # waits 500 ms, then the same
//! kill -HUP "$(cat /tmp/flip-http.pid)"  # upgrade: the pid changes, no request fails
//! ```
//!
//! `HTTPS_ADDR` with `HTTPS_CERT` and `HTTPS_KEY` (PEM files) adds a TLS listener.
//! `BALLAST_MB` makes the server hold that many MiB, to show that a big server upgrades as fast
//! as a small one; `EXTRA_LISTENERS=N` adds N unix sockets in `EXTRA_LISTENERS_DIR` (default
//! `/tmp`), to show what each handed-over socket costs an upgrade.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use common::respond;
use flip::http::HttpServer;
use hyper::service::service_fn;

/// Opens the listener through flip and serves it in the drain group.
#[flip::starter]
async fn http(ctx: &flip::StartContext) -> Result<(), flip::Error> {
    let addr = std::env::var("HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = ctx.tcp_listener(&addr)?;
    tracing::info!(%addr, "listening");
    common::serve_http(ctx, listener);
    Ok(())
}

/// HTTPS on `HTTPS_ADDR` when set, with the PEM certificate and key in `HTTPS_CERT` and
/// `HTTPS_KEY`.
#[flip::starter]
async fn https(ctx: &flip::StartContext) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let Ok(addr) = std::env::var("HTTPS_ADDR") else {
        return Ok(());
    };
    let (Ok(cert), Ok(key)) = (std::env::var("HTTPS_CERT"), std::env::var("HTTPS_KEY")) else {
        return Err("HTTPS_ADDR needs HTTPS_CERT and HTTPS_KEY (PEM files)".into());
    };
    let server = HttpServer::new().tls_from_pem_files(cert, key)?;
    let listener = ctx.tcp_listener(&addr)?;
    tracing::info!(%addr, "listening (TLS)");
    let shutdown = ctx.shutdown();
    ctx.serve(async move { server.serve(listener, service_fn(respond), shutdown).await });
    Ok(())
}

/// Takes the `BALLAST_MB` memory once this process is ready, as a server warms its caches while
/// it serves: filling 1 GiB takes a CPU for a while, which is not the upgrade's doing. Only once
/// per process, should it take service back and run its starters again.
#[flip::starter]
async fn ballast(ctx: &flip::StartContext) -> Result<(), String> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let mb = common::ballast_mb()?;
    if mb > 0 && !TAKEN.swap(true, Ordering::SeqCst) {
        let mut shutdown = ctx.shutdown();
        tokio::spawn(async move {
            shutdown.serving().await;
            // Not in a process that is stopping without ever having served.
            if !shutdown.is_draining() {
                common::fill_ballast(mb);
            }
        });
    }
    Ok(())
}

/// `EXTRA_LISTENERS` more listeners, unix sockets `extra-<i>.sock` in `EXTRA_LISTENERS_DIR`,
/// each served as the first.
#[flip::starter]
async fn extra_listeners(
    ctx: &flip::StartContext,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let n = common::extra_listeners()?;
    let dir = std::env::var("EXTRA_LISTENERS_DIR").unwrap_or_else(|_| "/tmp".into());
    for i in 0..n {
        let listener = ctx.unix_listener(&format!("{dir}/extra-{i}.sock"))?;
        common::serve_http(ctx, listener);
    }
    Ok(())
}

#[flip::main(pidfile = "/tmp/flip-http.pid")]
fn main() -> Result<(), String> {
    // A bad value stops the start before anything listens.
    common::ballast_mb()?;
    common::extra_listeners().map(drop)
}
