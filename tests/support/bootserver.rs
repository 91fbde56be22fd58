//! A server built with `#[flip::main]` and `#[flip::starter]`, for the bootstrap tests.
//!
//! Environment (besides `BOOT_PID_FILE` and `BOOT_UPGRADES_ENABLED`, read by the macro):
//! - `TB_TCP`, `TB_UNIX`: listeners answering `pid <pid>\n` to each connection;
//! - `TB_HTTP`: an HTTP listener (`flip::http`) answering `hello from <pid>`;
//! - `TB_GRACE_MS`: grace period, set by the main body;
//! - `TB_DRAIN_MS`: how long each server's drain takes; `TB_STUCK=1`: the drain never ends;
//! - `TB_ERROR_DURING_DRAIN=1`: each server reports an error when the drain begins;
//! - `TB_FAIL_AFTER_MS`: a runtime error is reported this long after start;
//! - `TS_EVENTS`: event log (`start <starter> <pid>`);
//! - `TS_BEHAVIOUR`: a file; `hang` makes a successor never become ready, `crash-after <ms>`
//!   makes it abort (SIGABRT) that long after its `main` body ran, right before ready;
//!   `unhealthy` makes its `#[flip::health]` check fail.

use flip_suite::events;

use events::{env_ms, event};
use tokio::io::AsyncWriteExt;

/// What every server does once the graceful stop begins.
async fn drain(ctx: &flip::StartContext) {
    if std::env::var_os("TB_ERROR_DURING_DRAIN").is_some() {
        ctx.errors().send("listener failed while draining");
    }
    if std::env::var_os("TB_STUCK").is_some() {
        std::future::pending::<()>().await;
    }
    if let Some(d) = env_ms("TB_DRAIN_MS") {
        tokio::time::sleep(d).await;
    }
}

/// Answers `pid <pid>\n` to every connection until the drain begins, then drains.
async fn greet(ctx: flip::StartContext, listener: impl flip::http::Accept) -> std::io::Result<()> {
    let pid = std::process::id();
    let mut shutdown = ctx.shutdown();
    // Accept once this process is ready, as flip's own servers do.
    shutdown.serving().await;
    loop {
        tokio::select! {
            () = shutdown.draining() => break,
            conn = listener.accept() => {
                let _ = conn?.write_all(format!("pid {pid}\n").as_bytes()).await;
            }
        }
    }
    drop(listener);
    drain(&ctx).await;
    Ok(())
}

#[flip::starter]
async fn tcp(ctx: &flip::StartContext) -> Result<(), flip::Error> {
    event(&format!("start tcp {}", std::process::id()));
    let Ok(addr) = std::env::var("TB_TCP") else {
        return Ok(());
    };
    let listener = ctx.tcp_listener(&addr)?;
    ctx.serve(greet(ctx.clone(), listener));
    Ok(())
}

#[flip::starter]
async fn http(ctx: &flip::StartContext) -> Result<(), flip::Error> {
    let Ok(addr) = std::env::var("TB_HTTP") else {
        return Ok(());
    };
    let listener = ctx.tcp_listener(&addr)?;
    let service = hyper::service::service_fn(|_req| async {
        let body = format!("hello from {}\n", std::process::id());
        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
            bytes::Bytes::from(body),
        )))
    });
    let shutdown = ctx.shutdown();
    ctx.serve(async move {
        flip::http::HttpServer::new()
            .serve(listener, service, shutdown)
            .await
    });
    Ok(())
}

mod more {
    use super::*;

    #[flip::starter]
    pub fn unix(ctx: flip::StartContext) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        event(&format!("start unix {}", std::process::id()));
        let Ok(path) = std::env::var("TB_UNIX") else {
            return Ok(());
        };
        let listener = ctx.unix_listener(&path)?;
        ctx.serve(greet(ctx.clone(), listener));
        Ok(())
    }

    #[flip::starter]
    pub async fn failing(ctx: flip::StartContext) -> std::io::Result<()> {
        event(&format!("start failing {}", std::process::id()));
        // A setup error once: the first process to find the file removes it and fails (a
        // standby that took the handoff, say), the next ones start.
        if let Some(path) = std::env::var_os("TB_FAIL_ONCE")
            && std::fs::remove_file(&path).is_ok()
        {
            return Err(std::io::Error::other("failing once, as asked"));
        }
        if let Some(after) = env_ms("TB_FAIL_AFTER_MS") {
            let errors = ctx.errors();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                errors.send("the listener broke");
            });
        }
        Ok(())
    }
}

/// Healthy unless this process started with the behaviour `unhealthy`: then every check but
/// the first fails (a backend lost a moment after ready).
#[flip::health]
async fn backend() -> Result<(), String> {
    static CHECKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    if CHECKS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
        return Ok(());
    }
    static UNHEALTHY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let unhealthy = *UNHEALTHY.get_or_init(|| {
        std::env::var_os("TS_BEHAVIOUR")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .is_some_and(|b| b.trim() == "unhealthy")
    });
    if unhealthy {
        Err("the backend is unreachable".to_owned())
    } else {
        Ok(())
    }
}

#[flip::main(env_prefix = "BOOT", upgrade_timeout = "20s")]
async fn main(bootstrap: &mut flip::Bootstrap) {
    let behaviour = std::env::var_os("TS_BEHAVIOUR").and_then(|p| std::fs::read_to_string(p).ok());
    if behaviour.as_deref().map(str::trim) == Some("hang") {
        // Never ready: the upgrade that started us stays in flight.
        std::future::pending::<()>().await;
    }
    // A build that says ready and crashes a little later.
    if let Some(ms) = behaviour
        .as_deref()
        .and_then(|b| b.trim().strip_prefix("crash-after "))
        .and_then(|ms| ms.parse().ok())
    {
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            event(&format!("crashing {}", std::process::id()));
            std::process::abort();
        });
    }
    if let Some(grace) = env_ms("TB_GRACE_MS") {
        bootstrap.set_grace_period(grace);
    }
    event(&format!(
        "starters {} {}",
        std::process::id(),
        bootstrap.starter_names().join(",")
    ));
}
