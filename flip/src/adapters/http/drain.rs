//! One connection's drain: the flag its responses read (`Connection: close` from then on), the
//! signal its task waits on, and the count of open connections.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue};
use hyper::service::Service;
use hyper::{Request, Response, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, watch};

use crate::Shutdown;

/// Counts a connection as open until dropped.
#[derive(Debug)]
pub(super) struct OpenConnection(Arc<watch::Sender<usize>>);

impl OpenConnection {
    pub(super) fn new(open: &Arc<watch::Sender<usize>>) -> OpenConnection {
        open.send_modify(|n| *n += 1);
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// A connection's byte stream that counts as open for as long as it exists: after an HTTP/1.1
/// upgrade (WebSocket) the stream lives on in the application's task, and the drain waits for
/// it there too.
#[derive(Debug)]
pub(super) struct Counted<I> {
    pub(super) io: I,
    pub(super) _open: OpenConnection,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The server's side of one connection's drain signal.
pub(super) struct DrainHandle {
    draining: Arc<AtomicBool>,
    start: oneshot::Sender<()>,
}

impl DrainHandle {
    /// Begins the drain: responses from now on say `Connection: close`, then the connection
    /// learns it should wind down.
    pub(super) fn start(self) {
        self.draining.store(true, Ordering::SeqCst);
        let _ = self.start.send(());
    }
}

/// The connection's side: a flag its service reads and a signal its task waits on.
pub(super) struct Drain {
    pub(super) draining: Arc<AtomicBool>,
    pub(super) started: oneshot::Receiver<()>,
}

pub(super) fn drain_pair() -> (DrainHandle, Drain) {
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
pub(super) struct DrainAware<S> {
    pub(super) inner: S,
    /// True once the drain began.
    pub(super) draining: Arc<AtomicBool>,
    pub(super) http2: Arc<AtomicBool>,
    /// The process's drain token, given to every request (see `HttpServer::serve`).
    pub(super) shutdown: Shutdown,
}

impl<S, B> Service<Request<Incoming>> for DrainAware<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.shutdown.clone());
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
