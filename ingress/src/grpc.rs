//! The gRPC push API (tonic).
//!
//! - `gpush.v1.Push/PushData` and `/PushBatch`, `/History`;
//! - the server API in the same service: `/Disconnect`, `/Logout`,
//!   `/Subscribe`, `/Unsubscribe`, `/Presence`, `/PresenceStats`,
//!   `/Online`, `/Topics`, the calls of `POST /v1/disconnect` ...
//!   `GET /v1/topics` with the same fields, checks and answers (both go
//!   through `crate::control::Control`);
//! - `order.Proxy/PushData`, the original gpush method, unchanged;
//! - `grpc.health.v1.Health`: the push services are `SERVING` while the bus
//!   is connected (as `/readyz`), the server itself (`""`) always;
//! - server reflection (v1 and v1alpha), so `grpcurl -plaintext host:10067
//!   list` works without the proto files;
//! - over TLS with `tls_cert` / `tls_key`, and then with `grpc_client_ca`
//!   only for callers with a client certificate signed by one of its CAs
//!   ([`crate::tls`]).
//!
//! Validation and ordering are those of [`PushApi`]; errors map to
//! `INVALID_ARGUMENT` (bad input), `UNAUTHENTICATED` (API key),
//! `RESOURCE_EXHAUSTED` (push rate limit), `OUT_OF_RANGE` (a message over
//! `max_grpc_message`, refused before decoding) and `UNAVAILABLE` (bus).
//!
//! Nothing of a call is read before its caller is known: the API key
//! (`authorization` metadata, `Bearer <key>`) is checked by an interceptor
//! on the request headers, before the body. A `PushBatch` is counted as
//! it arrives ([`crate::batch_scan`]) and refused at `max_batch + 1`
//! messages, before prost allocates them; so is an `Online` call at its
//! 1,001st uid. At most `max_connections`
//! connections are open at once (apart from the HTTP API's), and each must
//! send the HTTP/2 preface within `header_read_timeout`
//! ([`crate::connections`]). Each connection carries at most
//! `grpc_max_streams` calls at once, each call is bounded by
//! `request_timeout`, and idle connections are pinged so dead peers are
//! noticed. Unknown protobuf fields are dropped by prost, unseen: unlike
//! the HTTP API, gRPC cannot refuse a misspelled field.

use crate::api::PushApi;
use crate::batch_scan::BatchGuard;
use crate::connections;
use crate::control::{Control, EdgesAsked};
use crate::edges::Edges;
use crate::error::ApiError;
use crate::metrics::Transport;
use crate::tls::TlsListener;
use gpush_common::Push;
use gpush_common::control::Command;
use gpush_common::tls::ServerConfig;
use gpush_proto::order::proxy_server::{Proxy, ProxyServer};
use gpush_proto::v1::push_server::{Push as PushService, PushServer};
use gpush_proto::{order, v1};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How often the bus state is copied into the health service.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How often an HTTP/2 ping checks a gRPC connection's peer.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping's answer may take before the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Implements both push services over one [`PushApi`], and the server
/// API over its [`Control`].
#[derive(Clone)]
struct Handler {
    api: PushApi,
    control: Control,
}

impl Handler {
    async fn push_one(
        &self,
        uid: String,
        topic: String,
        data: bytes::Bytes,
    ) -> Result<Vec<u64>, ApiError> {
        let push = self.api.check(None, uid, topic, data)?;
        self.api
            .publish(Transport::Grpc, std::slice::from_ref(&push))
            .await
    }

    async fn push_many(&self, batch: v1::PushBatchRequest) -> Result<Vec<u64>, ApiError> {
        self.api.check_batch_len(batch.messages.len())?;
        let pushes = batch
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| self.api.check(Some(i), m.uid, m.topic, m.data))
            .collect::<Result<Vec<Push>, _>>()?;
        self.api.publish(Transport::Grpc, &pushes).await
    }

    /// Disconnect, logout, subscribe or unsubscribe.
    async fn reached(&self, command: Command) -> Result<Response<v1::ReachedReply>, Status> {
        let answer = self.control.reached(Transport::Grpc, command).await?;
        let EdgesAsked {
            edges,
            missing,
            complete,
        } = answer.edges;
        Ok(Response::new(v1::ReachedReply {
            connections: answer.connections,
            edges,
            missing,
            complete,
        }))
    }

    /// Counts a refused call; the gRPC status for it.
    fn refused(&self, error: ApiError) -> Status {
        self.api.refused(Transport::Grpc, error).into()
    }
}

#[tonic::async_trait]
impl PushService for Handler {
    async fn push_data(
        &self,
        request: Request<v1::PushRequest>,
    ) -> Result<Response<v1::PushReply>, Status> {
        let m = request.into_inner();
        let accepted = self
            .push_one(m.uid, m.topic, m.data)
            .await
            .map_err(|e| self.refused(e))?;
        Ok(Response::new(reply(accepted)))
    }

    async fn push_batch(
        &self,
        request: Request<v1::PushBatchRequest>,
    ) -> Result<Response<v1::PushReply>, Status> {
        let accepted = self
            .push_many(request.into_inner())
            .await
            .map_err(|e| self.refused(e))?;
        Ok(Response::new(reply(accepted)))
    }

    async fn history(
        &self,
        request: Request<v1::HistoryRequest>,
    ) -> Result<Response<v1::HistoryReply>, Status> {
        let m = request.into_inner();
        let limit = match m.limit {
            0 => crate::api::DEFAULT_HISTORY_LIMIT,
            n => n as usize,
        };
        let query = gpush_common::bus::HistoryQuery {
            uid: m.uid,
            topic: m.topic,
            since: m.since,
            limit,
        };
        // A read, not a push: not counted among refused pushes.
        let page = self.api.history(query).await.map_err(Status::from)?;
        Ok(Response::new(v1::HistoryReply {
            epoch: page.epoch,
            offset: page.offset,
            complete: page.complete,
            pushes: page
                .entries
                .into_iter()
                .map(|entry| v1::HistoryPush {
                    offset: entry.offset,
                    uid: entry.push.uid,
                    topic: entry.push.topic,
                    data: entry.push.data,
                })
                .collect(),
        }))
    }

    async fn disconnect(
        &self,
        request: Request<v1::DisconnectRequest>,
    ) -> Result<Response<v1::ReachedReply>, Status> {
        let v1::DisconnectRequest { uid, reason } = request.into_inner();
        self.reached(Command::Disconnect { uid, reason }).await
    }

    async fn logout(
        &self,
        request: Request<v1::LogoutRequest>,
    ) -> Result<Response<v1::ReachedReply>, Status> {
        let v1::LogoutRequest { uid } = request.into_inner();
        self.reached(Command::Logout { uid }).await
    }

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<v1::ReachedReply>, Status> {
        let v1::SubscribeRequest {
            uid,
            topic,
            public,
            keep,
        } = request.into_inner();
        self.reached(Command::Subscribe {
            uid,
            topic,
            public,
            keep,
        })
        .await
    }

    async fn unsubscribe(
        &self,
        request: Request<v1::UnsubscribeRequest>,
    ) -> Result<Response<v1::ReachedReply>, Status> {
        let v1::UnsubscribeRequest { uid, topic, public } = request.into_inner();
        self.reached(Command::Unsubscribe { uid, topic, public })
            .await
    }

    async fn presence(
        &self,
        request: Request<v1::PresenceRequest>,
    ) -> Result<Response<v1::PresenceReply>, Status> {
        let v1::PresenceRequest { topic, uid } = request.into_inner();
        let answer = self.control.presence(Transport::Grpc, topic, uid).await?;
        let EdgesAsked {
            edges,
            missing,
            complete,
        } = answer.edges;
        Ok(Response::new(v1::PresenceReply {
            topic: answer.topic,
            users: answer.users,
            anonymous: answer.anonymous,
            connections: answer.connections,
            edges,
            missing,
            complete,
        }))
    }

    async fn presence_stats(
        &self,
        request: Request<v1::PresenceStatsRequest>,
    ) -> Result<Response<v1::PresenceStatsReply>, Status> {
        let v1::PresenceStatsRequest { topic } = request.into_inner();
        let answer = self.control.presence_stats(Transport::Grpc, topic).await?;
        let EdgesAsked {
            edges,
            missing,
            complete,
        } = answer.edges;
        Ok(Response::new(v1::PresenceStatsReply {
            topic: answer.topic,
            users: answer.users,
            connections: answer.connections,
            anonymous: answer.anonymous,
            edges,
            missing,
            complete,
        }))
    }

    async fn online(
        &self,
        request: Request<v1::OnlineRequest>,
    ) -> Result<Response<v1::OnlineReply>, Status> {
        let v1::OnlineRequest { uids } = request.into_inner();
        let answer = self.control.online(Transport::Grpc, uids).await?;
        let EdgesAsked {
            edges,
            missing,
            complete,
        } = answer.edges;
        Ok(Response::new(v1::OnlineReply {
            online: answer.online,
            edges,
            missing,
            complete,
        }))
    }

    async fn topics(
        &self,
        request: Request<v1::TopicsRequest>,
    ) -> Result<Response<v1::TopicsReply>, Status> {
        let v1::TopicsRequest { prefix, limit } = request.into_inner();
        let limit = (limit != 0).then_some(limit as usize);
        let answer = self.control.topics(Transport::Grpc, prefix, limit).await?;
        let EdgesAsked {
            edges,
            missing,
            complete,
        } = answer.edges;
        Ok(Response::new(v1::TopicsReply {
            topics: answer
                .topics
                .into_iter()
                .map(|t| v1::TopicCount {
                    topic: t.topic,
                    subscribers: t.subscribers,
                })
                .collect(),
            truncated: answer.truncated,
            edges,
            missing,
            complete,
        }))
    }
}

#[tonic::async_trait]
impl Proxy for Handler {
    async fn push_data(
        &self,
        request: Request<order::Data>,
    ) -> Result<Response<order::Empty>, Status> {
        let m = request.into_inner();
        self.push_one(m.uid, m.topic, m.data)
            .await
            .map_err(|e| self.refused(e))?;
        Ok(Response::new(order::Empty {}))
    }
}

fn reply(offsets: Vec<u64>) -> v1::PushReply {
    v1::PushReply {
        accepted: u32::try_from(offsets.len()).unwrap_or(u32::MAX),
        offsets,
    }
}

/// Serves the gRPC push API on `listener` until `shutdown`, over TLS with
/// `tls` when given (see [`crate::tls`]); the server API expects the edges
/// `edges` lists to answer.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    api: PushApi,
    edges: Edges,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let limit = api.grpc_message_limit();
    let config = api.config().clone();
    let handler = Handler {
        api: api.clone(),
        control: Control::new(api.clone(), edges),
    };
    let push = BatchGuard::new(
        PushServer::new(handler.clone()).max_decoding_message_size(limit),
        config.max_batch,
        limit,
    );
    let push = InterceptedService::new(push, key_check(api.clone()));
    let proxy = ProxyServer::new(handler).max_decoding_message_size(limit);
    let proxy = InterceptedService::new(proxy, key_check(api.clone()));

    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(track_bus(api, reporter, shutdown.clone()));

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(gpush_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let router = Server::builder()
        .timeout(config.request_timeout)
        .max_concurrent_streams(config.grpc_max_streams)
        .concurrency_limit_per_connection(config.grpc_max_streams as usize)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(push)
        .add_service(proxy);
    let stop = shutdown.cancelled_owned();
    // This listener's own slots: HTTP connections do not count here.
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let preface = config.header_read_timeout;
    match tls {
        Some(tls) => {
            let listener = TlsListener::capped(listener, tls, slots);
            let incoming = connections::grpc_tls(listener, preface);
            router.serve_with_incoming_shutdown(incoming, stop).await?;
        }
        None => {
            let incoming = connections::grpc_plain(listener, slots, preface);
            router.serve_with_incoming_shutdown(incoming, stop).await?;
        }
    }
    Ok(())
}

/// The API key check of the push services, run on a call's headers
/// before its body is read: `UNAUTHENTICATED` without the key.
fn key_check(
    api: PushApi,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    move |request: Request<()>| {
        let value = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match api.authorize(value) {
            Ok(()) => Ok(request),
            Err(e) => Err(api.refused(Transport::Grpc, e).into()),
        }
    }
}

/// The services whose health follows the bus.
const PUSH_SERVICES: [&str; 2] = [
    gpush_proto::v1::push_server::SERVICE_NAME,
    gpush_proto::order::proxy_server::SERVICE_NAME,
];

/// Keeps the health status of the push services equal to the bus state,
/// and marks them `NOT_SERVING` on shutdown.
async fn track_bus(api: PushApi, reporter: HealthReporter, shutdown: CancellationToken) {
    let mut ready = None;
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        let now = tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tick.tick() => api.bus().is_ready(),
        };
        if ready != Some(now) {
            ready = Some(now);
            let status = if now {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in PUSH_SERVICES {
                reporter.set_service_status(name, status).await;
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}
