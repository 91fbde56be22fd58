//! What the HTTP server takes: services, bodies, byte streams and listeners.

use std::future::Future;
use std::io;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::BoxError;

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
