//! A deliberately lossy server, for the test that `flip check` can fail: on `SIGHUP` it closes
//! its listener, starts itself again (the successor binds the address anew) and exits at
//! once, dropping what it was serving. Connections that arrive in between are refused.
//!
//! Environment: `HTTP_ADDR` (the address), `FLIP_PID_FILE` (written by each process once it
//! listens).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:18099".into());
    let pid_file = std::env::var_os("FLIP_PID_FILE");
    // The predecessor may still hold the address for a moment: retry.
    let listener = loop {
        match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
        }
    };
    if let Some(p) = &pid_file {
        let tmp = std::path::PathBuf::from(format!("{}.tmp", p.to_string_lossy()));
        std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
        std::fs::rename(&tmp, p)?;
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                drop(listener);
                std::process::Command::new(std::env::current_exe()?).spawn()?;
                std::process::exit(0);
            }
            _ = term.recv() => std::process::exit(0),
            accepted = listener.accept() => {
                let (mut conn, _) = accepted?;
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = format!("hello from {}", std::process::id());
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                });
            }
        }
    }
}
