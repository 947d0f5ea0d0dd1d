//! The gRPC push API over a real socket: `serve` on port 0 with an
//! in-process bus, called with the generated clients; and `run` against a
//! NATS that is not there.

use gpush_common::{Bus, LocalDelivery, Push};
use gpush_ingress::{Edges, IngressConfig, Listeners, PushApiConfig};
use gpush_proto::order::proxy_client::ProxyClient;
use gpush_proto::v1::push_client::PushClient;
use gpush_proto::{order, v1};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const KEY: &str = "test-key";
const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Recorder(Mutex<Vec<Push>>);

impl LocalDelivery for Recorder {
    fn deliver(&self, push: &Push) {
        self.0.lock().expect("lock").push(push.clone());
    }
}

impl Recorder {
    fn taken(&self) -> Vec<(String, String, Vec<u8>)> {
        std::mem::take(&mut *self.0.lock().expect("lock"))
            .into_iter()
            .map(|p| (p.uid, p.topic, p.data.to_vec()))
            .collect()
    }
}

struct Server {
    grpc: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stops in time")
            .expect("no panic");
        result.expect("clean exit");
    }

    async fn channel(&self) -> Channel {
        tokio::time::timeout(
            WAIT,
            Channel::from_shared(format!("http://{}", self.grpc))
                .expect("uri")
                .connect(),
        )
        .await
        .expect("connect in time")
        .expect("connect")
    }
}

async fn listeners() -> (Listeners, SocketAddr) {
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = grpc.local_addr().expect("addr");
    (Listeners { http, grpc }, addr)
}

async fn start_local(api_key: Option<&str>) -> (Server, Arc<Recorder>) {
    let (listeners, grpc) = listeners().await;
    let recorder = Arc::new(Recorder::default());
    let push = PushApiConfig {
        api_key: api_key.map(str::to_owned),
        max_payload: 8,
        max_batch: 3,
        ..PushApiConfig::default()
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gpush_ingress::serve(
        listeners,
        gpush_ingress::PushTls::default(),
        Bus::Local(recorder.clone()),
        push,
        Edges::Disabled,
        shutdown.clone(),
    ));
    let server = Server {
        grpc,
        shutdown,
        task,
    };
    (server, recorder)
}

fn request<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = key {
        let value = format!("Bearer {key}").parse().expect("metadata");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Waits until the health service reports `want` for `service`.
async fn wait_health(channel: Channel, service: &str, want: ServingStatus) {
    let mut health = HealthClient::new(channel);
    let reached = tokio::time::timeout(WAIT, async {
        loop {
            let request = HealthCheckRequest {
                service: service.into(),
            };
            match health.check(request).await {
                Ok(r) if r.get_ref().status == want as i32 => break,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert!(reached.is_ok(), "{service:?} never became {want:?}");
}

/// What `grpcurl list` shows: the services known to reflection, sorted.
async fn list_services(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut client = ServerReflectionClient::new(channel);
    let mut replies = tokio::time::timeout(
        WAIT,
        client.server_reflection_info(futures_util::stream::iter([request])),
    )
    .await
    .expect("in time")
    .expect("reflection")
    .into_inner();
    let reply = tokio::time::timeout(WAIT, replies.message())
        .await
        .expect("in time")
        .expect("reply")
        .expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

fn msg(uid: &str, topic: &str, data: &[u8]) -> v1::PushRequest {
    v1::PushRequest {
        uid: uid.into(),
        topic: topic.into(),
        data: data.to_vec().into(),
    }
}

#[tokio::test]
async fn push_data_and_batch() {
    let (server, rec) = start_local(Some(KEY)).await;
    let mut client = PushClient::new(server.channel().await);

    let reply = client
        .push_data(request(msg("u", "t", b"one"), Some(KEY)))
        .await
        .expect("push");
    assert_eq!(reply.into_inner().accepted, 1);
    assert_eq!(rec.taken(), [("u".into(), "t".into(), b"one".to_vec())]);

    let batch = v1::PushBatchRequest {
        messages: vec![msg("", "t", b"1"), msg("", "t", b"2"), msg("", "", b"3")],
    };
    let reply = client
        .push_batch(request(batch, Some(KEY)))
        .await
        .expect("batch");
    assert_eq!(reply.into_inner().accepted, 3);
    let data: Vec<_> = rec.taken().into_iter().map(|(_, _, d)| d).collect();
    assert_eq!(data, [b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]);

    let mut proxy = ProxyClient::new(server.channel().await);
    let data = order::Data {
        uid: "".into(),
        topic: "legacy".into(),
        data: b"{}".to_vec().into(),
    };
    proxy
        .push_data(request(data, Some(KEY)))
        .await
        .expect("order.Proxy/PushData");
    assert_eq!(rec.taken(), [("".into(), "legacy".into(), b"{}".to_vec())]);

    server.stop().await;
}

#[tokio::test]
async fn errors_map_to_status_codes() {
    let (server, rec) = start_local(Some(KEY)).await;
    let channel = server.channel().await;
    let mut client = PushClient::new(channel.clone());
    let mut proxy = ProxyClient::new(channel);

    for key in [None, Some("wrong")] {
        let status = client
            .push_data(request(msg("", "t", b"x"), key))
            .await
            .expect_err("no key");
        assert_eq!(status.code(), Code::Unauthenticated, "{key:?}");
        let data = order::Data::default();
        let status = proxy
            .push_data(request(data, key))
            .await
            .expect_err("no key");
        assert_eq!(status.code(), Code::Unauthenticated, "{key:?}");
    }

    let invalid = |status: tonic::Status, field: &str| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(field),
            "{status:?} should name {field}"
        );
    };
    let e = client
        .push_data(request(msg("", "a\nb", b""), Some(KEY)))
        .await
        .expect_err("control char");
    invalid(e, "topic");
    let e = client
        .push_data(request(msg("", "", b"123456789"), Some(KEY)))
        .await
        .expect_err("too large");
    invalid(e, "data");
    let bad = order::Data {
        uid: "u\0".into(),
        ..order::Data::default()
    };
    let e = proxy
        .push_data(request(bad, Some(KEY)))
        .await
        .expect_err("bad uid");
    invalid(e, "uid");

    let batch = v1::PushBatchRequest {
        messages: vec![msg("", "ok", b""), msg("", "x".repeat(300).as_str(), b"")],
    };
    let e = client
        .push_batch(request(batch, Some(KEY)))
        .await
        .expect_err("bad batch");
    invalid(e, "messages[1].topic");
    let e = client
        .push_batch(request(v1::PushBatchRequest::default(), Some(KEY)))
        .await
        .expect_err("empty");
    invalid(e, "messages");
    let four = v1::PushBatchRequest {
        messages: vec![msg("", "", b""); 4],
    };
    let e = client
        .push_batch(request(four, Some(KEY)))
        .await
        .expect_err("too many");
    invalid(e, "messages");

    assert!(rec.taken().is_empty(), "nothing published");
    server.stop().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let (server, _) = start_local(None).await;
    let channel = server.channel().await;
    for service in ["", "gpush.v1.Push", "order.Proxy"] {
        wait_health(channel.clone(), service, ServingStatus::Serving).await;
    }
    assert_eq!(
        list_services(channel.clone()).await,
        [
            "gpush.v1.Push",
            "grpc.health.v1.Health",
            // v1alpha is served too, and lists itself instead of v1.
            "grpc.reflection.v1.ServerReflection",
            "order.Proxy",
        ]
    );
    // The push API works without a key when none is configured.
    let mut client = PushClient::new(channel);
    client
        .push_data(request(msg("", "", b""), None))
        .await
        .expect("no key configured");
    server.stop().await;
}

#[tokio::test]
async fn run_without_nats_is_unavailable_but_healthy() {
    let (listeners, grpc) = listeners().await;
    let config = IngressConfig {
        // Nothing listens on port 1; the client keeps retrying in the background.
        nats: gpush_common::config::sections::NatsConfig {
            nats_urls: vec!["nats://127.0.0.1:1".into()],
            ..Default::default()
        },
        publish_timeout: Duration::from_millis(200),
        ..IngressConfig::default()
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gpush_ingress::run(listeners, config, shutdown.clone()));
    let server = Server {
        grpc,
        shutdown,
        task,
    };
    let channel = server.channel().await;
    let status = PushClient::new(channel.clone())
        .push_data(request(msg("", "t", b"x"), None))
        .await
        .expect_err("no bus");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    wait_health(channel, "gpush.v1.Push", ServingStatus::NotServing).await;
    server.stop().await;
}
