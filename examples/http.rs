//! An HTTP/1.1 server that upgrades itself on SIGHUP without refusing or losing a request.
//!
//! ```text
//! cargo run --release --example http     # HTTP_ADDR (127.0.0.1:8080), FLIP_PID_FILE (/tmp/flip-http.pid)
//! curl http://127.0.0.1:8080/            # hello from <pid>
//! curl http://127.0.0.1:8080/sleep/500   # waits 500 ms, then the same
//! kill -HUP "$(cat /tmp/flip-http.pid)"  # upgrade: the pid changes, no request fails
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long an idle keep-alive connection may still send one more request once draining began.
const LINGER: Duration = Duration::from_secs(1);

/// Opens the listener through flip and serves it in the drain group.
#[flip::starter]
async fn http(ctx: &flip::StartContext) -> Result<(), flip::Error> {
    let addr = std::env::var("HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = ctx.tcp_listener(&addr)?;
    tracing::info!(%addr, "listening");
    ctx.serve(serve(listener, ctx.shutdown()));
    Ok(())
}

#[flip::main(pidfile = "/tmp/flip-http.pid")]
fn main() -> Result<(), String> {
    // Live as long as the process, as a real server's heap does.
    Box::leak(ballast()?.into_boxed_slice());
    Ok(())
}

/// Accepts until the graceful stop begins, then drains every connection.
async fn serve(
    listener: tokio::net::TcpListener,
    mut shutdown: flip::Shutdown,
) -> std::io::Result<()> {
    let draining = Arc::new(AtomicBool::new(false));
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, draining.clone(), drain_rx.clone()));
                }
                Err(e) => tracing::warn!("accept failed: {e}"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Stop accepting: the new process accepts from the same socket from now on.
    drop(listener);
    draining.store(true, Ordering::SeqCst);
    let _ = drain_tx.send(true);
    tracing::info!(connections = connections.len(), "draining");
    while connections.join_next().await.is_some() {}
    tracing::info!("drained");
    Ok(())
}

async fn connection(
    stream: tokio::net::TcpStream,
    draining: Arc<AtomicBool>,
    mut drain: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| respond(req, draining.clone()));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = drain.wait_for(|d| *d) => {}
    }
    // Draining: every response now says `Connection: close`, so a connection that sends a
    // request within the linger window is served and then closed by hyper. One that stays idle
    // that long is shut down.
    tokio::select! {
        _ = conn.as_mut() => return,
        () = tokio::time::sleep(LINGER) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

async fn respond(
    req: Request<Incoming>,
    draining: Arc<AtomicBool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let mut response = if path == "/" {
        hello()
    } else if let Some(ms) = path
        .strip_prefix("/sleep/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
        hello()
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *r.status_mut() = hyper::StatusCode::NOT_FOUND;
        r
    };
    if draining.load(Ordering::SeqCst) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}

fn hello() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from(format!(
        "hello from {}\n",
        std::process::id()
    ))))
}

/// `BALLAST_MB` MiB of touched memory, so a big server can be upgraded in a benchmark.
fn ballast() -> Result<Vec<u8>, String> {
    let mb: usize = match std::env::var("BALLAST_MB") {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|_| format!("BALLAST_MB must be a number of MiB, not {v:?}"))?,
        _ => 0,
    };
    let mut ballast = vec![0u8; mb << 20];
    // Touch every page so it is resident, as a real server's heap is.
    for page in ballast.chunks_mut(4096) {
        page[0] = 1;
    }
    Ok(ballast)
}
