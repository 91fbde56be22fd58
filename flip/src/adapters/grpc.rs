//! gRPC with tonic (feature `tonic`): tonic's routes served by [`crate::http`], so that gRPC
//! gets the same lossless drain: GOAWAY on every connection, then every call and stream
//! already received runs to its end.
//!
//! Secure and insecure listeners as Gitaly runs them: one factory, TLS on the listeners served
//! with `secure = true`.
//!
//! ```no_run
//! # async fn demo(ctx: flip::StartContext, routes: tonic::service::Routes) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use flip::GracefulStoppableServer;
//! let servers = flip::grpc::server_factory(routes)
//!     .tls_from_pem_files("cert.pem", "key.pem")?
//!     .follow(ctx.shutdown());
//! let listener = ctx.listen("tcp", "127.0.0.1:9090")?;
//! ctx.serve(async move { servers.serve(listener, false).await });
//! # Ok(()) }
//! ```

use hyper_util::service::TowerToHyperService;
use tonic::service::Routes;

use crate::http::ServerFactory;

/// The server factory for tonic routes.
pub type GrpcServerFactory = ServerFactory<TowerToHyperService<Routes>>;

/// Secure and insecure gRPC servers of `routes` (add TLS with
/// [`ServerFactory::tls_from_pem_files`]).
pub fn server_factory(routes: Routes) -> GrpcServerFactory {
    ServerFactory::new(TowerToHyperService::new(routes))
}
