//! The push-API baseline: the least an HTTP server can do per push, to
//! measure the ceiling of single pushes on this machine with the same load
//! generator ([`load`](crate::bench::load)) that drives gpush.
//!
//! hyper, nothing around it: on its HTTP/1.1 port every request is read
//! whole and answered 200 with the body gpush gives `pushData`; on its h2
//! port every request is read whole and answered as a gRPC unary call that
//! succeeded (a `PushReply` of one accepted message and `grpc-status: 0`).
//! No routing, no parsing, no publishing. It runs in its own process, like
//! the raw WebSocket baseline ([`baseline`](crate::bench::baseline)).

use crate::bench::cli::ApiBaselineArgs;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use tokio::net::TcpListener;

/// gpush's answer to a single `pushData`.
const HTTP_REPLY: &[u8] = br#"{"code":"ok","message":"ok","accepted":1}"#;
/// A gRPC message frame (uncompressed, 2 bytes) holding `PushReply {
/// accepted: 1 }`.
const GRPC_REPLY: &[u8] = &[0, 0, 0, 0, 2, 0x08, 0x01];

/// Runs the baseline until killed.
pub fn run(args: ApiBaselineArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let http = TcpListener::bind(args.http_addr).await?;
        let grpc = TcpListener::bind(args.grpc_addr).await?;
        tokio::spawn(serve(grpc, true));
        serve(http, false).await;
        Ok(())
    })
}

/// Accepts connections on `listener` forever, serving HTTP/1.1 or h2.
pub(crate) async fn serve(listener: TcpListener, h2: bool) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("api baseline: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        tokio::spawn(async move {
            let result = if h2 {
                http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service_fn(grpc_reply))
                    .await
            } else {
                http1::Builder::new()
                    .serve_connection(io, service_fn(http_reply))
                    .await
            };
            if let Err(e) = result {
                eprintln!("api baseline: connection: {e}");
            }
        });
    }
}

/// Reads the request body whole (a push API must), dropping it.
async fn read_body(request: Request<Incoming>) -> Result<(), hyper::Error> {
    request.into_body().collect().await.map(drop)
}

async fn http_reply(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    read_body(request).await?;
    let mut response = Response::new(Full::new(Bytes::from_static(HTTP_REPLY)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

type GrpcBody = http_body_util::combinators::WithTrailers<
    Full<Bytes>,
    std::future::Ready<Option<Result<HeaderMap, Infallible>>>,
>;

async fn grpc_reply(request: Request<Incoming>) -> Result<Response<GrpcBody>, hyper::Error> {
    read_body(request).await?;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = Full::new(Bytes::from_static(GRPC_REPLY))
        .with_trailers(std::future::ready(Some(Ok(trailers))));
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    Ok(response)
}
