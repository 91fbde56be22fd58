//! `GracefulStoppableServer` through the HTTP server factory: graceful stop, hard stop and the
//! secure switch, on real loopback sockets.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flip::GracefulStoppableServer;
use flip::http::ServerFactory;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};

const DEADLINE: Duration = Duration::from_secs(20);

/// A service whose `/hold` requests say they started, then wait for `release`.
fn holding_service(
    started: mpsc::UnboundedSender<()>,
    release: Arc<Notify>,
) -> impl hyper::service::Service<
    Request<hyper::body::Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ Sync
+ 'static {
    service_fn(move |req: Request<hyper::body::Incoming>| {
        let (started, release) = (started.clone(), release.clone());
        async move {
            if req.uri().path() == "/hold" {
                let _ = started.send(());
                release.notified().await;
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
        }
    })
}

fn listener() -> (flip::Listener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let addr = l.local_addr().expect("addr").to_string();
    (flip::Listener::Tcp(l), addr)
}

async fn send(addr: &str, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    s
}

/// Reads until the server closes the connection or a whole `done` response arrived.
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"done") {
                    break;
                }
            }
            Err(_) => panic!("no response and no close within {DEADLINE:?}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A factory serving one listener, with one `/hold` request in its service.
struct Held<F> {
    servers: F,
    serving: tokio::task::JoinHandle<Result<(), flip::BoxError>>,
    client: TcpStream,
    addr: String,
    release: Arc<Notify>,
}

async fn hold_one_request() -> Held<impl GracefulStoppableServer + Clone + 'static> {
    let (tx, mut started) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let servers = ServerFactory::new(holding_service(tx, release.clone()));
    let (l, addr) = listener();
    let serving = tokio::spawn({
        let servers = servers.clone();
        async move { servers.serve(l, false).await }
    });
    let client = send(&addr, "/hold").await;
    tokio::time::timeout(DEADLINE, started.recv())
        .await
        .expect("the request reached the service");
    Held {
        servers,
        serving,
        client,
        addr,
        release,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_finishes_the_request_in_flight_then_resolves() {
    let Held {
        servers,
        serving,
        mut client,
        addr,
        release,
    } = hold_one_request().await;
    let stop = servers.graceful_stop();
    tokio::pin!(stop);
    // The request is held: the stop cannot be complete.
    tokio::select! {
        biased;
        () = &mut stop => panic!("graceful stop resolved with a request in flight"),
        () = tokio::task::yield_now() => {}
    }
    // New connections are no longer accepted: the listener is closed.
    let refused = async {
        while TcpStream::connect(&addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(DEADLINE, refused)
        .await
        .expect("the listener closes when the graceful stop begins");

    release.notify_one();
    let response = read_response(&mut client).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("done"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    tokio::time::timeout(DEADLINE, stop)
        .await
        .expect("graceful stop resolves once the request finished");
    let served = tokio::time::timeout(DEADLINE, serving)
        .await
        .expect("serve returned")
        .expect("serve task");
    assert!(served.is_ok(), "{served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_closes_the_request_in_flight_at_once() {
    let Held {
        servers,
        serving,
        mut client,
        ..
    } = hold_one_request().await;

    servers.stop();
    let response = read_response(&mut client).await;
    assert_eq!(response, "", "a hard stop answers nothing");
    let served = tokio::time::timeout(DEADLINE, serving)
        .await
        .expect("serve returned")
        .expect("serve task");
    assert!(served.is_ok(), "{served:?}");
    // A serve after the stop returns at once.
    let (l, _) = listener();
    let late = tokio::time::timeout(DEADLINE, servers.serve(l, false)).await;
    assert!(matches!(late, Ok(Ok(()))), "{late:?}");
}

#[tokio::test]
async fn a_secure_serve_without_tls_names_what_is_missing() {
    let (tx, _started) = mpsc::unbounded_channel();
    let servers = ServerFactory::new(holding_service(tx, Arc::new(Notify::new())));
    let (l, _) = listener();
    let err = servers
        .serve(l, true)
        .await
        .expect_err("no TLS configured")
        .to_string();
    assert!(err.contains("tls_from_pem_files"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_token_starts_the_graceful_stop_of_every_serve() {
    let (tx, _started) = mpsc::unbounded_channel();
    let (trigger, token) = flip::Shutdown::pair();
    let servers = ServerFactory::new(holding_service(tx, Arc::new(Notify::new()))).follow(token);
    let mut serves = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let (l, addr) = listener();
        addrs.push(addr);
        let servers = servers.clone();
        serves.push(tokio::spawn(async move { servers.serve(l, false).await }));
    }
    for addr in &addrs {
        let mut c = send(addr, "/").await;
        let r = read_response(&mut c).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    trigger.trigger();
    for s in serves {
        let served = tokio::time::timeout(DEADLINE, s)
            .await
            .expect("serve returned after the token fired")
            .expect("serve task");
        assert!(served.is_ok(), "{served:?}");
    }
    tokio::time::timeout(DEADLINE, servers.graceful_stop())
        .await
        .expect("nothing left to drain");
}

/// Polls `condition` until it holds, or fails after [`DEADLINE`].
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_counts_each_connection_until_it_closes() {
    let (tx, mut started) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let servers = ServerFactory::new(holding_service(tx, release.clone()));
    assert_eq!(servers.open_connections(), 0);
    let (l, addr) = listener();
    let serving = tokio::spawn({
        let servers = servers.clone();
        async move { servers.serve(l, false).await }
    });
    let mut held = send(&addr, "/hold").await;
    tokio::time::timeout(DEADLINE, started.recv())
        .await
        .expect("the request reached the service");
    let idle = TcpStream::connect(&addr).await.expect("connect");
    wait_until("two open connections", || servers.open_connections() == 2).await;

    release.notify_one();
    let response = read_response(&mut held).await;
    assert!(response.ends_with("done"), "{response}");
    drop((held, idle));
    wait_until("no open connection", || servers.open_connections() == 0).await;
    servers.stop();
    let served = tokio::time::timeout(DEADLINE, serving)
        .await
        .expect("serve returned")
        .expect("serve task");
    assert!(served.is_ok(), "{served:?}");
}
