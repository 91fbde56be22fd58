//! An axum application served through flip: the `http` example's `GET /` and
//! `GET /sleep/{ms}`, a WebSocket echo at `/ws`, server-sent events at `/events`, and a
//! readiness probe at `/ready` that turns unready the moment a drain begins.
//!
//! Long-lived connections stay with the predecessor across an upgrade until they end (or the
//! grace period does); when the drain begins, the WebSocket and the event stream tell their
//! clients to reconnect, which lands them on the successor.
//!
//! `HTTP_ADDR` (default `127.0.0.1:8080`) and `FLIP_PID_FILE` (default `/tmp/flip-axum.pid`).

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Path};
use axum::http::StatusCode;
use axum::response::Response;
use axum::response::sse::{Event, Sse};
use axum::routing::get;
use futures_util::Stream;

/// The application, as it would be without flip.
fn app() -> Router {
    Router::new()
        .route("/", get(hello))
        .route("/sleep/{ms}", get(sleep))
        .route("/ready", get(ready))
        // GET for WebSockets over HTTP/1.1, CONNECT for those over HTTP/2 (RFC 8441).
        .route("/ws", get(websocket).connect(websocket))
        .route("/events", get(events))
}

/// The flip part: the listener from the registry, and the app served with the lossless drain.
#[flip::starter]
async fn http(ctx: &flip::StartContext) -> Result<(), flip::Error> {
    let addr = std::env::var("HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = ctx.tcp_listener(&addr)?;
    tracing::info!(%addr, "listening");
    let shutdown = ctx.shutdown();
    ctx.serve(async move {
        flip::http::HttpServer::new()
            .serve_tower(listener, app(), shutdown)
            .await
    });
    Ok(())
}

#[flip::main(pidfile = "/tmp/flip-axum.pid")]
fn main() {}

async fn hello() -> String {
    format!("hello from {}", std::process::id())
}

async fn sleep(Path(ms): Path<u64>) -> String {
    tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
    hello().await
}

/// 200 while this process serves, 503 once its drain began: a probe (Kubernetes readiness)
/// stops sending it traffic at once.
async fn ready(Extension(shutdown): Extension<flip::Shutdown>) -> (StatusCode, &'static str) {
    if shutdown.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn websocket(
    upgrade: WebSocketUpgrade,
    Extension(shutdown): Extension<flip::Shutdown>,
) -> Response {
    upgrade.on_upgrade(move |socket| echo(socket, shutdown))
}

/// Greets with this process's pid, then echoes every text message prefixed with it. When the
/// drain begins it closes with 1012 (service restart): the client reconnects, to the new
/// process.
async fn echo(mut socket: WebSocket, mut shutdown: flip::Shutdown) {
    let pid = std::process::id();
    if socket
        .send(Message::Text(format!("hello from {pid}").into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            () = shutdown.draining() => {
                let close = CloseFrame { code: 1012, reason: "upgraded: reconnect".into() };
                let _ = socket.send(Message::Close(Some(close))).await;
                // The client answers the close, and the connection ends; one that does not
                // answer within 5 s is let go.
                let answered = async {
                    while let Some(Ok(m)) = socket.recv().await {
                        if matches!(m, Message::Close(_)) {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), answered).await;
                return;
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    let reply = Message::Text(format!("{pid}: {}", text.as_str()).into());
                    if socket.send(reply).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// An event every 100 ms (`tick <pid> <n>`); when the drain begins, a `reconnect` event, and
/// the stream ends.
async fn events(
    Extension(shutdown): Extension<flip::Shutdown>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let pid = std::process::id();
    let stream = futures_util::stream::unfold(
        (shutdown, 0u64, false),
        move |(mut shutdown, n, done)| async move {
            if done {
                return None;
            }
            tokio::select! {
                () = shutdown.draining() => {
                    Some((Ok(Event::default().event("reconnect").data(format!("{pid} drains"))), (shutdown, n, true)))
                }
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    Some((Ok(Event::default().data(format!("tick {pid} {n}"))), (shutdown, n + 1, false)))
                }
            }
        },
    );
    Sse::new(stream)
}
