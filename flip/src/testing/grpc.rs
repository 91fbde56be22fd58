//! gRPC load for the check (feature `testing-grpc`): clients calling
//! `grpc.health.v1.Health/Check` in a loop, one HTTP/2 connection each, counting failures.
//!
//! A call that the client queued on a connection just as the server's GOAWAY arrived was never
//! processed by the server, and HTTP/2 says so (the stream is above the GOAWAY's last stream
//! id, or was never opened). gRPC's transparent-retry rule lets a client retry exactly those,
//! and grpc-go does; tonic reports them as errors. These clients retry them and count them
//! apart ([`GrpcReport::retried`]): they are not losses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// What the gRPC clients saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GrpcReport {
    /// Calls answered `SERVING`.
    pub answered: u64,
    /// Calls that failed (an error status, or no answer), after transparent retries.
    pub failed: u64,
    /// Calls the server never processed, retried as gRPC allows.
    pub retried: u64,
    /// The first few errors, for the report.
    pub errors: Vec<String>,
}

/// Whether the server never processed the call (see the module's documentation).
pub fn never_processed(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && h.is_canceled()
        {
            return true;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote();
        }
        source = e.source();
    }
    false
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    answered: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

/// gRPC load running on a runtime of its own until [`GrpcLoad::finish`].
pub struct GrpcLoad {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for GrpcLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcLoad").finish_non_exhaustive()
    }
}

impl GrpcLoad {
    /// `clients` clients calling the health service at `addr` (`host:port`, plain text), each
    /// stopping by itself after `limit`.
    pub fn start(addr: &str, clients: usize, limit: Duration) -> std::io::Result<GrpcLoad> {
        let shared = Arc::new(Shared::default());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let uri = format!("http://{addr}");
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for _ in 0..clients {
                    tasks.spawn(client(uri.clone(), s.clone(), Instant::now() + limit));
                }
                while tasks.join_next().await.is_some() {}
            });
        });
        Ok(GrpcLoad {
            shared,
            thread: Some(thread),
        })
    }

    /// Calls answered so far.
    pub fn answered(&self) -> u64 {
        self.shared.answered.load(Ordering::Relaxed)
    }

    /// Stops the clients and adds up what they saw.
    pub fn finish(mut self) -> GrpcReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        GrpcReport {
            answered: self.shared.answered.load(Ordering::SeqCst),
            failed: self.shared.failed.load(Ordering::SeqCst),
            retried: self.shared.retried.load(Ordering::SeqCst),
            errors: crate::sync::lock(&self.shared.errors).clone(),
        }
    }
}

async fn client(uri: String, s: Arc<Shared>, end: Instant) {
    let fail = |what: String| {
        s.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = crate::sync::lock(&s.errors);
        if errors.len() < 10 {
            errors.push(what);
        }
    };
    while !s.stop.load(Ordering::Relaxed) && Instant::now() < end {
        let channel = match tonic::transport::Endpoint::from_shared(uri.clone()) {
            Ok(e) => match e.connect().await {
                Ok(c) => c,
                Err(e) => {
                    fail(format!("connect: {}", crate::error::Chain(&e)));
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
            Err(e) => {
                fail(format!("bad address {uri}: {e}"));
                return;
            }
        };
        let mut health = HealthClient::new(channel);
        // One channel for many calls, as a long-lived client keeps it (tonic reconnects it
        // when the server's connection goes away).
        'calls: while !s.stop.load(Ordering::Relaxed) && Instant::now() < end {
            for _ in 0..10 {
                match health.check(HealthCheckRequest::default()).await {
                    Ok(_) => {
                        s.answered.fetch_add(1, Ordering::Relaxed);
                        continue 'calls;
                    }
                    Err(e) if never_processed(&e) => {
                        s.retried.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        fail(crate::error::Chain(&e).to_string());
                        break 'calls;
                    }
                }
            }
            fail("10 calls in a row were never processed".into());
            break;
        }
    }
}
