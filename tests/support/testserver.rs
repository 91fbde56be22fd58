//! A server for the integration tests: one socket of every kind, and behaviour the tests steer.
//!
//! Environment:
//! - `TS_EVENTS`: file that receives one line per event (`ready <pid>`, `upgraded <pid> <new>`,
//!   `upgrade-failed <pid> <reason>`, `spawned <pid> <child>`, `exiting <pid>`).
//! - `TS_BEHAVIOUR`: file read at startup: `ok`, `crash` (exit 3 before ready), `exit0`, `hang`
//!   (never ready), `skip-unix` (ready without asking for the unix listener).
//! - `TS_HTTP`: an HTTP listener (`flip::http`) answering `hello from <pid>`;
//! - `TS_TCP`, `TS_TCP6`, `TS_UNIX`, `TS_UDP`, `TS_UNIXGRAM`, `TS_FILE`: sockets and a file to
//!   open through the registry (each optional).
//! - `FLIP_PID_FILE`, `TS_UPGRADE_TIMEOUT_MS`, `TS_LINGER_MS` (how long the predecessor stays
//!   after an upgrade, as if draining).
//!
//! Every stream socket answers each connection with `pid <pid>\n`; every datagram socket answers
//! each datagram the same way. SIGUSR1 spawns `sleep 30` (stdio to /dev/null) and reports its pid;
//! SIGUSR2 calls `Upgrader::stop`. `TS_CHDIR` makes the server change directory once started;
//! behaviour `slow` sleeps 500 ms before installing its SIGHUP handler.

use flip_suite::events;

use std::io::Write;

use events::{env_ms, event};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{SignalKind, signal};

fn main() {
    let pid = std::process::id();
    let behaviour = std::env::var_os("TS_BEHAVIOUR")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_else(|| "ok".into());
    let behaviour = behaviour.trim();
    if behaviour == "wait-before-handoff" {
        // Killed by the test before it could even look at the handoff.
        std::thread::sleep(Duration::from_secs(600));
    }
    let mut options = flip::Options::new();
    if let Some(p) = std::env::var_os("FLIP_PID_FILE") {
        options = options.pid_file(p);
    }
    if let Some(t) = env_ms("TS_UPGRADE_TIMEOUT_MS") {
        options = options.upgrade_timeout(t);
    }
    let upgrader = match flip::Upgrader::new(options) {
        Ok(u) => u,
        Err(e) => {
            event(&format!("error {pid} {}", e.chain()));
            eprintln!("testserver: {}", e.chain());
            std::process::exit(1);
        }
    };
    match behaviour {
        "crash" => std::process::exit(3),
        "exit0" => std::process::exit(0),
        // Slow to start: SIGHUPs sent now must wait, not kill us.
        "slow" => std::thread::sleep(Duration::from_millis(500)),
        _ => {}
    }
    event(&format!(
        "cwd {pid} {}",
        std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    ));
    if let Some(dir) = std::env::var_os("TS_CHDIR") {
        // Wander off: an upgrade must still start in the directory of the first start.
        let _ = std::env::set_current_dir(dir);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(serve(
        upgrader,
        behaviour == "hang",
        behaviour == "skip-unix",
    ));
    if let Err(e) = result {
        event(&format!("error {pid} {}", flip::Chain(&*e)));
        eprintln!("testserver: {}", flip::Chain(&*e));
        std::process::exit(1);
    }
}

async fn serve(
    upgrader: flip::Upgrader,
    hang: bool,
    skip_unix: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let pid = std::process::id();
    if hang {
        // Never ready, and serving nothing: the process being upgraded from keeps every client.
        std::future::pending::<()>().await;
    }
    let fds = upgrader.fds();
    let mut tasks = tokio::task::JoinSet::new();
    let (trigger, shutdown_rx) = flip::Shutdown::pair();
    let mut http = None;
    if let Ok(addr) = std::env::var("TS_TCP") {
        let l = tokio::net::TcpListener::from_std(fds.listen("tcp4", &addr).map(tcp)?)?;
        tasks.spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(format!("pid {pid}\n").as_bytes()).await;
            }
        });
    }
    if let Ok(addr) = std::env::var("TS_TCP6") {
        let l = tokio::net::TcpListener::from_std(fds.listen("tcp6", &addr).map(tcp)?)?;
        tasks.spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(format!("pid {pid}\n").as_bytes()).await;
            }
        });
    }
    if let (Ok(path), false) = (std::env::var("TS_UNIX"), skip_unix) {
        let l = tokio::net::UnixListener::from_std(fds.unix_listener(&path)?)?;
        tasks.spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(format!("pid {pid}\n").as_bytes()).await;
            }
        });
    }
    if let Ok(addr) = std::env::var("TS_UDP") {
        let s = tokio::net::UdpSocket::from_std(fds.udp_socket(&addr)?)?;
        tasks.spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((_, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(format!("pid {pid}\n").as_bytes(), from).await;
            }
        });
    }
    if let Ok(addr) = std::env::var("TS_HTTP") {
        let listener = tokio::net::TcpListener::from_std(fds.tcp_listener(&addr)?)?;
        let shutdown = shutdown_rx.clone();
        http = Some(tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req| async {
                let body = format!("hello from {}\n", std::process::id());
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from(body),
                )))
            });
            let _ = flip::http::HttpServer::new()
                .serve(listener, service, shutdown)
                .await;
        }));
    }
    if let Ok(path) = std::env::var("TS_UNIXGRAM") {
        let s = tokio::net::UnixDatagram::from_std(fds.unix_datagram(&path)?)?;
        tasks.spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((_, from)) = s.recv_from(&mut buf).await {
                if let Some(to) = from.as_pathname() {
                    let _ = s.send_to(format!("pid {pid}\n").as_bytes(), to).await;
                }
            }
        });
    }
    if let Ok(path) = std::env::var("TS_FILE") {
        let file = match fds.file("state")? {
            Some(f) => {
                event(&format!("file {pid} inherited"));
                f
            }
            None => {
                event(&format!("file {pid} created"));
                let f = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&path)?;
                fds.add_file("state", &f)?;
                f
            }
        };
        (&file).write_all(format!("{pid}\n").as_bytes())?;
    }

    let mut hup = flip::upgrade_signal()?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    if let Err(e) = upgrader.ready() {
        // Serve what was accepted already before failing, as the Bootstrap does.
        trigger.trigger();
        if let Some(http) = http.take() {
            let _ = http.await;
        }
        return Err(e.into());
    }
    event(&format!("ready {pid}"));
    let exit = upgrader.exit();
    tokio::pin!(exit);
    let mut upgrades = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let upgrader = upgrader.clone();
                upgrades.spawn(async move {
                    match upgrader.upgrade().await {
                        Ok(new) => event(&format!("upgraded {pid} {new}")),
                        Err(e) => event(&format!("upgrade-failed {pid} {}", reason(&e))),
                    }
                });
            }
            _ = usr1.recv() => {
                let child = std::process::Command::new("sleep")
                    .arg("30")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()?;
                event(&format!("spawned {pid} {}", child.id()));
            }
            _ = usr2.recv() => upgrader.stop(),
            () = &mut exit => break,
        }
    }
    // Stop serving: the successor accepts from the same sockets now.
    tasks.abort_all();
    trigger.trigger();
    if let Some(http) = http {
        let _ = http.await;
    }
    // Let a cancelled upgrade report how it ended.
    while upgrades.join_next().await.is_some() {}
    if let Some(linger) = env_ms("TS_LINGER_MS") {
        tokio::time::sleep(linger).await;
    }
    event(&format!("exiting {pid}"));
    Ok(())
}

fn tcp(l: flip::Listener) -> std::net::TcpListener {
    match l {
        flip::Listener::Tcp(l) => l,
        _ => unreachable!("tcp networks give tcp listeners"),
    }
}

fn reason(e: &flip::Error) -> String {
    use flip::ErrorKind;
    match (e.kind(), e.pid(), e.exit_status()) {
        (ErrorKind::NotReady, ..) => "not-ready".into(),
        (ErrorKind::InProgress, ..) => "in-progress".into(),
        (ErrorKind::AlreadyUpgraded, ..) => "already-upgraded".into(),
        (ErrorKind::Terminating, ..) => "terminating".into(),
        (ErrorKind::PredecessorAlive, ..) => "predecessor-alive".into(),
        (ErrorKind::SuccessorExited, _, Some(status)) => format!("successor-exited {status}"),
        (ErrorKind::Timeout, Some(pid), _) => format!("timeout {pid}"),
        _ => format!("other {e}"),
    }
}
