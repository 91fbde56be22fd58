//! A small gRPC service written without code generation: `flip.example.Demo` with a unary
//! `Hello` and a server-streaming `Count`, and a client for both.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::{BoxFuture, BoxStream, Service, http};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// `Hello` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `Hello` reply: a greeting from the serving process.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
}

/// `Count` request: `count` messages, `interval_ms` apart.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CountRequest {
    #[prost(uint32, tag = "1")]
    pub count: u32,
    #[prost(uint32, tag = "2")]
    pub interval_ms: u32,
}

/// One message of `Count`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CountReply {
    #[prost(uint32, tag = "1")]
    pub index: u32,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
}

pub const HELLO: &str = "/flip.example.Demo/Hello";
pub const COUNT: &str = "/flip.example.Demo/Count";

/// The server side, for `tonic::service::Routes`.
#[derive(Debug, Clone, Default)]
pub struct DemoServer;

impl tonic::server::NamedService for DemoServer {
    const NAME: &'static str = "flip.example.Demo";
}

struct Hello;

impl Service<Request<HelloRequest>> for Hello {
    type Response = Response<HelloReply>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Status>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<HelloRequest>) -> Self::Future {
        let name = req.into_inner().name;
        Box::pin(async move {
            Ok(Response::new(HelloReply {
                message: format!("hello {name}"),
                pid: std::process::id(),
            }))
        })
    }
}

struct Count;

impl Service<Request<CountRequest>> for Count {
    type Response = Response<BoxStream<CountReply>>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Status>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<CountRequest>) -> Self::Future {
        let CountRequest { count, interval_ms } = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for index in 0..count.min(10_000) {
                if index > 0 {
                    tokio::time::sleep(Duration::from_millis(interval_ms.min(60_000).into())).await;
                }
                let reply = CountReply {
                    index,
                    pid: std::process::id(),
                };
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        });
        let stream: BoxStream<CountReply> =
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Box::pin(async move { Ok(Response::new(stream)) })
    }
}

impl Service<http::Request<tonic::body::Body>> for DemoServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            Ok(match req.uri().path() {
                HELLO => {
                    tonic::server::Grpc::new(ProstCodec::default())
                        .unary(Hello, req)
                        .await
                }
                COUNT => {
                    tonic::server::Grpc::new(ProstCodec::default())
                        .server_streaming(Count, req)
                        .await
                }
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// Calls `Hello`.
pub async fn hello(channel: tonic::transport::Channel, name: &str) -> Result<HelloReply, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(HELLO);
    let request = Request::new(HelloRequest {
        name: name.to_owned(),
    });
    Ok(grpc
        .unary(request, path, ProstCodec::default())
        .await?
        .into_inner())
}

/// Calls `Count` and collects every message.
pub async fn count(
    channel: tonic::transport::Channel,
    count: u32,
    interval_ms: u32,
) -> Result<Vec<CountReply>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(COUNT);
    let request = Request::new(CountRequest { count, interval_ms });
    let mut stream = grpc
        .server_streaming(request, path, ProstCodec::default())
        .await?
        .into_inner();
    let mut replies = Vec::new();
    while let Some(reply) = stream.message().await? {
        replies.push(reply);
    }
    Ok(replies)
}
