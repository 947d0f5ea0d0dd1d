//! Standalone mode: the edge embedding the push API. One process, no NATS
//! and no etcd: pushes go from the push API straight to this edge's hub
//! through a bounded queue, and `/v1/edges`, `/v1/connect` and `/v1/stats`
//! describe this edge alone.

use crate::hub::Hub;
use crate::registration::Registration;
use crate::state::EdgeState;
use gpush_common::bus::{HistoryQuery, LocalQueue};
use gpush_common::control::{Answer, Command};
use gpush_common::history::Page;
use gpush_common::{Bus, LocalDelivery, Push};
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

/// The edge as the embedded push API's bus sees it: pushes and history
/// go to its hub, server API commands to [`crate::control`].
struct LocalEdge(Arc<EdgeState>);

impl LocalDelivery for LocalEdge {
    fn deliver(&self, push: &Push) {
        self.0.hub.deliver(push);
    }

    fn stamp(&self, pushes: &mut [Push]) {
        LocalDelivery::stamp(&*self.0.hub, pushes);
    }

    fn history(&self, query: &HistoryQuery) -> Option<Page> {
        LocalDelivery::history(&*self.0.hub, query)
    }

    fn control(&self, command: &Command) -> Option<(String, Answer)> {
        Some((
            self.0.node_id.clone(),
            crate::control::carry_out(&self.0, command),
        ))
    }
}

/// Starts the push API on `listeners`, publishing into the edge's hub, until
/// `shutdown`. It serves TLS with the edge's certificate, so a demo page
/// loaded over HTTPS may call it; no client certificates (that is
/// ingress's `grpc_client_ca`).
pub(crate) fn serve_push_api(
    listeners: gpush_ingress::Listeners,
    shared: Arc<EdgeState>,
    ws_addr: SocketAddr,
    registration: Registration,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let config = &shared.config;
    let hub = shared.hub.clone();
    let push_config = config.standalone_push_api(ws_addr, &registration.url);
    let bus = Bus::Queued(LocalQueue::start(
        Arc::new(LocalEdge(shared.clone())),
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
