//! `gpush-edge`: parse flags, set up logging, bind, run.

use clap::Parser;
use gpush_edge::cli::Cli;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the {what} address {addr}: {e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match Cli::parse().load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gpush-edge: {e}");
            std::process::exit(2);
        }
    };
    gpush_common::telemetry::init(config.log_format);
    let ws = bind(config.ws_addr, "WebSocket").await?;
    let push = if config.standalone {
        let http = bind(config.http_addr(), "push HTTP").await?;
        let grpc = bind(config.grpc_addr(), "push gRPC").await?;
        tracing::info!(http = %http.local_addr()?, grpc = %grpc.local_addr()?, "standalone push API");
        Some(gpush_ingress::Listeners { http, grpc })
    } else {
        None
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(gpush_common::shutdown::cancel_on_signal(shutdown.clone()));
    gpush_edge::run(gpush_edge::Listeners { ws, push }, config, shutdown).await
}
