//! Standalone mode: the edge embedding the push API. One process, no NATS
//! and no etcd: pushes go from the push API straight to this edge's hub
//! through a bounded queue, and `/v1/edges`, `/v1/connect` and `/v1/stats`
//! describe this edge alone.

use crate::config::EdgeConfig;
use crate::hub::Hub;
use crate::registration::Registration;
use gpush_common::Bus;
use gpush_common::bus::LocalQueue;
use gpush_ingress::{EdgeDirectory, EdgeList, Edges, Pick};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// This edge as the push API lists it: its record, read fresh on each call.
struct SingleEdge {
    registration: Registration,
    hub: Arc<Hub>,
}

impl EdgeDirectory for SingleEdge {
    fn list(&self) -> EdgeList {
        EdgeList {
            edges: vec![self.registration.record(&self.hub)],
            stale: false,
        }
    }

    fn pick(&self) -> Pick {
        Pick {
            edge: Some(self.registration.record(&self.hub)),
            stale: false,
        }
    }
}

/// Starts the push API on `listeners`, publishing into `hub`, until
/// `shutdown`. It serves TLS with the edge's certificate, so a demo page
/// loaded over HTTPS may call it; no client certificates (that is
/// ingress's `grpc_client_ca`).
pub(crate) fn serve_push_api(
    listeners: gpush_ingress::Listeners,
    config: &EdgeConfig,
    ws_addr: SocketAddr,
    registration: Registration,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let push_config = config.standalone_push_api(ws_addr, &registration.url);
    let bus = Bus::Queued(LocalQueue::start(
        hub.clone(),
        config.publish_queue_bytes,
        config.publish_timeout,
    ));
    let edges = Edges::from_directory(SingleEdge { registration, hub });
    let tls = gpush_ingress::PushTls::load(
        config.tls.tls_cert.as_deref(),
        config.tls.tls_key.as_deref(),
        None,
    )?;
    Ok(tokio::spawn(
        gpush_ingress::serve(listeners, tls, bus, push_config, edges, shutdown).in_current_span(),
    ))
}
