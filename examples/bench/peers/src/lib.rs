//! What the two peer servers share with each other and with flip's `http` example: the
//! endpoints, the log line the benchmark reads, the pid file, and a hyper drain.
//!
//! Each server serves `GET /` (`hello from <pid>`) and `GET /sleep/<ms>`, reads `HTTP_ADDR` and
//! `FLIP_PID_FILE` as the example does, and logs `ready pid=N` when it has written its pid file
//! and told its parent, the point where flip logs the same line.

use std::convert::Infallible;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;

/// `GET /` and `GET /sleep/<ms>`, as in flip's examples.
pub async fn respond(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let hello = || {
        Response::new(Full::new(Bytes::from(format!(
            "hello from {}\n",
            std::process::id()
        ))))
    };
    if path == "/" {
        return Ok(hello());
    }
    if let Some(ms) = path.strip_prefix("/sleep/").and_then(|ms| ms.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
        return Ok(hello());
    }
    let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
    *r.status_mut() = hyper::StatusCode::NOT_FOUND;
    Ok(r)
}

/// The log, with `RUST_LOG` as flip's examples read it, in the same format (the benchmark
/// reads the `ready` line's timestamp).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `HTTP_ADDR` (127.0.0.1:8080).
pub fn addr() -> std::net::SocketAddr {
    std::env::var("HTTP_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8080".into())
        .parse()
        .unwrap_or_else(|e| panic!("HTTP_ADDR: {e}"))
}

/// `FLIP_PID_FILE`, if set and not empty.
pub fn pid_file() -> Option<std::path::PathBuf> {
    std::env::var_os("FLIP_PID_FILE")
        .filter(|v| !v.is_empty())
        .map(Into::into)
}

/// Writes this process's pid to `path` through a temporary file and a rename.
pub fn write_pid_file(path: &std::path::Path) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    write!(f, "{}", std::process::id())?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// The line the benchmark reads.
pub fn log_ready() {
    tracing::info!(pid = std::process::id(), "ready");
    if tracing::enabled!(tracing::Level::DEBUG) {
        let (mut cpu, mut wait, mut threads) = (0u64, 0u64, 0);
        for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
            if let Ok(t) = std::fs::read_to_string(task.path().join("schedstat")) {
                let mut f = t.split_whitespace().map(|f| f.parse::<u64>().unwrap_or(0));
                cpu += f.next().unwrap_or(0);
                wait += f.next().unwrap_or(0);
                threads += 1;
            }
        }
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let rest: Vec<&str> = stat.rsplit_once(')').map_or("", |r| r.1).split_whitespace().collect();
        tracing::debug!(
            on_cpu_us = cpu / 1000,
            waiting_for_cpu_us = wait / 1000,
            threads,
            minor_faults = rest.get(7).copied().unwrap_or("?"),
            "what reaching readiness cost"
        );
    }
}

/// Serves one connection, HTTP/1.1 or HTTP/2, watched by `graceful`.
pub fn serve(stream: tokio::net::TcpStream, graceful: &GracefulShutdown) {
    let conn = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(respond))
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        let _ = conn.await;
    });
}

/// Hyper's graceful shutdown of every watched connection, bounded by 30 s.
pub async fn drain(graceful: GracefulShutdown) {
    let _ = tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await;
}
