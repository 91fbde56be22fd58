//! flip's `http` example on ecdysis: SIGHUP upgrades (ecdysis passes the listening socket to the
//! new process and waits for its readiness), SIGTERM stops. After an upgrade the old process
//! stops accepting and drains its connections with hyper's graceful shutdown.

use ecdysis::tokio_ecdysis::{SignalKind, StopOnShutdown, TokioEcdysisBuilder};
use hyper_util::server::graceful::GracefulShutdown;
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    flip_bench_peers::init_logging();
    let addr = flip_bench_peers::addr();
    let mut builder = TokioEcdysisBuilder::new(SignalKind::hangup())?;
    builder.stop_on_signal(SignalKind::terminate())?;
    if let Some(p) = flip_bench_peers::pid_file() {
        builder.set_pid_file(p);
    }
    let mut stream = builder.build_listen_tcp(StopOnShutdown::Yes, addr, |b, addr| {
        b.set_reuse_address(true)?;
        b.bind(&addr.into())?;
        b.listen(1024)?;
        Ok(b.into())
    })?;
    let graceful = GracefulShutdown::new();
    let (_ecdysis, upgraded) = builder.ready()?;
    flip_bench_peers::log_ready();
    let accept = async {
        while let Some(conn) = stream.next().await {
            if let Ok(conn) = conn {
                flip_bench_peers::serve(conn, &graceful);
            }
        }
    };
    tokio::select! {
        exit = upgraded => tracing::info!(?exit, "stopping"),
        () = accept => {}
    }
    drop(stream);
    flip_bench_peers::drain(graceful).await;
    Ok(())
}
