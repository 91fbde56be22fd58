//! The axum example across upgrades, with a real WebSocket client (tokio-tungstenite): sessions
//! stay with the predecessor until its drain notice, then reconnect to the new one; the event
//! stream says `reconnect`; the readiness probe turns unready as the drain begins.

use std::io::{BufRead, BufReader, Read, Write};

use flip_suite as support;
use futures_util::{SinkExt, StreamExt};
use support::load::{AssertLossless, Load, Mode};
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn axum_server(name: &str) -> (Server, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start(name, &example_path("axum"), &[("HTTP_ADDR", addr.clone())]);
    (server, addr)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects and returns the socket and the pid in its greeting.
async fn connect(addr: &str) -> (Socket, u32) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("WebSocket handshake");
    let greeting = next_text(&mut ws).await;
    let pid = greeting
        .strip_prefix("hello from ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("greeting {greeting:?}"));
    (ws, pid)
}

async fn next_text(ws: &mut Socket) -> String {
    match tokio::time::timeout(DEADLINE, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Sends `text` and returns the echo.
async fn echo(ws: &mut Socket, text: &str) -> String {
    ws.send(Message::Text(text.into())).await.expect("send");
    next_text(ws).await
}

/// Connects to `/ws` until the process `pid` answers (right after an upgrade the old one may
/// still take a connection, or refuse the WebSocket once draining), and returns the session.
async fn session_with(addr: &str, pid: u32) -> Socket {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await
            && next_text(&mut ws).await == format!("hello from {pid}")
        {
            return ws;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pid} never answered"
        );
    }
}

/// Upgrades off the runtime (the harness blocks), waits until the pid file names the new
/// process, and gives the server back with the new pid.
async fn upgrade_to_new(server: Server, what: &'static str) -> (Server, u32) {
    tokio::task::spawn_blocking(move || {
        let new = server.upgrade().unwrap_or_else(|e| panic!("{what}: {e}"));
        server.wait_pid_file(new);
        (server, new)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_stay_with_the_old_process_until_its_drain_notice_then_reconnect() {
    let (server, addr) = axum_server("axum-ws");
    let old = server.first_pid;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let (ws, pid) = connect(&addr).await;
        assert_eq!(pid, old);
        sessions.push(ws);
    }
    let load = Load::start(&addr, 2, Mode::Close);
    // The predecessor answers some request before it is upgraded (the report asserts it).
    load.wait_for_more(20);
    let upgraded = tokio::task::spawn_blocking(move || {
        let new = server.upgrade().expect("upgrade");
        (server, new)
    });
    let (server, new) = upgraded.await.unwrap();
    assert_ne!(new, old);
    for ws in &mut sessions {
        // Until its notice, the session is the predecessor's, and works.
        loop {
            match tokio::time::timeout(DEADLINE, ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(frame))))) => {
                    assert_eq!(frame.code, CloseCode::Restart, "{frame:?}");
                    // Answer the close, as a client does.
                    let _ = ws.close(None).await;
                    break;
                }
                Ok(Some(Ok(Message::Text(t)))) => {
                    assert!(t.as_str().starts_with(&format!("{old}")), "{t}")
                }
                other => panic!("expected the drain notice, got {other:?}"),
            }
        }
    }
    // Reconnected, every session lands on the successor.
    for _ in 0..3 {
        let (mut ws, pid) = connect(&addr).await;
        assert_eq!(pid, new);
        assert_eq!(echo(&mut ws, "ping").await, format!("{new}: ping"));
    }
    let old_gone = tokio::task::spawn_blocking(move || {
        wait_exit(old, DEADLINE);
        server
    });
    let server = old_gone.await.unwrap();
    load.wait_for_more(20);
    load.finish().assert_lossless_across(&[old, new]);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_session_keeps_the_old_process_alive_and_working_while_it_drains() {
    // A client that ignores the notice: the predecessor keeps its session until it closes.
    let (server, addr) = axum_server("axum-hold");
    let old = server.first_pid;
    let (mut ws, _) = connect(&addr).await;
    let upgraded = tokio::task::spawn_blocking(move || {
        let new = server.upgrade().expect("upgrade");
        (server, new)
    });
    let (server, new) = upgraded.await.unwrap();
    // The notice came; the predecessor still runs, holding the session.
    match tokio::time::timeout(DEADLINE, ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(frame.code, CloseCode::Restart),
        other => panic!("expected the drain notice, got {other:?}"),
    }
    assert!(
        alive(old),
        "the predecessor waits for its upgraded connection"
    );
    assert_eq!(server.pid(), Some(new));
    ws.close(None).await.ok();
    drop(ws);
    let gone = tokio::task::spawn_blocking(move || {
        wait_exit(old, DEADLINE);
        server
    });
    drop(gone.await.unwrap());
}

#[test]
fn the_event_stream_says_reconnect_and_the_probe_turns_unready_when_the_drain_begins() {
    let (server, addr) = axum_server("axum-sse");
    let old = server.first_pid;
    // A keep-alive connection to the predecessor, for the probe after the drain began.
    let mut probe = std::net::TcpStream::connect(&addr).unwrap();
    let ask = |c: &mut std::net::TcpStream| -> String {
        c.write_all(b"GET /ready HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut reader = BufReader::new(c.try_clone().unwrap());
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        status.trim().to_owned()
    };
    assert_eq!(ask(&mut probe), "HTTP/1.1 200 OK");

    let mut events = std::net::TcpStream::connect(&addr).unwrap();
    events
        .write_all(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    events.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut stream = BufReader::new(events);
    let mut seen = String::new();
    while !seen.contains(&format!("tick {old} 1")) {
        let mut line = String::new();
        assert!(
            stream.read_line(&mut line).unwrap() > 0,
            "stream ended: {seen}"
        );
        seen.push_str(&line);
    }
    let new = server.upgrade().expect("upgrade");
    assert_ne!(new, old);
    // The predecessor answers the probe until its drain began, then: unready (and, as every
    // answer once draining, `Connection: close`).
    wait_for("the predecessor's probe to say unready", DEADLINE, || {
        (ask(&mut probe) == "HTTP/1.1 503 Service Unavailable").then_some(())
    });
    while !seen.contains(&format!("data: {old} drains")) {
        let mut line = String::new();
        assert!(
            stream.read_line(&mut line).unwrap() > 0,
            "stream ended: {seen}"
        );
        seen.push_str(&line);
    }
    assert!(seen.contains("event: reconnect"), "{seen}");
    wait_exit(old, DEADLINE);
}

/// Processes now running `exe` for the server on `addr` (the other tests run it too).
/// The generations of the server at `addr` alive now: processes of `exe` serving or draining
/// there. The serving process's standby (its child, not serving yet: with `FLIP_MAX_DRAINING`
/// it is started at once) is not a generation.
fn running(exe: &std::path::Path, addr: &str, pid_file: &std::path::Path) -> Vec<u32> {
    let all = processes_of(exe, addr);
    // Read after the processes, so that a standby among them is a child by now.
    let standby = pid_in(pid_file).map(children_of).unwrap_or_default();
    all.into_iter().filter(|p| !standby.contains(p)).collect()
}

fn processes_of(exe: &std::path::Path, addr: &str) -> Vec<u32> {
    let mine = format!("HTTP_ADDR={addr}");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|x| x == exe)
                && alive(pid)
                && environ(pid).contains(&mine)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_max_draining_2_three_upgrades_overlap_long_drains_and_the_third_waits_for_the_oldest()
{
    let addr = format!("127.0.0.1:{}", free_port());
    let exe = example_path("axum");
    let server = Server::start(
        "axum-overlap",
        &exe,
        &[
            ("HTTP_ADDR", addr.clone()),
            ("FLIP_MAX_DRAINING", "2".into()),
        ],
    );
    // Count the generations alive, all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let most = std::thread::spawn({
        let (stop, exe, addr) = (stop.clone(), exe.clone(), addr.clone());
        let pid_file = server.pid_file.clone();
        move || {
            let mut most = 0;
            let end = std::time::Instant::now() + DEADLINE;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && std::time::Instant::now() < end
            {
                let r = running(&exe, &addr, &pid_file);
                most = most.max(r.len());
                std::thread::park_timeout(std::time::Duration::from_millis(1));
            }
            most
        }
    });
    let load = Load::start(&addr, 2, Mode::Close);
    // Each generation holds a WebSocket client that never answers the drain notice: its drain
    // lasts until the example lets the client go (5 s), longer than these upgrades take.
    let mut generations = vec![server.first_pid];
    let mut held = Vec::new();
    let mut server = server;
    for _ in 0..3 {
        // Right after an upgrade the predecessor may still take a connection, until its drain
        // closes its listener, and answer it or refuse the upgrade (once draining): connect
        // until the newest generation answers.
        held.push(session_with(&addr, *generations.last().unwrap()).await);
        let new;
        (server, new) = upgrade_to_new(server, "an upgrade while older generations drain").await;
        generations.push(new);
    }
    // The third upgrade would have left three draining: it waited for the first generation
    // to finish its drain first (it lets its WebSocket client go after 5 s).
    assert!(!alive(generations[0]), "the oldest generation exited");
    assert!(
        server
            .log()
            .contains("waiting for the oldest draining generation to finish what it accepted"),
        "{}",
        server.log()
    );
    // The second generation's drain began right after the first's, and may have ended while
    // the third upgrade waited; the third's drain has just begun.
    assert!(alive(generations[2]), "the newest older generation drains");
    load.wait_for_more(20);
    let report = load.finish();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let most = most.join().unwrap();
    eprintln!(
        "overlapping upgrades: {} requests, {} failed; at most {most} generations alive",
        report.answered, report.failed
    );
    report.assert_lossless_across(&generations[1..]);
    assert!(
        most <= 3,
        "at most 2 draining and 1 serving; saw {most} alive"
    );
    drop(held);
    let last = *generations.last().unwrap();
    tokio::task::spawn_blocking(move || {
        for &g in &generations[1..3] {
            wait_exit(g, DEADLINE);
        }
        assert_eq!(server.pid(), Some(last));
    })
    .await
    .unwrap();
}

/// One WebSocket frame as the server sends it (unmasked): opcode and payload.
struct Frame {
    opcode: u8,
    payload: Vec<u8>,
}

/// A WebSocket over one HTTP/2 stream (RFC 8441), with frames written by hand: no client
/// library speaks it, and the test needs only text and close frames.
struct H2Socket {
    send: h2::SendStream<bytes::Bytes>,
    recv: h2::RecvStream,
    buffered: Vec<u8>,
}

impl H2Socket {
    async fn connect(addr: &str) -> (H2Socket, tokio::task::JoinHandle<()>) {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        // The server's SETTINGS say whether it takes extended CONNECT; they come in their time.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        client = client.ready().await.expect("h2 ready");
        while !client.is_extended_connect_protocol_enabled() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server never enabled extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL)"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let mut request = hyper::Request::builder()
            .method(hyper::Method::CONNECT)
            .uri(format!("http://{addr}/ws"))
            .header("sec-websocket-version", "13")
            .body(())
            .expect("request");
        request
            .extensions_mut()
            .insert(h2::ext::Protocol::from_static("websocket"));
        let (response, send) = client.send_request(request, false).expect("send CONNECT");
        let response = tokio::time::timeout(DEADLINE, response)
            .await
            .expect("a response to CONNECT in time")
            .expect("response");
        assert_eq!(response.status(), hyper::StatusCode::OK, "{response:?}");
        let recv = response.into_body();
        (
            H2Socket {
                send,
                recv,
                buffered: Vec::new(),
            },
            driver,
        )
    }

    /// Sends a client frame: masked, as RFC 6455 requires of clients.
    fn send(&mut self, opcode: u8, payload: &[u8]) {
        assert!(payload.len() < 126, "short frames only");
        let mask = [0x5a, 0x17, 0xc3, 0x08];
        let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        self.send
            .send_data(bytes::Bytes::from(frame), false)
            .expect("send a frame");
    }

    async fn next(&mut self) -> Frame {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buffered) {
                self.buffered.drain(..used);
                return frame;
            }
            let data = tokio::time::timeout(DEADLINE, self.recv.data())
                .await
                .expect("a frame in time")
                .expect("the stream ended before a whole frame")
                .expect("stream data");
            let _ = self.recv.flow_control().release_capacity(data.len());
            self.buffered.extend_from_slice(&data);
        }
    }

    async fn next_text(&mut self) -> String {
        let frame = self.next().await;
        assert_eq!(frame.opcode, 0x1, "expected a text frame");
        String::from_utf8(frame.payload).expect("UTF-8 text")
    }
}

/// A whole unmasked server frame at the start of `buf`, and how many bytes it took.
fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    assert_eq!(b1 & 0x80, 0, "a server's frames are not masked");
    let (len, start) = match b1 & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => panic!("no frame here is that long"),
        n => (n as usize, 2),
    };
    let payload = buf.get(start..start + len)?.to_vec();
    Some((
        Frame {
            opcode: b0 & 0x0f,
            payload,
        },
        start + len,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_http2_is_served_and_told_to_reconnect_at_the_drain() {
    let (server, addr) = axum_server("axum-h2-ws");
    let old = server.first_pid;
    let (mut ws, driver) = H2Socket::connect(&addr).await;
    assert_eq!(ws.next_text().await, format!("hello from {old}"));
    ws.send(0x1, b"ping");
    assert_eq!(ws.next_text().await, format!("{old}: ping"));

    let upgraded = tokio::task::spawn_blocking(move || {
        let new = server.upgrade().expect("upgrade");
        (server, new)
    });
    let (server, new) = upgraded.await.unwrap();
    assert_ne!(new, old);
    // The session stays with the predecessor until its notice: close, 1012 (service restart).
    let close = ws.next().await;
    assert_eq!(close.opcode, 0x8, "expected a close frame");
    assert_eq!(close.payload.get(..2), Some(&1012u16.to_be_bytes()[..]));
    ws.send(0x8, &1000u16.to_be_bytes());
    let _ = ws.send.send_data(bytes::Bytes::new(), true);
    let old_gone = tokio::task::spawn_blocking(move || {
        wait_exit(old, DEADLINE);
        server
    });
    let server = old_gone.await.unwrap();
    driver.abort();

    // The successor serves WebSockets over HTTP/2 too.
    let (mut ws, driver) = H2Socket::connect(&addr).await;
    assert_eq!(ws.next_text().await, format!("hello from {new}"));
    ws.send(0x1, b"pong");
    assert_eq!(ws.next_text().await, format!("{new}: pong"));
    driver.abort();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_to_the_previous_release_runs_while_both_older_generations_drain() {
    let scratch = Scratch::new("axum-rollback");
    let addr = format!("127.0.0.1:{}", free_port());
    // Releases side by side, `current` pointing at one, as deploy tools lay them out.
    for release in ["release-1", "release-2"] {
        std::fs::create_dir(scratch.path(release)).unwrap();
        std::fs::copy(example_path("axum"), scratch.path(release).join("axum")).unwrap();
    }
    let switch_to = |dir: &std::path::Path, release: &str| {
        let _ = std::fs::remove_file(dir.join("current.new"));
        std::os::unix::fs::symlink(release, dir.join("current.new")).unwrap();
        std::fs::rename(dir.join("current.new"), dir.join("current")).unwrap();
    };
    let dir = scratch.path("");
    switch_to(&dir, "release-1");
    let release = |n: &str| scratch.path(n).join("axum").canonicalize().unwrap();
    let (r1, r2) = (release("release-1"), release("release-2"));
    let exe_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let start_path = scratch.path("current").join("axum");
    let server = Server::start_in(
        scratch,
        &start_path,
        &[
            ("HTTP_ADDR", addr.clone()),
            ("FLIP_MAX_DRAINING", "2".into()),
        ],
    );
    let first = server.first_pid;
    assert_eq!(exe_of(first), r1);
    let load = Load::start(&addr, 2, Mode::Close);
    // Each generation holds a WebSocket client that never answers the drain notice, so it
    // drains for the example's 5 s, longer than the rest of this test's upgrades take.
    let mut held = vec![session_with(&addr, first).await];

    // The deploy: release 2.
    switch_to(&dir, "release-2");
    let (server, second) = upgrade_to_new(server, "the upgrade to release 2").await;
    assert_eq!(exe_of(second), r2);
    held.push(session_with(&addr, second).await);

    // Release 2 is bad: back to release 1 at once, while both older generations still drain.
    switch_to(&dir, "release-1");
    let (server, third) =
        upgrade_to_new(server, "the rollback while older generations drain").await;
    assert_eq!(exe_of(third), r1, "the rollback runs release 1 again");
    assert!(
        alive(first) && alive(second),
        "both older generations still drain (max 2)"
    );
    let mut ws = session_with(&addr, third).await;
    assert_eq!(echo(&mut ws, "back").await, format!("{third}: back"));
    load.wait_for_more(20);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(
        report.pids.contains(&third),
        "the rolled-back release serves: {report:?}"
    );
    drop((held, ws, server));
}
