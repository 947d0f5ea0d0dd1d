//! `gpush-edge`: parse flags, set up logging, bind, run.

use clap::Parser;
use gpush_common::net::bind;
use gpush_edge::cli::Cli;
use tokio_util::sync::CancellationToken;

/// mimalloc: every connection makes many small allocations (its task, its
/// handle in the hub, its queue and subscription entries), often freed on
/// another worker thread than the one that made them; mimalloc serves them
/// from per-thread pages with cheap cross-thread frees. The connection task
/// is kept within mimalloc's 1 KiB size class (see the size guard in
/// `conn`).
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
    gpush_common::telemetry::init(config.log.log_format);
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
