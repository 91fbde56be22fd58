//! The gRPC example across upgrades: unary calls and server streams, insecure and TLS.

use flip_suite as support;

use flip_suite::demo;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Whether the server never processed the call: flip's test kit decides it as gRPC's
/// transparent-retry rule does (tonic's client does not retry such calls, so the tests do, and
/// count them).
use flip::testing::grpc::never_processed as never_sent;

/// Calls `f` until it succeeds or fails for a reason other than [`never_sent`].
async fn transparently_retried<T, F, Fut>(tally: &Tally, mut f: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    for _ in 0..10 {
        match f().await {
            Err(e) if never_sent(&e) => {
                tally.retried.fetch_add(1, Ordering::SeqCst);
            }
            other => return other,
        }
    }
    f().await
}

#[derive(Default)]
struct Tally {
    retried: AtomicU64,
    calls: AtomicU64,
    failed: AtomicU64,
    streams: AtomicU64,
    broken_streams: AtomicU64,
    pids: std::sync::Mutex<Vec<u32>>,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn saw(&self, pid: u32) {
        let mut pids = self.pids.lock().unwrap();
        if !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    fn error(&self, e: String) {
        self.errors.lock().unwrap().push(e);
    }
}

fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy()
}

#[test]
fn every_call_and_stream_completes_across_ten_upgrades() {
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        "grpc-load",
        &example_path("grpc"),
        &[("GRPC_ADDR", addr.clone())],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter(); // channels spawn their connection tasks on this runtime
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (ch, stop, tally) = (channel(&addr), stop.clone(), tally.clone());
        tasks.push(rt.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match transparently_retried(&tally, || demo::hello(ch.clone(), "flip")).await {
                    Ok(r) => {
                        tally.calls.fetch_add(1, Ordering::SeqCst);
                        tally.saw(r.pid);
                    }
                    Err(e) => {
                        tally.failed.fetch_add(1, Ordering::SeqCst);
                        tally.error(format!("hello: {e}"));
                    }
                }
            }
        }));
    }
    for _ in 0..2 {
        let (ch, stop, tally) = (channel(&addr), stop.clone(), tally.clone());
        tasks.push(rt.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match transparently_retried(&tally, || demo::count(ch.clone(), 8, 25)).await {
                    Ok(replies) => {
                        let complete = replies.len() == 8
                            && replies
                                .iter()
                                .enumerate()
                                .all(|(i, r)| r.index as usize == i)
                            && replies.iter().all(|r| r.pid == replies[0].pid);
                        if complete {
                            tally.streams.fetch_add(1, Ordering::SeqCst);
                        } else {
                            tally.broken_streams.fetch_add(1, Ordering::SeqCst);
                            tally.error(format!("stream: {replies:?}"));
                        }
                    }
                    Err(e) => {
                        tally.broken_streams.fetch_add(1, Ordering::SeqCst);
                        tally.error(format!("count: {e}"));
                    }
                }
            }
        }));
    }
    let wait_more = |n: u64| {
        let (calls, streams) = (
            tally.calls.load(Ordering::SeqCst),
            tally.streams.load(Ordering::SeqCst),
        );
        wait_for("more calls and streams", DEADLINE, || {
            (tally.calls.load(Ordering::SeqCst) >= calls + n
                && tally.streams.load(Ordering::SeqCst) > streams)
                .then_some(())
        });
    };
    let mut generations = vec![server.first_pid];
    for _ in 0..10 {
        wait_more(50);
        generations.push(server.upgrade_ok());
    }
    wait_more(50);
    stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let errors = tally.errors.lock().unwrap().clone();
    eprintln!(
        "grpc: {} calls, {} streams, {} calls retried transparently (never sent)",
        tally.calls.load(Ordering::SeqCst),
        tally.streams.load(Ordering::SeqCst),
        tally.retried.load(Ordering::SeqCst)
    );
    assert_eq!(tally.failed.load(Ordering::SeqCst), 0, "{errors:?}");
    assert_eq!(tally.broken_streams.load(Ordering::SeqCst), 0, "{errors:?}");
    let pids = tally.pids.lock().unwrap().clone();
    for g in &generations {
        assert!(pids.contains(g), "generation {g} never answered: {pids:?}");
    }
}

#[test]
fn health_and_tls_work_after_an_upgrade() {
    let scratch = Scratch::new("grpc-tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (scratch.path("cert.pem"), scratch.path("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start_in(
        scratch,
        &example_path("grpc"),
        &[
            ("GRPC_ADDR", addr.clone()),
            ("GRPC_TLS_ADDR", tls_addr.clone()),
            ("GRPC_TLS_CERT", cert_path.display().to_string()),
            ("GRPC_TLS_KEY", key_path.display().to_string()),
        ],
    );
    // Multi-threaded, so that client connections keep answering the server (GOAWAY, PING)
    // between two checks, as a live client does.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cert.cert.pem()))
        .domain_name("localhost");
    let check = |pid: u32| {
        rt.block_on(async {
            // A fresh connection each time: the one before may belong to the predecessor.
            let secure = Endpoint::from_shared(format!("https://{tls_addr}"))
                .unwrap()
                .tls_config(tls.clone())
                .unwrap()
                .connect()
                .await
                .expect("TLS connect");
            let reply = demo::hello(secure, "tls").await.expect("hello over TLS");
            assert_eq!(reply.pid, pid);
            let insecure = Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut health = tonic_health::pb::health_client::HealthClient::new(insecure);
            for service in ["", "flip.example.Demo"] {
                let status = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    .expect("health check")
                    .into_inner()
                    .status;
                assert_eq!(
                    status,
                    tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                    "{service:?}"
                );
            }
        })
    };
    check(server.first_pid);
    let new = server.upgrade_ok();
    check(new);
}
