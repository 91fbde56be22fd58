//! flip's side of the comparison built the way the peers are: the same endpoints, the same
//! dependencies and build profile, HTTP only (flip's `http` example also links TLS and more
//! starters). SIGHUP upgrades, SIGTERM stops; flip logs `ready pid=N` itself.

use flip_bench_peers::respond;

#[flip::starter]
async fn http(ctx: &flip::StartContext) -> Result<(), flip::Error> {
    let addr = flip_bench_peers::addr().to_string();
    let listener = ctx.tcp_listener(&addr)?;
    let shutdown = ctx.shutdown();
    ctx.serve(async move {
        flip::http::HttpServer::new()
            .serve(listener, hyper::service::service_fn(respond), shutdown)
            .await
    });
    Ok(())
}

#[flip::main(pidfile = "/tmp/flip-http.pid")]
fn main() {}
