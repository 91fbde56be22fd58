//! Gitaly's server factory: secure and insecure servers of one service.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::sync::watch;

use super::{HttpBody, HttpServer, HttpService};
use crate::{BoxError, BoxFuture, GracefulStoppableServer, Listener, Shutdown, ShutdownTrigger};

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
    /// (default [`DEFAULT_LINGER`](super::DEFAULT_LINGER)).
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
