//! Gitaly's `GracefulStoppableServer`: one object that serves any number of listeners, plain or
//! TLS, and stops either gracefully or at once.
//!
//! The core only defines the interface; the adapters implement it: `flip::http::ServerFactory`
//! (feature `hyper`) and `flip::grpc::server_factory` (feature `tonic`).
//!
//! ```no_run
//! # #[cfg(feature = "hyper")]
//! # fn demo(mut bootstrap: flip::Bootstrap) {
//! use std::sync::Arc;
//! use flip::GracefulStoppableServer;
//! # let service = hyper::service::service_fn(|_req| async {
//! #     Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from("hi"))))
//! # });
//! let servers = Arc::new(flip::http::ServerFactory::new(service));
//! let in_starter = servers.clone();
//! bootstrap.register_starter("http", move |ctx: flip::StartContext| {
//!     let servers = in_starter.clone();
//!     async move {
//!         let listener = ctx.listen("tcp", "127.0.0.1:8080")?;
//!         ctx.serve(async move { servers.serve(listener, false).await });
//!         Ok::<_, flip::Error>(())
//!     }
//! });
//! // As Gitaly does: the drain after an upgrade is the servers' graceful stop.
//! bootstrap.set_stop_action(move || servers.graceful_stop());
//! # }
//! ```

use crate::bootstrap::{BoxError, BoxFuture};
use crate::registry::Listener;

/// A server that serves listeners until it is stopped, gracefully or at once.
///
/// The contract every implementation keeps:
/// - [`serve`](GracefulStoppableServer::serve) accepts from the listener and returns once the
///   server stopped (or at once, if it already had);
/// - [`graceful_stop`](GracefulStoppableServer::graceful_stop) stops accepting on every
///   listener, lets every request and stream already received finish, and resolves when all of
///   them did and every `serve` returned;
/// - [`stop`](GracefulStoppableServer::stop) closes every listener and connection now.
pub trait GracefulStoppableServer: Send + Sync {
    /// Serves `listener`: with TLS when `secure`, in plain text otherwise. A `secure` serve on
    /// a server that has no TLS configuration fails.
    fn serve(&self, listener: Listener, secure: bool) -> BoxFuture<Result<(), BoxError>>;

    /// Stops accepting and drains; resolves when every connection finished.
    fn graceful_stop(&self) -> BoxFuture<()>;

    /// Stops at once: every connection is closed, in-flight requests included.
    fn stop(&self);
}
