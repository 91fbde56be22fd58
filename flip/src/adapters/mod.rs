//! Server adapters: hyper (`http`), tonic (`grpc`) and TLS (`tls`) on top of the core. They use
//! only flip's public API ([`GracefulStoppableServer`](crate::GracefulStoppableServer),
//! [`Shutdown`](crate::Shutdown), [`Listener`](crate::Listener)); the core never imports them.

#[cfg(feature = "tonic")]
pub mod grpc;
#[cfg(feature = "hyper")]
pub mod http;
#[cfg(feature = "tls")]
pub mod tls;
