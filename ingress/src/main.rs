//! `gpush-ingress`: load config, bind, run until SIGTERM.

use anyhow::Context;
use clap::Parser;
use gpush_common::{shutdown, telemetry};
use gpush_ingress::cli::Cli;
use gpush_ingress::{Listeners, run};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match Cli::parse().load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gpush-ingress: {e}");
            std::process::exit(2);
        }
    };
    telemetry::init(config.log_format);

    let listeners = Listeners {
        http: bind(config.http_addr(), "HTTP").await?,
        grpc: bind(config.grpc_addr(), "gRPC").await?,
    };
    let token = CancellationToken::new();
    tokio::spawn(shutdown::cancel_on_signal(token.clone()));
    run(listeners, config, token).await
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the {what} push API to {addr}"))
}
