//! HTTP/1.1 and HTTP/2 serving that drains without losing a request (feature `hyper`).
//!
//! hyper's own graceful shutdown closes a connection that was accepted but whose first request
//! was not read yet, and closes idle keep-alive connections at once, racing with a client that
//! is sending its next request. The drain here avoids both:
//!
//! - the listener stops accepting (connections still queued are the new process's);
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
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::header::{CONNECTION, HeaderValue};
use hyper::service::Service;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::GracefulStoppableServer;
use crate::Listener;
use crate::{BoxError, BoxFuture, Shutdown, ShutdownTrigger};

/// Default time an idle HTTP/1.1 connection may still send one request once the drain began.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(1);

/// A response body flip can send: hyper's [`Body`] whose chunks and errors can cross threads.
pub trait HttpBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}
impl<B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static> HttpBody for B {}

/// A service flip can serve: any hyper (or tower, through `hyper_util::service::TowerToHyperService`)
/// service of [`Request<Incoming>`] whose futures and errors can cross threads; a
/// `hyper::service::service_fn` closure, a tonic `Routes`, an axum `Router` converted with
/// `TowerToHyperService`.
pub trait HttpService<B: HttpBody>:
    Service<
        Request<Incoming>,
        Response = Response<B>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> HttpService<B> for S
where
    B: HttpBody,
    S: Service<
            Request<Incoming>,
            Response = Response<B>,
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static,
{
}

/// A byte stream a connection is served on.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A listener the server accepts from: tokio's TCP and unix listeners.
pub trait Accept: Send + 'static {
    /// The accepted stream.
    type Stream: Io;
    /// Accepts one connection.
    fn accept(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Stream> {
        let (s, _) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Stream> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

/// Serves HTTP/1.1 and HTTP/2 (and TLS with the `tls` feature) and drains losslessly.
#[derive(Clone)]
pub struct HttpServer {
    builder: Arc<auto::Builder<TokioExecutor>>,
    linger: Duration,
    /// Connections open now, over every serve of this server and its clones.
    open: Arc<AtomicUsize>,
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

impl HttpServer {
    /// HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN over TLS), plain text.
    pub fn new() -> HttpServer {
        HttpServer {
            builder: Arc::new(auto::Builder::new(TokioExecutor::new())),
            linger: DEFAULT_LINGER,
            open: Arc::new(AtomicUsize::new(0)),
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
        self.open.load(Ordering::Relaxed)
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
        while !shutdown.is_draining() {
            tokio::select! {
                () = shutdown.draining() => {}
                accepted = listener.accept() => match accepted {
                    Ok(stream) => {
                        let (handle, drain) = drain_pair();
                        let id = next_id;
                        next_id += 1;
                        drains.insert(id, handle);
                        let open = OpenConnection::new(&self.open);
                        let conn = self.clone().connection(stream, service.clone(), drain);
                        connections.spawn(async move {
                            conn.await;
                            drop(open);
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
        // listener gone (a client, or the new process) can count on responses saying
        // `Connection: close` from then on.
        for (_, handle) in drains.drain() {
            handle.start();
        }
        drop(listener);
        tracing::debug!(connections = connections.len(), "draining HTTP connections");
        while connections.join_next().await.is_some() {}
        Ok(())
    }

    async fn connection<I, S, B>(self, stream: I, service: S, drain: Drain)
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
        };
        // Boxed, like the handshake above: inline, the two made every connection's task
        // several times larger than plain hyper's (BENCHMARKS.md has the sizes).
        let mut conn = Box::pin(self.builder.serve_connection(TokioIo::new(stream), service));
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

/// Counts a connection as open until dropped.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: &Arc<AtomicUsize>) -> OpenConnection {
        open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The server's side of one connection's drain signal.
struct DrainHandle {
    draining: Arc<AtomicBool>,
    start: oneshot::Sender<()>,
}

impl DrainHandle {
    /// Begins the drain: responses from now on say `Connection: close`, then the connection
    /// learns it should wind down.
    fn start(self) {
        self.draining.store(true, Ordering::SeqCst);
        let _ = self.start.send(());
    }
}

/// The connection's side: a flag its service reads and a signal its task waits on.
struct Drain {
    draining: Arc<AtomicBool>,
    started: oneshot::Receiver<()>,
}

fn drain_pair() -> (DrainHandle, Drain) {
    let draining = Arc::new(AtomicBool::new(false));
    let (start, started) = oneshot::channel();
    (
        DrainHandle {
            draining: draining.clone(),
            start,
        },
        Drain { draining, started },
    )
}

/// Wraps the application's service: notes the protocol, and asks HTTP/1.1 clients to close
/// once the drain began.
#[derive(Clone)]
struct DrainAware<S> {
    inner: S,
    /// True once the drain began.
    draining: Arc<AtomicBool>,
    http2: Arc<AtomicBool>,
}

impl<S, B> Service<Request<Incoming>> for DrainAware<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() < Version::HTTP_2;
        if !http1 {
            self.http2.store(true, Ordering::SeqCst);
        }
        let draining = self.draining.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut response = fut.await?;
            if http1 && draining.load(Ordering::SeqCst) {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        })
    }
}

/// Secure and insecure HTTP servers of one service, as one [`GracefulStoppableServer`]: Gitaly's
/// server factory, for HTTP/1.1 and HTTP/2 (gRPC included, see [`crate::grpc`]).
///
/// Clones share their state: a stop through one stops the serves of all.
///
/// ```no_run
/// # async fn demo(ctx: flip::StartContext) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use flip::GracefulStoppableServer;
/// # let service = hyper::service::service_fn(|_req| async {
/// #     Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from("hi"))))
/// # });
/// let servers = flip::http::ServerFactory::new(service)
///     .tls_from_pem_files("cert.pem", "key.pem")?
///     // Accept once this process is ready; drain when the Bootstrap's graceful stop begins.
///     .follow(ctx.shutdown());
/// let (plain, tls) = (ctx.listen("tcp", "127.0.0.1:8080")?, ctx.listen("tcp", "127.0.0.1:8443")?);
/// let other = servers.clone();
/// ctx.serve(async move { servers.serve(plain, false).await });
/// ctx.serve(async move { other.serve(tls, true).await });
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerFactory<S> {
    service: S,
    insecure: HttpServer,
    secure: Option<HttpServer>,
    follow: Option<Shutdown>,
    state: Arc<StopState>,
}

/// What the clones of a factory share.
struct StopState {
    trigger: ShutdownTrigger,
    token: Shutdown,
    /// True once [`GracefulStoppableServer::stop`] was called.
    hard: watch::Sender<bool>,
    /// Serves that have not returned yet.
    active: watch::Sender<usize>,
}

/// Counts a serve as active until dropped.
struct Active<'a>(&'a watch::Sender<usize>);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl<S> std::fmt::Debug for ServerFactory<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerFactory")
            .field("secure", &self.secure.is_some())
            .field("follows_bootstrap", &self.follow.is_some())
            .field("active", &*self.state.active.borrow())
            .finish_non_exhaustive()
    }
}

impl<S> ServerFactory<S> {
    /// Plain-text serving of `service`; add TLS with
    /// [`tls_from_pem_files`](ServerFactory::tls_from_pem_files).
    pub fn new(service: S) -> ServerFactory<S> {
        let (trigger, token) = Shutdown::pair();
        ServerFactory {
            service,
            insecure: HttpServer::new(),
            secure: None,
            follow: None,
            state: Arc::new(StopState {
                trigger,
                token,
                hard: watch::Sender::new(false),
                active: watch::Sender::new(0),
            }),
        }
    }

    /// The secure server: TLS with this certificate chain and private key (PEM files), ALPN
    /// `h2` and `http/1.1`.
    #[cfg(feature = "tls")]
    pub fn tls_from_pem_files(
        mut self,
        cert: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
    ) -> Result<ServerFactory<S>, crate::tls::TlsError> {
        self.secure = Some(
            HttpServer::new()
                .linger(self.insecure.linger)
                .tls_from_pem_files(cert, key)?,
        );
        Ok(self)
    }

    /// How long an idle HTTP/1.1 connection may still send one request once the drain began
    /// (default [`DEFAULT_LINGER`]).
    pub fn linger(mut self, linger: Duration) -> ServerFactory<S> {
        self.insecure = self.insecure.linger(linger);
        self.secure = self.secure.map(|s| s.linger(linger));
        self
    }

    /// Connections open now over the secure and the insecure server (see
    /// [`HttpServer::open_connections`]).
    pub fn open_connections(&self) -> usize {
        self.insecure.open_connections()
            + self.secure.as_ref().map_or(0, HttpServer::open_connections)
    }

    /// Follows a [`Bootstrap`](crate::Bootstrap)'s token: serves begin accepting once the
    /// process is ready, and the graceful stop begins with the Bootstrap's. Without it, serves
    /// accept at once and stop only through this factory: then make
    /// [`graceful_stop`](GracefulStoppableServer::graceful_stop) the Bootstrap's stop action,
    /// or its drain waits out the grace period.
    pub fn follow(mut self, shutdown: Shutdown) -> ServerFactory<S> {
        self.follow = Some(shutdown);
        self
    }

    async fn serve_listener<B>(&self, listener: Listener, secure: bool) -> Result<(), BoxError>
    where
        S: HttpService<B>,
        B: HttpBody,
    {
        let server = match (secure, &self.secure) {
            (false, _) => self.insecure.clone(),
            (true, Some(tls)) => tls.clone(),
            (true, None) => {
                return Err("a secure serve needs TLS: call tls_from_pem_files first".into());
            }
        };
        self.state.active.send_modify(|n| *n += 1);
        let _active = Active(&self.state.active);
        let mut hard = self.state.hard.subscribe();
        let mut follow = self.follow.clone();
        let token = self.state.token.clone();
        if let Some(f) = follow.as_mut() {
            let mut stopped = token.clone();
            tokio::select! {
                () = f.serving() => {}
                () = stopped.draining() => return Ok(()),
                _ = hard.wait_for(|h| *h) => return Ok(()),
            }
        }
        let service = self.service.clone();
        let run = async move {
            match listener {
                Listener::Tcp(l) => {
                    let l = tokio::net::TcpListener::from_std(l)?;
                    server.serve(l, service, token).await
                }
                Listener::Unix(l) => {
                    let l = tokio::net::UnixListener::from_std(l)?;
                    server.serve(l, service, token).await
                }
            }
        };
        tokio::pin!(run);
        loop {
            tokio::select! {
                result = &mut run => return result.map_err(Into::into),
                // Dropping the serve closes the listener and every connection.
                _ = hard.wait_for(|h| *h) => return Ok(()),
                () = async {
                    match follow.as_mut() {
                        Some(f) => f.draining().await,
                        None => std::future::pending().await,
                    }
                } => {
                    follow = None;
                    self.state.trigger.trigger();
                }
            }
        }
    }
}

impl<S, B> GracefulStoppableServer for ServerFactory<S>
where
    // The `Response` equality names the body type for the impl.
    S: HttpService<B> + Service<Request<Incoming>, Response = Response<B>>,
    B: HttpBody,
{
    fn serve(&self, listener: Listener, secure: bool) -> BoxFuture<Result<(), BoxError>> {
        let this = self.clone();
        Box::pin(async move { this.serve_listener(listener, secure).await })
    }

    fn graceful_stop(&self) -> BoxFuture<()> {
        self.state.trigger.trigger();
        let mut active = self.state.active.subscribe();
        Box::pin(async move {
            let _ = active.wait_for(|n| *n == 0).await;
        })
    }

    fn stop(&self) {
        self.state.trigger.trigger();
        self.state.hard.send_replace(true);
    }
}
