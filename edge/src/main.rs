//! `gpush-edge`: parse flags, set up logging, bind, run.

use clap::Parser;
use gpush_common::net::bind;
use gpush_edge::cli::Cli;
use tokio_util::sync::CancellationToken;

/// mimalloc: glibc malloc spent ~45% of ingress CPU under load (cross-thread
/// frees between request tasks and the NATS writer); see README "Performance".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        let push = gpush_ingress::Listeners::bind(config.http_addr(), config.grpc_addr()).await?;
        tracing::info!(
            http = %push.http.local_addr()?,
            grpc = %push.grpc.local_addr()?,
            "standalone push API"
        );
        Some(push)
    } else {
        None
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(gpush_common::shutdown::cancel_on_signal(shutdown.clone()));
    gpush_edge::run(gpush_edge::Listeners { ws, push }, config, shutdown).await
}
