//! `gpush-ingress`: load config, bind, run until SIGTERM.

use clap::Parser;
use gpush_common::{shutdown, telemetry};
use gpush_ingress::cli::Cli;
use gpush_ingress::{Listeners, run};
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
            eprintln!("gpush-ingress: {e}");
            std::process::exit(2);
        }
    };
    telemetry::init(config.log.log_format);

    let listeners = Listeners::bind(config.http_addr(), config.grpc_addr()).await?;
    let token = CancellationToken::new();
    tokio::spawn(shutdown::cancel_on_signal(token.clone()));
    run(listeners, config, token).await
}
