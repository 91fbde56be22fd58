//! The `http` example without flip: the same endpoints, the same optional HTTPS listener
//! (`HTTPS_ADDR`, `HTTPS_CERT`, `HTTPS_KEY`), the same logging (`RUST_LOG`) and `BALLAST_MB`,
//! on plain hyper. The benchmark's baseline for throughput and memory: the difference is flip.
//! `HTTP_ADDR` (default 127.0.0.1:8080). No upgrades, no drain.

mod common;

use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn serve<S>(builder: auto::Builder<TokioExecutor>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _ = builder
        .serve_connection(TokioIo::new(stream), service_fn(common::respond))
        .await;
}

fn tls_acceptor(cert: &str, key: &str) -> Result<tokio_rustls::TlsAcceptor, BoxError> {
    use rustls_pki_types::pem::PemObject;
    let certs =
        rustls_pki_types::CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    common::fill_ballast(common::ballast_mb()?);
    let builder = auto::Builder::new(TokioExecutor::new());

    if let Ok(addr) = std::env::var("HTTPS_ADDR") {
        let (Ok(cert), Ok(key)) = (std::env::var("HTTPS_CERT"), std::env::var("HTTPS_KEY")) else {
            return Err("HTTPS_ADDR needs HTTPS_CERT and HTTPS_KEY (PEM files)".into());
        };
        let tls = tls_acceptor(&cert, &key)?;
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        tracing::info!(%addr, "listening (TLS)");
        let builder = builder.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (tls, builder) = (tls.clone(), builder.clone());
                tokio::spawn(async move {
                    if let Ok(stream) = tls.accept(stream).await {
                        serve(builder, stream).await;
                    }
                });
            }
        });
    }

    let addr = std::env::var("HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(%addr, "listening");
    // On a worker, as flip's servers accept: from `main`'s thread (outside the workers) every
    // connection's spawn would wake a worker, which costs a baseline more than flip is to be
    // measured against.
    let accepting = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(builder.clone(), stream));
        }
    });
    accepting.await?
}
