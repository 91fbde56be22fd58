//! One connection's drain: the flag its responses read (`Connection: close` from then on), the
//! signal its task waits on, and the count of open connections.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue};
use hyper::service::Service;
use hyper::{Request, Response, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, oneshot};

use crate::Shutdown;

/// How many connections are open, and a wake-up when none is: an atomic, since every
/// connection of every worker counts itself in and out.
#[derive(Debug, Default)]
pub(super) struct OpenCount {
    n: AtomicUsize,
    none: Notify,
}

impl OpenCount {
    pub(super) fn get(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }

    /// Resolves once no connection is open.
    pub(super) async fn none_open(&self) {
        loop {
            let notified = self.none.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the count is read: a close in between still wakes us.
            notified.as_mut().enable();
            if self.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts a connection as open until dropped.
#[derive(Debug)]
pub(super) struct OpenConnection(Arc<OpenCount>);

impl OpenConnection {
    pub(super) fn new(open: &Arc<OpenCount>) -> OpenConnection {
        open.n.fetch_add(1, Ordering::SeqCst);
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.none.notify_waiters();
        }
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
    type Future = CloseWhenDraining<S::Future>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.shutdown.clone());
        let http1 = req.version() < Version::HTTP_2;
        if !http1 {
            self.http2.store(true, Ordering::SeqCst);
        }
        CloseWhenDraining {
            response: self.inner.call(req),
            draining: http1.then(|| self.draining.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// The application's response, with `Connection: close` added when it is HTTP/1.1 and the
    /// drain began while it was made. Not boxed: a request costs what it costs plain hyper.
    pub(super) struct CloseWhenDraining<F> {
        #[pin]
        response: F,
        draining: Option<Arc<AtomicBool>>,
    }
}

impl<F, B, E> Future for CloseWhenDraining<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.response.poll(cx))?;
        if this
            .draining
            .as_ref()
            .is_some_and(|d| d.load(Ordering::SeqCst))
        {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response))
    }
}
