//! One connection's drain: the flag its responses read (`Connection: close` from then on), the
//! signal its task waits on, and the count of open connections.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue};
use hyper::service::Service;
use hyper::{Request, Response, Version};
use tokio::sync::oneshot;

/// Counts a connection as open until dropped.
pub(super) struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    pub(super) fn new(open: &Arc<AtomicUsize>) -> OpenConnection {
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
