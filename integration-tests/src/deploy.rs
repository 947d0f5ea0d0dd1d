//! Whole deployments: a [`Cluster`] (NATS + etcd + ingress + edges), a
//! [`Standalone`] edge, or an [`External`] deployment that is already
//! running somewhere (addresses from environment variables), behind the
//! [`Deployment`] trait so the same delivery scenarios run against each.

use crate::api::{PushApi, PushMsg, Via};
use crate::client::{RAW_PROTOCOL, WsClient};
use crate::procs::{Etcd, NatsServer};
use crate::servers::{EdgeHandle, IngressHandle};
use gpush_edge::EdgeConfig;
use gpush_ingress::IngressConfig;
use std::time::Duration;

/// The edge config every test deployment starts from: defaults, plus the
/// test HS256 secret (so [`crate::auth::hs256`] tokens log in) and a short
/// shutdown grace period.
pub fn edge_test_config() -> EdgeConfig {
    let mut config = EdgeConfig::default();
    config.auth.jwt_secret = Some(crate::auth::JWT_SECRET.to_owned());
    config.shutdown_grace = Duration::from_secs(2);
    config
}

/// Something with edges to connect to and a push API to push through.
pub trait Deployment: Sync {
    /// "cluster" or "standalone", for failure messages.
    fn name(&self) -> &'static str;

    /// Number of distinct edges.
    fn edge_count(&self) -> usize;

    /// WebSocket URL of edge `i`, wrapping around (`i % edge_count`), so a
    /// scenario can spread clients over "edges 0 and 1" and still run
    /// against a single standalone edge.
    fn ws_url(&self, i: usize) -> String;

    /// The push API.
    fn api(&self) -> &PushApi;

    /// A client connected to edge `i` (wrapping around), labelled with
    /// `label` for failure messages.
    fn connect(&self, i: usize, label: &str) -> impl Future<Output = WsClient> + Send {
        let url = self.ws_url(i);
        let label = format!("{} {label} (edge {})", self.name(), i % self.edge_count());
        async move { WsClient::connect(&url).await.with_label(label) }
    }

    /// Like [`Self::connect`], with the `gpush.raw` subprotocol.
    fn connect_raw(&self, i: usize, label: &str) -> impl Future<Output = WsClient> + Send {
        let url = self.ws_url(i);
        let label = format!(
            "{} {label} (raw, edge {})",
            self.name(),
            i % self.edge_count()
        );
        async move {
            WsClient::connect_with_protocol(&url, RAW_PROTOCOL)
                .await
                .with_label(label)
        }
    }

    /// Pushes `msgs` via `via`; panics on failure.
    fn send(&self, via: Via, msgs: &[PushMsg]) -> impl Future<Output = ()> + Send {
        self.api().send(via, msgs)
    }

    /// `POST /v1/pushData`; panics unless 200.
    fn push_http(&self, uid: &str, topic: &str, data: &[u8]) -> impl Future<Output = ()> + Send {
        self.api().push_http(uid, topic, data)
    }

    /// `POST /v1/pushBatch`; panics unless 200.
    fn push_batch_http(&self, msgs: &[PushMsg]) -> impl Future<Output = ()> + Send {
        self.api().push_batch_http(msgs)
    }

    /// gRPC `gpush.v1.Push/PushData`; panics unless OK.
    fn push_grpc(&self, uid: &str, topic: &str, data: &[u8]) -> impl Future<Output = ()> + Send {
        self.api().push_grpc(uid, topic, data)
    }

    /// gRPC `gpush.v1.Push/PushBatch`; panics unless OK.
    fn push_batch_grpc(&self, msgs: &[PushMsg]) -> impl Future<Output = ()> + Send {
        self.api().push_batch_grpc(msgs)
    }

    /// gRPC `order.Proxy/PushData`; panics unless OK.
    fn push_legacy_grpc(
        &self,
        uid: &str,
        topic: &str,
        data: &[u8],
    ) -> impl Future<Output = ()> + Send {
        self.api().push_legacy_grpc(uid, topic, data)
    }
}

/// NATS + etcd + one ingress + `n` edges (`edge-0`, `edge-1`, ...), all
/// registered in etcd.
pub struct Cluster {
    /// The edges, `edges[i]` has node id `edge-<i>`.
    pub edges: Vec<EdgeHandle>,
    /// The ingress.
    pub ingress: IngressHandle,
    /// The bus.
    pub nats: NatsServer,
    /// The registry.
    pub etcd: Etcd,
    api: PushApi,
}

impl Cluster {
    /// Starts a cluster of `n_edges` edges; `tweak` adjusts each edge's
    /// config after the harness filled in NATS, etcd and node id.
    pub async fn start(n_edges: usize, tweak: impl Fn(&mut EdgeConfig)) -> Self {
        Self::start_with(n_edges, |_| {}, tweak).await
    }

    /// Like [`Self::start`], with `tweak_ingress` adjusting the ingress
    /// config too.
    pub async fn start_with(
        n_edges: usize,
        tweak_ingress: impl FnOnce(&mut IngressConfig),
        tweak_edge: impl Fn(&mut EdgeConfig),
    ) -> Self {
        let (nats, etcd) = tokio::join!(NatsServer::start(), Etcd::start());
        let mut ingress_config = IngressConfig {
            nats: gpush_common::config::sections::NatsConfig::with_urls(vec![nats.url()]),
            etcd_endpoints: vec![etcd.url()],
            ..IngressConfig::default()
        };
        tweak_ingress(&mut ingress_config);
        let ingress = IngressHandle::start(ingress_config).await;
        let mut edges = Vec::with_capacity(n_edges);
        for i in 0..n_edges {
            let mut config = edge_test_config();
            config.nats.nats_urls = vec![nats.url()];
            config.etcd_endpoints = vec![etcd.url()];
            config.node_id = Some(format!("edge-{i}"));
            tweak_edge(&mut config);
            edges.push(EdgeHandle::start(config).await);
        }
        let api = PushApi::new(&ingress.http_base(), &ingress.grpc_url());
        api.wait_for_status("/readyz", 200, crate::TIMEOUT).await;
        Self {
            edges,
            ingress,
            nats,
            etcd,
            api,
        }
    }
}

impl Deployment for Cluster {
    fn name(&self) -> &'static str {
        "cluster"
    }

    fn edge_count(&self) -> usize {
        self.edges.len()
    }

    fn ws_url(&self, i: usize) -> String {
        self.edges[i % self.edges.len()].ws_url()
    }

    fn api(&self) -> &PushApi {
        &self.api
    }
}

/// One `gpush-edge --standalone`: WebSocket and push API in one process,
/// in-process bus, no NATS or etcd.
pub struct Standalone {
    /// The edge.
    pub edge: EdgeHandle,
    api: PushApi,
}

impl Standalone {
    /// Starts a standalone edge; `tweak` adjusts its config.
    pub async fn start(tweak: impl FnOnce(&mut EdgeConfig)) -> Self {
        let mut config = edge_test_config();
        config.standalone = true;
        config.nats.nats_urls = Vec::new();
        tweak(&mut config);
        Self::from_edge(EdgeHandle::start(config).await)
    }

    /// The deployment of a standalone edge started already (a restart).
    pub fn from_edge(edge: EdgeHandle) -> Self {
        let api = PushApi::new(&edge.http_base(), &edge.grpc_url());
        Self { edge, api }
    }
}

impl Deployment for Standalone {
    fn name(&self) -> &'static str {
        "standalone"
    }

    fn edge_count(&self) -> usize {
        1
    }

    fn ws_url(&self, _i: usize) -> String {
        self.edge.ws_url()
    }

    fn api(&self) -> &PushApi {
        &self.api
    }
}

/// Environment variable: comma-separated WebSocket URLs of the edges of a
/// running deployment. When set, [`External::from_env`] targets it.
pub const ENV_WS_URLS: &str = "GPUSH_IT_WS_URLS";
/// Environment variable: base URL of the running deployment's HTTP push
/// API, e.g. `http://127.0.0.1:10068`.
pub const ENV_PUSH_HTTP: &str = "GPUSH_IT_PUSH_HTTP";
/// Environment variable: URL of the running deployment's gRPC push API,
/// e.g. `http://127.0.0.1:10067`.
pub const ENV_PUSH_GRPC: &str = "GPUSH_IT_PUSH_GRPC";

/// Environment variable: the push API key of the running deployment,
/// sent with every push; unset for a push API without one.
pub const ENV_API_KEY: &str = "GPUSH_IT_API_KEY";

/// A deployment someone else started (`deploy/compose-test.sh` brings up
/// the compose stack and points the tests at it). Its edges must accept
/// HS256 tokens signed with [`crate::auth::JWT_SECRET`] and run the
/// default limits.
pub struct External {
    ws_urls: Vec<String>,
    api: PushApi,
}

impl External {
    /// The deployment the environment names ([`ENV_WS_URLS`],
    /// [`ENV_PUSH_HTTP`], [`ENV_PUSH_GRPC`], and [`ENV_API_KEY`] when its
    /// push API needs a key), or None when
    /// [`ENV_WS_URLS`] is unset. Panics when it is set but the others are
    /// missing: a half-configured target is a mistake, not a reason to test
    /// something else.
    pub fn from_env() -> Option<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Like [`Self::from_env`], reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let ws = var(ENV_WS_URLS)?;
        let required = |name: &str| {
            var(name).unwrap_or_else(|| panic!("{ENV_WS_URLS} is set, so {name} must be too"))
        };
        let (http, grpc) = (required(ENV_PUSH_HTTP), required(ENV_PUSH_GRPC));
        let ws_urls: Vec<String> = ws
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        assert!(!ws_urls.is_empty(), "{ENV_WS_URLS} names no edge: {ws:?}");
        Some(Self {
            ws_urls,
            api: PushApi::new(&http, &grpc).with_api_key(var(ENV_API_KEY)),
        })
    }
}

impl Deployment for External {
    fn name(&self) -> &'static str {
        "external"
    }

    fn edge_count(&self) -> usize {
        self.ws_urls.len()
    }

    fn ws_url(&self, i: usize) -> String {
        self.ws_urls[i % self.ws_urls.len()].clone()
    }

    fn api(&self) -> &PushApi {
        &self.api
    }
}
