//! What the HTTP examples share: the endpoints and the ballast.
#![allow(dead_code)]

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

/// `GET /`: `hello from <pid>`; `GET /sleep/<ms>`: the same after `ms` milliseconds.
pub async fn respond(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    if path == "/" {
        return Ok(hello());
    }
    if let Some(ms) = path
        .strip_prefix("/sleep/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
        return Ok(hello());
    }
    let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
    *r.status_mut() = hyper::StatusCode::NOT_FOUND;
    Ok(r)
}

pub fn hello() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from(format!(
        "hello from {}\n",
        std::process::id()
    ))))
}

/// A count from the environment variable `name` (0 when unset or empty), or what is wrong.
fn count_var(name: &str, unit: &str) -> Result<usize, String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|_| format!("{name} must be a number of {unit}, not {v:?}")),
        _ => Ok(0),
    }
}

/// `BALLAST_MB`: MiB of memory to hold, so that a big server can be upgraded in a benchmark.
pub fn ballast_mb() -> Result<usize, String> {
    count_var("BALLAST_MB", "MiB")
}

/// `EXTRA_LISTENERS`: how many more listening sockets the `http` example opens, for the
/// benchmark of upgrades with many sockets.
pub fn extra_listeners() -> Result<usize, String> {
    count_var("EXTRA_LISTENERS", "sockets")
}

/// Takes `mb` MiB of touched memory in a thread of its own and holds it for the life of the
/// process.
pub fn fill_ballast(mb: usize) {
    if mb == 0 {
        return;
    }
    std::thread::spawn(move || {
        let mut ballast = vec![0u8; mb << 20];
        // Touch every page so it is resident, as a real server's heap is.
        for page in ballast.chunks_mut(4096) {
            page[0] = 1;
        }
        Box::leak(ballast.into_boxed_slice());
    });
}

/// Serves the endpoints on `listener` with flip's lossless drain, as a task of the drain group:
/// it begins accepting once this process is ready and drains when a new one took over.
pub fn serve_http(ctx: &flip::StartContext, listener: impl flip::http::Accept) {
    let shutdown = ctx.shutdown();
    ctx.serve(async move {
        flip::http::HttpServer::new()
            .serve(listener, hyper::service::service_fn(respond), shutdown)
            .await
    });
}
