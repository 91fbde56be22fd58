//! flip's `http` example on shellflip: SIGHUP starts the new process, which binds the same
//! address with SO_REUSEPORT (shellflip passes no sockets) and reports its start; the old one
//! then closes its listener and drains its connections with hyper's graceful shutdown.

use hyper_util::server::graceful::GracefulShutdown;
use shellflip::RestartConfig;
use tokio::signal::unix::SignalKind;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    flip_bench_peers::init_logging();
    let addr = flip_bench_peers::addr();
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    let config = RestartConfig {
        enabled: false,
        restart_signal: SignalKind::hangup(),
        ..Default::default()
    };
    let restarted = config.try_into_restart_task()?;
    if let Some(p) = flip_bench_peers::pid_file() {
        flip_bench_peers::write_pid_file(&p)?;
    }
    // The restart task tells the parent at its first poll, just below.
    flip_bench_peers::log_ready();
    let graceful = GracefulShutdown::new();
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    tokio::pin!(restarted);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                if let Ok((conn, _)) = conn {
                    flip_bench_peers::serve(conn, &graceful);
                }
            }
            child = &mut restarted => {
                tracing::info!(ok = child.is_ok(), "stopping after the restart");
                break;
            }
            _ = term.recv() => break,
        }
    }
    drop(listener);
    flip_bench_peers::drain(graceful).await;
    Ok(())
}
