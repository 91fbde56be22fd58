//! A gRPC server (tonic) that upgrades itself on SIGHUP: the standard health service
//! (`grpc.health.v1.Health`, serving), a unary and a server-streaming method, on an insecure
//! listener and, as Gitaly runs them, a TLS one.
//!
//! ```text
//! cargo run --release --example grpc       # GRPC_ADDR (127.0.0.1:9090), FLIP_PID_FILE (/tmp/flip-grpc.pid)
//! GRPC_TLS_ADDR=127.0.0.1:9443 GRPC_TLS_CERT=cert.pem GRPC_TLS_KEY=key.pem cargo run --release --example grpc
//! kill -HUP "$(cat /tmp/flip-grpc.pid)"    # upgrade: streams in flight finish on the predecessor
//! ```

use flip_suite::demo;

use flip::GracefulStoppableServer;
use tonic::service::Routes;

/// Health (serving) and the demo service.
async fn routes() -> Routes {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<demo::DemoServer>().await;
    Routes::new(health).add_service(demo::DemoServer)
}

/// One server factory, as Gitaly has: the insecure listener on `GRPC_ADDR`, and a TLS one on
/// `GRPC_TLS_ADDR` when set, certificate and key from `GRPC_TLS_CERT` and `GRPC_TLS_KEY`.
#[flip::starter]
async fn grpc(ctx: &flip::StartContext) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let addr = std::env::var("GRPC_ADDR").unwrap_or_else(|_| "127.0.0.1:9090".into());
    let tls_addr = std::env::var("GRPC_TLS_ADDR").ok();
    // Accept once ready; drain with the Bootstrap.
    let mut servers = flip::grpc::server_factory(routes().await).follow(ctx.shutdown());
    if tls_addr.is_some() {
        let (Ok(cert), Ok(key)) = (
            std::env::var("GRPC_TLS_CERT"),
            std::env::var("GRPC_TLS_KEY"),
        ) else {
            return Err("GRPC_TLS_ADDR needs GRPC_TLS_CERT and GRPC_TLS_KEY (PEM files)".into());
        };
        servers = servers.tls_from_pem_files(cert, key)?;
    }

    let listener = ctx.listen("tcp", &addr)?;
    tracing::info!(%addr, "gRPC listening");
    let insecure = servers.clone();
    ctx.serve(async move { insecure.serve(listener, false).await });
    if let Some(addr) = tls_addr {
        let listener = ctx.listen("tcp", &addr)?;
        tracing::info!(%addr, "gRPC listening (TLS)");
        ctx.serve(async move { servers.serve(listener, true).await });
    }
    Ok(())
}

#[flip::main(pidfile = "/tmp/flip-grpc.pid")]
fn main() {}
