//! HTTP/1.1 and HTTP/2 serving that drains without losing a request (feature `hyper`).
//!
//! hyper's own graceful shutdown closes a connection that was accepted but whose first request
//! was not read yet, and closes idle keep-alive connections at once, racing with a client that
//! is sending its next request. The drain here avoids both:
//!
//! - the listener stops accepting (connections still queued are the successor's);
//! - every request already read, and every connection already accepted, is served: on HTTP/1.1
//!   each response from now on says `Connection: close`, and a connection that sends a request
//!   within the linger window (default 1 s) is served, then closed;
//! - an HTTP/1.1 connection idle for the whole window is closed;
//! - HTTP/2 connections get GOAWAY at once and finish their streams.
//!
//! ```no_run
//! # use std::convert::Infallible;
//! # async fn demo(ctx: flip::StartContext) -> Result<(), flip::Error> {
//! use flip::http::HttpServer;
//! let listener = ctx.tcp_listener("127.0.0.1:8080")?;
//! let service = hyper::service::service_fn(|_req| async {
//!     Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from("hi"))))
//! });
//! let shutdown = ctx.shutdown();
//! ctx.serve(async move { HttpServer::new().serve(listener, service, shutdown).await });
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::task::JoinSet;

use crate::Shutdown;

mod drain;
mod factory;
mod service;

use drain::{Counted, Drain, DrainAware, DrainHandle, OpenConnection, OpenCount, drain_pair};
pub use factory::ServerFactory;
pub use service::{Accept, HttpBody, HttpService, Io};

/// Default time an idle HTTP/1.1 connection may still send one request once the drain began.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(1);

/// Serves HTTP/1.1 and HTTP/2 (and TLS with the `tls` feature) and drains losslessly.
#[derive(Clone)]
pub struct HttpServer {
    builder: Arc<auto::Builder<TokioExecutor>>,
    linger: Duration,
    /// Connections open now, over every serve of this server and its clones (upgraded ones
    /// included).
    open: Arc<OpenCount>,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("linger", &self.linger)
            .finish_non_exhaustive()
    }
}

impl Default for HttpServer {
    fn default() -> Self {
        HttpServer::new()
    }
}

/// HTTP/1.1 and HTTP/2, with HTTP/2's extended CONNECT (RFC 8441: WebSockets over HTTP/2,
/// which axum's `WebSocketUpgrade` accepts).
fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http2().enable_connect_protocol();
    b
}

impl HttpServer {
    /// HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN over TLS), plain text.
    pub fn new() -> HttpServer {
        HttpServer {
            builder: Arc::new(builder()),
            linger: DEFAULT_LINGER,
            open: Arc::new(OpenCount::default()),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// How long an idle HTTP/1.1 connection may still send one request once the drain began.
    pub fn linger(mut self, linger: Duration) -> HttpServer {
        self.linger = linger;
        self
    }

    /// Connections open now (accepted and not closed yet), over every serve of this server and
    /// of its clones: during a drain, the ones still to finish.
    pub fn open_connections(&self) -> usize {
        self.open.get()
    }

    /// Serves TLS with this certificate chain and private key (PEM files).
    #[cfg(feature = "tls")]
    pub fn tls_from_pem_files(
        mut self,
        cert: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
    ) -> Result<HttpServer, crate::tls::TlsError> {
        self.tls = Some(crate::tls::acceptor(
            cert.as_ref(),
            key.as_ref(),
            &[b"h2", b"http/1.1"],
        )?);
        Ok(self)
    }

    /// Accepts from `listener`, once `shutdown` says the process serves, and serves `service`
    /// until `shutdown` fires; then drains every connection and returns. Dropping the future
    /// stops at once (hard stop): every connection is closed.
    pub async fn serve<L, S, B>(
        &self,
        listener: L,
        service: S,
        mut shutdown: Shutdown,
    ) -> io::Result<()>
    where
        L: Accept,
        S: HttpService<B>,
        B: HttpBody,
    {
        // One drain handle per connection, not a channel they all share: a connection's task
        // checks its handle every time it wakes, and a shared one would put a lock that every
        // request of every connection takes on the hot path.
        let mut drains: HashMap<u64, DrainHandle> = HashMap::new();
        let mut next_id: u64 = 0;
        let mut connections = JoinSet::new();
        shutdown.serving().await;
        // One wait for the whole loop, not one per accepted connection.
        let drain_began = shutdown.clone().signal();
        let mut drain_began = std::pin::pin!(drain_began);
        loop {
            tokio::select! {
                // First: once the drain began (already, at a failed start), accept nothing.
                biased;
                () = &mut drain_began => break,
                accepted = listener.accept() => match accepted {
                    Ok(stream) => {
                        let (handle, drain) = drain_pair();
                        let id = next_id;
                        next_id += 1;
                        drains.insert(id, handle);
                        let stream = Counted { io: stream, _open: OpenConnection::new(&self.open) };
                        let conn = self.clone().connection(stream, service.clone(), drain, shutdown.for_connection());
                        connections.spawn(async move {
                            conn.await;
                            id
                        });
                    }
                    Err(e) => {
                        // Out of descriptors and the like: do not spin on the error.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    if let Ok(id) = done {
                        drains.remove(&id);
                    }
                }
            }
        }
        // Every connection learns of the drain before the listener closes: whoever sees the
        // listener gone (a client, or the successor) can count on responses saying
        // `Connection: close` from then on.
        for (_, handle) in drains.drain() {
            handle.start();
        }
        drop(listener);
        tracing::debug!(connections = connections.len(), "draining HTTP connections");
        while connections.join_next().await.is_some() {}
        // Connections the application took over (HTTP/1.1 upgrades: WebSockets) stay with
        // this process until they close, or the grace period ends it.
        if self.open.get() > 0 {
            tracing::debug!(
                connections = self.open.get(),
                "waiting for upgraded connections"
            );
        }
        self.open.none_open().await;
        Ok(())
    }

    /// [`serve`](HttpServer::serve) for a tower service: an axum `Router`, a tower stack,
    /// anything `hyper_util::service::TowerToHyperService` adapts.
    ///
    /// ```ignore
    /// # async fn demo(ctx: flip::StartContext) -> Result<(), flip::Error> {
    /// let router = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
    /// let listener = ctx.tcp_listener("127.0.0.1:8080")?;
    /// let (app, shutdown) = (router, ctx.shutdown());
    /// ctx.serve(async move { flip::http::HttpServer::new().serve_tower(listener, app, shutdown).await });
    /// # Ok(()) }
    /// ```
    pub async fn serve_tower<L, S, B>(
        &self,
        listener: L,
        service: S,
        shutdown: Shutdown,
    ) -> io::Result<()>
    where
        L: Accept,
        TowerToHyperService<S>: HttpService<B>,
        B: HttpBody,
    {
        self.serve(listener, TowerToHyperService::new(service), shutdown)
            .await
    }

    async fn connection<I, S, B>(self, stream: I, service: S, drain: Drain, shutdown: Shutdown)
    where
        I: Io,
        S: HttpService<B>,
        B: HttpBody,
    {
        #[cfg(feature = "tls")]
        let stream: Box<dyn Io> = match &self.tls {
            // Boxed: the handshake's state is large, and inline it would take room in every
            // connection's task, TLS or not, for the connection's whole life.
            Some(tls) => match Box::pin(tls.accept(stream)).await {
                Ok(s) => Box::new(s),
                Err(e) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
            },
            None => Box::new(stream),
        };
        let http2 = Arc::new(AtomicBool::new(false));
        let service = DrainAware {
            inner: service,
            draining: drain.draining.clone(),
            http2: http2.clone(),
            shutdown,
        };
        // Boxed, like the handshake above: inline, the two made every connection's task
        // several times larger than plain hyper's (BENCHMARKS.md has the sizes).
        let mut conn = Box::pin(
            self.builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service),
        );
        tokio::select! {
            _ = conn.as_mut() => return,
            // An error means the server dropped the handle: it is stopping at once.
            _ = drain.started => {}
        }
        if !http2.load(Ordering::SeqCst) {
            // HTTP/1.1, or nothing read yet: give the client one more request, answered with
            // `Connection: close`, before closing an idle connection.
            tokio::select! {
                _ = conn.as_mut() => return,
                () = tokio::time::sleep(self.linger) => {}
            }
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}
