//! The HTTP adapter through the `http` example: real processes, real traffic, TLS.

use flip_suite as support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use support::load::{AssertLossless, Load, Mode};
use support::*;

fn start_example(name: &str, extra: &[(&str, String)]) -> (Server, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = vec![("HTTP_ADDR", addr.clone()), ("RUST_LOG", "info".to_owned())];
    env.extend(extra.iter().cloned());
    (Server::start(name, &example_path("http"), &env), addr)
}

fn ten_upgrades_under_load(mode: Mode) {
    let (server, addr) = start_example("http-load", &[]);
    let load = Load::start(&addr, 6, mode);
    let mut generations = vec![server.first_pid];
    for _ in 0..10 {
        load.wait_for_more(100);
        generations.push(server.upgrade_ok());
    }
    load.wait_for_more(100);
    let report = load.finish();
    assert_eq!(report.idle_close_races, 0, "{mode:?}: {report:?}");
    report.assert_lossless_across(&generations);
}

#[test]
fn ten_upgrades_under_load_lose_nothing_with_a_connection_per_request() {
    ten_upgrades_under_load(Mode::Close);
}

#[test]
fn ten_upgrades_under_load_lose_nothing_with_keep_alive() {
    ten_upgrades_under_load(Mode::KeepAlive);
}

#[test]
fn a_long_request_started_before_an_upgrade_completes_on_the_old_process() {
    let (server, addr) = start_example("http-long", &[]);
    let old = server.first_pid;
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(b"GET /sleep/5000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // The response only comes after 1.5 s: upgrade once the predecessor has accepted the
    // connection, so the request is in flight there.
    let (server_port, client_port) = (
        conn.peer_addr().unwrap().port(),
        conn.local_addr().unwrap().port(),
    );
    wait_for("the predecessor to accept the connection", DEADLINE, || {
        let inode = tcp_server_socket_inode(server_port, client_port)?;
        holds_socket(old, inode).then_some(())
    });
    let new = server.upgrade().expect("upgrade");
    server.wait_pid_file(new);
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(&format!("hello from {old}")),
        "{response}"
    );
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "the draining process asks the client to reconnect: {response}"
    );
    wait_exit(old, DEADLINE);
    assert_eq!(http_get(&addr, "/"), Some(format!("hello from {new}\n")));
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

fn https_get(addr: &str, cert_der: &[u8]) -> Result<String, String> {
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert_der.to_vec()))
        .map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    // A peer that closes without close_notify is reported as an error after the data.
    let _ = tls.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .ok_or_else(|| format!("no response: {out:?}"))
}

#[test]
fn tls_works_after_an_upgrade() {
    let scratch = Scratch::new("https");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (scratch.path("cert.pem"), scratch.path("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let der = cert.cert.der().to_vec();
    let https = format!("127.0.0.1:{}", free_port());
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start_in(
        scratch,
        &example_path("http"),
        &[
            ("HTTP_ADDR", addr.clone()),
            ("HTTPS_ADDR", https.clone()),
            ("HTTPS_CERT", cert_path.display().to_string()),
            ("HTTPS_KEY", key_path.display().to_string()),
        ],
    );
    let old = server.first_pid;
    assert_eq!(https_get(&https, &der), Ok(format!("hello from {old}\n")));
    let new = server.upgrade_ok();
    assert_eq!(https_get(&https, &der), Ok(format!("hello from {new}\n")));
    assert_eq!(http_get(&addr, "/"), Some(format!("hello from {new}\n")));
}

#[test]
fn the_unix_example_serves_across_upgrades() {
    let scratch = Scratch::new("unix-example");
    let path = scratch.path("http.sock");
    let server = Server::start_in(
        scratch,
        &example_path("unix"),
        &[("HTTP_SOCKET", path.display().to_string())],
    );
    let get = |path: &std::path::Path| -> Option<String> {
        let mut s = std::os::unix::net::UnixStream::connect(path).ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
    };
    assert_eq!(
        get(&path),
        Some(format!("hello from {}\n", server.first_pid))
    );
    for _ in 0..3 {
        let new = server.upgrade_ok();
        assert_eq!(get(&path), Some(format!("hello from {new}\n")));
    }
}
