//! The push API's error answers: 400 naming the bad field (and the matching
//! gRPC status), 401 without the configured API key, 429 /
//! `RESOURCE_EXHAUSTED` over the push rate, gRPC messages over
//! `max_grpc_message`, 503 while the bus is down, and recovery when it
//! comes back.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use gpush_ingress::IngressConfig;
use gpush_integration_tests::api::HttpReply;
use gpush_integration_tests::frames;
use gpush_integration_tests::{
    Cluster, Deployment, IngressHandle, NatsServer, PushApi, PushMsg, TIMEOUT, Via, wait_for,
};
use gpush_proto::order::Data;
use gpush_proto::v1::{PushBatchRequest, PushRequest};
use serde_json::{Value, json};
use std::time::Duration;
use tonic::Code;

/// NATS and an ingress on it, ready to publish.
async fn ingress(tweak: impl FnOnce(&mut IngressConfig)) -> (NatsServer, IngressHandle, PushApi) {
    let nats = NatsServer::start().await;
    let mut config = IngressConfig {
        nats: gpush_common::config::sections::NatsConfig::with_urls(vec![nats.url()]),
        ..IngressConfig::default()
    };
    tweak(&mut config);
    let ingress = IngressHandle::start(config).await;
    let api = PushApi::new(&ingress.http_base(), &ingress.grpc_url());
    api.wait_for_status("/readyz", 200, TIMEOUT).await;
    (nats, ingress, api)
}

fn assert_error(reply: &HttpReply, status: u16, field: Option<&str>, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.body);
    let body = reply.json();
    assert!(
        body.get("code").is_some() && body["message"].is_string(),
        "{what}: error body should be {{\"code\",\"message\"}}: {body}"
    );
    if let Some(field) = field {
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(field),
            "{what}: message should name {field:?}: {body}"
        );
    }
}

fn request(uid: &str, topic: &str, data: Vec<u8>) -> PushRequest {
    PushRequest {
        uid: uid.to_owned(),
        topic: topic.to_owned(),
        data: data.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pushes_are_refused_naming_the_field() {
    let (_nats, _ingress, api) = ingress(|_| {}).await;
    let max = gpush_ingress::config::DEFAULT_MAX_PAYLOAD;
    let ok = json!({"uid": "", "topic": "t", "data": BASE64.encode(b"{}")});
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("/v1/pushData", "not json".into(), None),
        (
            "/v1/pushData",
            json!({"uid": "", "topic": "t", "data": "***"}).to_string(),
            Some("data"),
        ),
        (
            "/v1/pushData",
            json!({"uid": "", "topic": "a\u{0}b", "data": ""}).to_string(),
            Some("topic"),
        ),
        (
            "/v1/pushData",
            json!({"uid": "a\nb", "topic": "t", "data": ""}).to_string(),
            Some("uid"),
        ),
        (
            "/v1/pushData",
            json!({"uid": "", "topic": "t".repeat(257), "data": ""}).to_string(),
            Some("topic"),
        ),
        (
            "/v1/pushData",
            json!({"uid": "", "topic": "t", "data": BASE64.encode(vec![b'x'; max + 1])})
                .to_string(),
            Some("data"),
        ),
        ("/v1/pushBatch", "{\"messages\":".into(), None),
        (
            "/v1/pushBatch",
            json!({"messages": [ok, {"uid": "", "topic": "bad\u{7f}", "data": ""}]}).to_string(),
            Some("topic"),
        ),
    ];
    for (path, body, field) in &cases {
        let reply = api.post(path, body.clone(), None).await;
        assert_error(&reply, 400, *field, &format!("POST {path} {body:.100}"));
    }
    // The largest payload allowed is accepted.
    let largest = PushMsg::public("t", vec![b'x'; max]);
    api.send(Via::Http, std::slice::from_ref(&largest)).await;
    api.send(Via::Grpc, &[largest]).await;

    // The gRPC API maps the same cases to INVALID_ARGUMENT.
    let status = |result: Result<tonic::Response<_>, tonic::Status>| match result {
        Ok(_) => panic!("bad push accepted"),
        Err(status) => status,
    };
    let bad_topic = status(api.grpc().push_data(request("", "a\u{0}b", vec![])).await);
    assert_eq!(bad_topic.code(), Code::InvalidArgument, "{bad_topic:?}");
    assert!(bad_topic.message().contains("topic"), "{bad_topic:?}");
    let bad_uid = status(api.grpc().push_data(request("a\nb", "t", vec![])).await);
    assert_eq!(bad_uid.code(), Code::InvalidArgument, "{bad_uid:?}");
    assert!(bad_uid.message().contains("uid"), "{bad_uid:?}");
    let too_big = status(
        api.grpc()
            .push_data(request("", "t", vec![b'x'; max + 1]))
            .await,
    );
    assert_eq!(too_big.code(), Code::InvalidArgument, "{too_big:?}");
    assert!(too_big.message().contains("data"), "{too_big:?}");
    let batch = PushBatchRequest {
        messages: vec![request("", "t", vec![]), request("", "a\u{0}", vec![])],
    };
    let bad_batch = status(api.grpc().push_batch(batch).await);
    assert_eq!(bad_batch.code(), Code::InvalidArgument, "{bad_batch:?}");
    let legacy = Data {
        uid: String::new(),
        topic: "a\u{0}b".into(),
        data: Default::default(),
    };
    let bad_legacy = api
        .legacy()
        .push_data(legacy)
        .await
        .expect_err("legacy push with a bad topic accepted");
    assert_eq!(bad_legacy.code(), Code::InvalidArgument, "{bad_legacy:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_when_configured() {
    let (_nats, _ingress, api) = ingress(|c| c.push.api_key = Some("s3cret-key".into())).await;
    let body = PushApi::push_data_body(&PushMsg::public("t", b"{}".to_vec()));
    assert_error(
        &api.post("/v1/pushData", body.clone(), None).await,
        401,
        None,
        "no key",
    );
    assert_error(
        &api.post("/v1/pushData", body.clone(), Some("wrong")).await,
        401,
        None,
        "wrong key",
    );
    let batch = PushApi::push_batch_body(&[PushMsg::public("t", b"{}".to_vec())]);
    assert_error(
        &api.post("/v1/pushBatch", batch.clone(), None).await,
        401,
        None,
        "batch, no key",
    );
    assert_eq!(
        api.post("/v1/pushData", body, Some("s3cret-key"))
            .await
            .status,
        200
    );
    assert_eq!(
        api.post("/v1/pushBatch", batch, Some("s3cret-key"))
            .await
            .status,
        200
    );

    let with_key = |key: Option<&str>| {
        let mut request = tonic::Request::new(request("", "t", b"{}".to_vec()));
        if let Some(key) = key {
            let value = format!("Bearer {key}").parse().expect("metadata value");
            request.metadata_mut().insert("authorization", value);
        }
        request
    };
    for key in [None, Some("wrong")] {
        let status = api
            .grpc()
            .push_data(with_key(key))
            .await
            .expect_err("gRPC push without the right key accepted");
        assert_eq!(status.code(), Code::Unauthenticated, "{key:?}: {status:?}");
    }
    api.grpc()
        .push_data(with_key(Some("s3cret-key")))
        .await
        .expect("gRPC push with the key");
    let legacy = api
        .legacy()
        .push_data(Data::default())
        .await
        .expect_err("legacy push without the key accepted");
    assert_eq!(legacy.code(), Code::Unauthenticated, "{legacy:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_outage_gives_503_then_delivery_resumes() {
    let mut cluster = Cluster::start(1, |_| {}).await;
    let mut client = cluster.connect(0, "subscriber").await;
    client.must_subscribe("t").await;
    cluster.push_http("", "t", b"{\"before\":true}").await;
    client
        .expect_push(&frames::public("t", b"{\"before\":true}"))
        .await;

    cluster.nats.stop();
    let api = cluster.api().clone();
    api.wait_for_status("/readyz", 503, TIMEOUT).await;
    assert_eq!(
        api.get("/healthz").await.status,
        200,
        "healthz is about the process only"
    );
    let body = PushApi::push_data_body(&PushMsg::public("t", b"{}".to_vec()));
    assert_error(
        &api.post("/v1/pushData", body, None).await,
        503,
        None,
        "bus down",
    );
    let status = api
        .grpc()
        .push_data(request("", "t", b"{}".to_vec()))
        .await
        .expect_err("gRPC push accepted while the bus is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    cluster.nats.restart().await;
    let reconnect = Duration::from_secs(15);
    api.wait_for_status("/readyz", 200, reconnect).await;
    // Pushes made before the edge has re-subscribed reach it late (from
    // history) or not at all: push until one arrives.
    let deadline = tokio::time::Instant::now() + reconnect;
    let received: Value = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no push arrived within {reconnect:?} after NATS came back"
        );
        cluster.push_http("", "t", b"{\"after\":true}").await;
        if let Some(push) = client.try_next_push(Duration::from_millis(250)).await {
            break push;
        }
    };
    let expected = frames::public("t", b"{\"after\":true}");
    assert_eq!(frames::comparable(received, &expected), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::{v1, v1alpha};

    let (_nats, ingress, _api) = ingress(|_| {}).await;
    let channel = tonic::transport::Endpoint::from_shared(ingress.grpc_url())
        .expect("gRPC URL")
        .connect()
        .await
        .expect("connect to the gRPC API");

    // Health follows the bus (with a short delay): wait for SERVING.
    let health = HealthClient::new(channel.clone());
    wait_for(TIMEOUT, "gpush.v1.Push SERVING", || {
        let mut health = health.clone();
        async move {
            // NOT_FOUND until the health service has its first status.
            let status = health
                .check(HealthCheckRequest {
                    service: "gpush.v1.Push".into(),
                })
                .await
                .map_err(|e| format!("{e}"))?
                .into_inner()
                .status;
            if status == ServingStatus::Serving as i32 {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        }
    })
    .await;

    let expected = ["gpush.v1.Push", "order.Proxy", "grpc.health.v1.Health"];
    // grpcurl asks v1 first and falls back to v1alpha: serve both.
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream_once(request))
        .await
        .expect("reflection v1")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection v1 response")
        .expect("a reflection v1 response");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("reflection v1: not a service list: {response:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for name in expected {
        assert!(
            names.contains(&name),
            "reflection v1 lacks {name}: {names:?}"
        );
    }
    // The descriptor set describes every method, the server API's too.
    let methods = [
        "PushData",
        "PushBatch",
        "History",
        "Disconnect",
        "Logout",
        "Subscribe",
        "Unsubscribe",
        "Presence",
        "PresenceStats",
        "Online",
        "Topics",
    ];
    let requests = methods.map(|method| v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1::server_reflection_request::MessageRequest::FileContainingSymbol(format!(
                "gpush.v1.Push.{method}"
            )),
        ),
    });
    let mut responses = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(futures_util::stream::iter(requests))
        .await
        .expect("reflection v1")
        .into_inner();
    for method in methods {
        let response = responses
            .message()
            .await
            .expect("reflection v1 response")
            .expect("a reflection v1 response");
        match response.message_response {
            Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(
                files,
            )) if !files.file_descriptor_proto.is_empty() => {}
            other => panic!("reflection v1: no file for gpush.v1.Push.{method}: {other:?}"),
        }
    }

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream_once(request))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection v1alpha response")
        .expect("a reflection v1alpha response");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("reflection v1alpha: not a service list: {response:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for name in expected {
        assert!(
            names.contains(&name),
            "reflection v1alpha lacks {name}: {names:?}"
        );
    }
}

/// A request stream of one message.
fn tokio_stream_once<T: Send + 'static>(item: T) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::once(std::future::ready(item))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_push_rate_gets_429_with_retry_after_and_resource_exhausted() {
    let (_nats, _ingress, api) = ingress(|c| {
        c.push.push_rate = 1;
        c.push.push_burst = 10;
        c.push.max_batch = 10;
    })
    .await;
    let batch: Vec<PushMsg> = (0..10)
        .map(|i| PushMsg::public("rate", format!("{{\"n\":{i}}}")))
        .collect();
    let body = PushApi::push_batch_body(&batch);
    let first = api.post("/v1/pushBatch", body.clone(), None).await;
    assert_eq!(first.status, 200, "{}", first.body);
    // Ten more need ten seconds of refill at one a second.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/pushBatch", api.http_base()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /v1/pushBatch");
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header in seconds");
    assert!((8..=10).contains(&retry_after), "Retry-After {retry_after}");
    let refused: Value = response.json().await.expect("JSON body");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let messages = (0..10)
        .map(|i| request("", "rate", format!("{{\"g\":{i}}}").into_bytes()))
        .collect();
    let status = api
        .grpc()
        .push_batch(PushBatchRequest { messages })
        .await
        .expect_err("over the rate");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // The process is fine: a single push fits again after a second. A
    // deliberate sleep: the refill on the clock is what is tested.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    api.push_http("", "rate", b"{}").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_messages_over_max_grpc_message_are_refused() {
    let (_nats, _ingress, api) = ingress(|c| c.push.max_grpc_message = 2048).await;
    let status = api
        .grpc()
        .push_data(request("", "big", vec![b'x'; 4096]))
        .await
        .expect_err("over max_grpc_message");
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );
    // Smaller messages still go through, on gRPC and over HTTP.
    api.push_grpc("", "big", &[b'x'; 1024]).await;
    api.push_http("", "big", &[b'x'; 4096]).await;
}
