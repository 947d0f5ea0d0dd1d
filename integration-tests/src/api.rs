//! A client of the push API: HTTP, gRPC (`gpush.v1.Push`) and the legacy
//! `order.Proxy/PushData`, served by ingress and by a standalone edge; and
//! of the server API over both ([`PushApi::control_grpc`] makes an HTTP
//! call's gRPC twin, so tests compare the two).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use gpush_proto::order::proxy_client::ProxyClient;
use gpush_proto::v1::push_client::PushClient;
use gpush_proto::v1::{PushBatchRequest, PushRequest};
use serde_json::{Value, json};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// One message for the push API. Which connections receive it follows from
/// which of `uid` and `topic` are empty (see the routing rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMsg {
    /// Target user; empty for public and everyone pushes.
    pub uid: String,
    /// Target topic; empty for everyone and user-wide pushes.
    pub topic: String,
    /// The payload.
    pub data: Vec<u8>,
}

impl PushMsg {
    /// A message with explicit fields.
    pub fn new(uid: &str, topic: &str, data: impl Into<Vec<u8>>) -> Self {
        Self {
            uid: uid.to_owned(),
            topic: topic.to_owned(),
            data: data.into(),
        }
    }

    /// To the subscribers of public topic `topic`.
    pub fn public(topic: &str, data: impl Into<Vec<u8>>) -> Self {
        Self::new("", topic, data)
    }

    /// To `uid`'s connections subscribed to private topic `topic`.
    pub fn private(uid: &str, topic: &str, data: impl Into<Vec<u8>>) -> Self {
        Self::new(uid, topic, data)
    }

    /// To every connection logged in as `uid`.
    pub fn user(uid: &str, data: impl Into<Vec<u8>>) -> Self {
        Self::new(uid, "", data)
    }

    /// To every connection on every edge.
    pub fn everyone(data: impl Into<Vec<u8>>) -> Self {
        Self::new("", "", data)
    }

    fn to_json(&self) -> Value {
        json!({"uid": self.uid, "topic": self.topic, "data": BASE64.encode(&self.data)})
    }

    fn to_proto(&self) -> PushRequest {
        PushRequest {
            uid: self.uid.clone(),
            topic: self.topic.clone(),
            data: self.data.clone().into(),
        }
    }
}

/// Which push API call carries a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `POST /v1/pushData`, one call per message.
    Http,
    /// `POST /v1/pushBatch`, all messages in one call.
    HttpBatch,
    /// gRPC `gpush.v1.Push/PushData`, one call per message.
    Grpc,
    /// gRPC `gpush.v1.Push/PushBatch`, all messages in one call.
    GrpcBatch,
    /// gRPC `order.Proxy/PushData` (the original gpush API), one call per
    /// message.
    LegacyGrpc,
}

impl Via {
    /// Every way to push.
    pub const ALL: [Via; 5] = [
        Via::Http,
        Via::HttpBatch,
        Via::Grpc,
        Via::GrpcBatch,
        Via::LegacyGrpc,
    ];

    /// A short name, for payloads and failure messages.
    pub fn name(self) -> &'static str {
        match self {
            Via::Http => "http",
            Via::HttpBatch => "http-batch",
            Via::Grpc => "grpc",
            Via::GrpcBatch => "grpc-batch",
            Via::LegacyGrpc => "legacy-grpc",
        }
    }

    /// Whether all messages go in one call (and so keep their order).
    pub fn is_batch(self) -> bool {
        matches!(self, Via::HttpBatch | Via::GrpcBatch)
    }
}

/// Status and body of an HTTP response.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// HTTP status code.
    pub status: u16,
    /// The body as text.
    pub body: String,
}

impl HttpReply {
    /// The body parsed as JSON; panics if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {:?}",
                self.status, self.body
            )
        })
    }
}

/// A gRPC endpoint for `grpc_url` with the test timeouts.
fn endpoint(grpc_url: &str) -> Endpoint {
    Endpoint::from_shared(grpc_url.to_owned())
        .unwrap_or_else(|e| panic!("bad gRPC URL {grpc_url:?}: {e}"))
        .connect_timeout(crate::TIMEOUT)
        .timeout(crate::TIMEOUT * 2)
}

/// Client of one push API (ingress, or a standalone edge).
#[derive(Debug, Clone)]
pub struct PushApi {
    http_base: String,
    grpc_url: String,
    http: reqwest::Client,
    grpc: PushClient<Channel>,
    legacy: ProxyClient<Channel>,
    /// Sent as `Bearer <key>` by [`Self::try_send`] and the helpers on it.
    api_key: Option<String>,
}

impl PushApi {
    /// A client of the HTTP API at `http_base` (`http://host:port`) and the
    /// gRPC API at `grpc_url`. Connections are made on first use; must be
    /// called inside a tokio runtime.
    pub fn new(http_base: &str, grpc_url: &str) -> Self {
        Self::with(
            http_base,
            grpc_url,
            reqwest::Client::builder(),
            endpoint(grpc_url),
        )
    }

    /// Like [`Self::new`], for a push API served over TLS (`https://`
    /// URLs) with a certificate signed by the CA in `ca_pem`: the only CA
    /// both clients trust. `identity` (certificate and key, PEM) is the
    /// gRPC client's certificate, for mutual TLS.
    pub fn new_tls(
        http_base: &str,
        grpc_url: &str,
        ca_pem: &str,
        identity: Option<(&str, &str)>,
    ) -> Self {
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("test CA certificate");
        let http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca);
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let endpoint = endpoint(grpc_url)
            .tls_config(tls)
            .expect("gRPC client TLS config");
        Self::with(http_base, grpc_url, http, endpoint)
    }

    fn with(
        http_base: &str,
        grpc_url: &str,
        http: reqwest::ClientBuilder,
        endpoint: Endpoint,
    ) -> Self {
        let http = http
            .timeout(crate::TIMEOUT * 2)
            .build()
            .expect("build HTTP client");
        let channel = endpoint.connect_lazy();
        Self {
            http_base: http_base.to_owned(),
            grpc_url: grpc_url.to_owned(),
            http,
            grpc: PushClient::new(channel.clone()),
            legacy: ProxyClient::new(channel),
            api_key: None,
        }
    }

    /// This client, sending `key` as `Authorization: Bearer <key>` on the
    /// pushes of [`Self::try_send`] (HTTP header, gRPC metadata).
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key;
        self
    }

    /// A gRPC request carrying the API key, when there is one.
    fn keyed<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(key) = &self.api_key {
            let value = format!("Bearer {key}")
                .parse()
                .expect("API key as metadata value");
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// `http://host:port` of the HTTP API.
    pub fn http_base(&self) -> &str {
        &self.http_base
    }

    /// `http://host:port` of the gRPC API.
    pub fn grpc_url(&self) -> &str {
        &self.grpc_url
    }

    /// A `gpush.v1.Push` client, for tests that inspect gRPC statuses.
    pub fn grpc(&self) -> PushClient<Channel> {
        self.grpc.clone()
    }

    /// An `order.Proxy` client (the original gpush API).
    pub fn legacy(&self) -> ProxyClient<Channel> {
        self.legacy.clone()
    }

    /// `POST <http_base><path>` with a raw body (sent as
    /// `application/json`) and an optional bearer token.
    pub async fn post(
        &self,
        path: &str,
        body: impl Into<String>,
        bearer: Option<&str>,
    ) -> HttpReply {
        let url = format!("{}{path}", self.http_base);
        let mut request = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.into());
        if let Some(key) = bearer {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: reading body: {e}"));
        HttpReply { status, body }
    }

    /// `GET <http_base><path>`.
    pub async fn get(&self, path: &str) -> HttpReply {
        let url = format!("{}{path}", self.http_base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: reading body: {e}"));
        HttpReply { status, body }
    }

    /// The JSON body of `POST /v1/pushData` for `msg`.
    pub fn push_data_body(msg: &PushMsg) -> String {
        msg.to_json().to_string()
    }

    /// The JSON body of `POST /v1/pushBatch` for `msgs`.
    pub fn push_batch_body(msgs: &[PushMsg]) -> String {
        json!({"messages": msgs.iter().map(PushMsg::to_json).collect::<Vec<_>>()}).to_string()
    }

    /// Pushes `msgs` via `via`: in one call for the batch methods, else one
    /// call per message, in order. Errors carry the status and body.
    pub async fn try_send(&self, via: Via, msgs: &[PushMsg]) -> anyhow::Result<()> {
        match via {
            Via::HttpBatch => self.try_http_batch(msgs).await,
            Via::GrpcBatch => self.try_grpc_batch(msgs).await,
            Via::Http | Via::Grpc | Via::LegacyGrpc => {
                for msg in msgs {
                    match via {
                        Via::Http => self.try_http(msg).await?,
                        Via::Grpc => self.try_grpc(msg).await?,
                        _ => self.try_legacy(msg).await?,
                    }
                }
                Ok(())
            }
        }
    }

    async fn try_http(&self, msg: &PushMsg) -> anyhow::Result<()> {
        let reply = self
            .post(
                "/v1/pushData",
                Self::push_data_body(msg),
                self.api_key.as_deref(),
            )
            .await;
        check_http(&reply)
    }

    async fn try_http_batch(&self, msgs: &[PushMsg]) -> anyhow::Result<()> {
        let reply = self
            .post(
                "/v1/pushBatch",
                Self::push_batch_body(msgs),
                self.api_key.as_deref(),
            )
            .await;
        check_http(&reply)
    }

    async fn try_grpc(&self, msg: &PushMsg) -> anyhow::Result<()> {
        let reply = self
            .grpc()
            .push_data(self.keyed(msg.to_proto()))
            .await?
            .into_inner();
        anyhow::ensure!(reply.accepted == 1, "PushData accepted {}", reply.accepted);
        Ok(())
    }

    async fn try_grpc_batch(&self, msgs: &[PushMsg]) -> anyhow::Result<()> {
        let request = PushBatchRequest {
            messages: msgs.iter().map(PushMsg::to_proto).collect(),
        };
        let reply = self
            .grpc()
            .push_batch(self.keyed(request))
            .await?
            .into_inner();
        anyhow::ensure!(
            reply.accepted as usize == msgs.len(),
            "PushBatch accepted {} of {} messages",
            reply.accepted,
            msgs.len()
        );
        Ok(())
    }

    async fn try_legacy(&self, msg: &PushMsg) -> anyhow::Result<()> {
        let data = gpush_proto::order::Data {
            uid: msg.uid.clone(),
            topic: msg.topic.clone(),
            data: msg.data.clone().into(),
        };
        self.legacy().push_data(self.keyed(data)).await?;
        Ok(())
    }

    /// Like [`Self::try_send`], panicking on failure.
    pub async fn send(&self, via: Via, msgs: &[PushMsg]) {
        if let Err(e) = self.try_send(via, msgs).await {
            panic!("push via {} failed: {e:#}", via.name());
        }
    }

    /// `POST /v1/pushData`; panics unless 200.
    pub async fn push_http(&self, uid: &str, topic: &str, data: &[u8]) {
        self.send(Via::Http, &[PushMsg::new(uid, topic, data)])
            .await;
    }

    /// `POST /v1/pushBatch`; panics unless 200.
    pub async fn push_batch_http(&self, msgs: &[PushMsg]) {
        self.send(Via::HttpBatch, msgs).await;
    }

    /// gRPC `PushData`; panics unless OK.
    pub async fn push_grpc(&self, uid: &str, topic: &str, data: &[u8]) {
        self.send(Via::Grpc, &[PushMsg::new(uid, topic, data)])
            .await;
    }

    /// gRPC `PushBatch`; panics unless OK with every message accepted.
    pub async fn push_batch_grpc(&self, msgs: &[PushMsg]) {
        self.send(Via::GrpcBatch, msgs).await;
    }

    /// gRPC `order.Proxy/PushData`; panics unless OK.
    pub async fn push_legacy_grpc(&self, uid: &str, topic: &str, data: &[u8]) {
        self.send(Via::LegacyGrpc, &[PushMsg::new(uid, topic, data)])
            .await;
    }

    /// The gRPC twin of a server API call: `path` is the HTTP route (with
    /// its query string, for the GET calls), `body` the HTTP body (POST
    /// calls; ignored for GET). The fields go into the method's request
    /// (`/v1/online?uid=a,b` becomes `OnlineRequest { uids: [a, b] }`,
    /// `/v1/topics` without `limit` a limit of 0), the API key, when there
    /// is one, into the metadata; the answer comes back as the HTTP answer
    /// would read, without its `"code": "ok"`. Panics on a path that is
    /// not a server API call.
    pub async fn control_grpc(&self, path: &str, body: &Value) -> Result<Value, tonic::Status> {
        use gpush_proto::v1;
        let (route, query) = path.split_once('?').unwrap_or((path, ""));
        let mut fields = body.as_object().cloned().unwrap_or_default();
        if !query.is_empty() {
            let url = reqwest::Url::parse(&format!("http://query/?{query}")).expect("query");
            for (key, value) in url.query_pairs() {
                fields.insert(key.into_owned(), Value::String(value.into_owned()));
            }
        }
        let text = |key: &str| fields.get(key).and_then(Value::as_str).unwrap_or_default();
        let string = |key: &str| text(key).to_owned();
        let flag = |key: &str| fields.get(key).and_then(Value::as_bool).unwrap_or(false);
        let mut grpc = self.grpc();
        let edges = |edges: Vec<String>, missing: Vec<String>, complete: bool| json!({"edges": edges, "missing": missing, "complete": complete});
        let reached = |r: v1::ReachedReply| {
            let mut answer = edges(r.edges, r.missing, r.complete);
            answer["connections"] = json!(r.connections);
            answer
        };
        let answer = match route {
            "/v1/disconnect" => {
                let request = v1::DisconnectRequest {
                    uid: string("uid"),
                    reason: string("reason"),
                };
                reached(grpc.disconnect(self.keyed(request)).await?.into_inner())
            }
            "/v1/logout" => {
                let request = v1::LogoutRequest { uid: string("uid") };
                reached(grpc.logout(self.keyed(request)).await?.into_inner())
            }
            "/v1/subscribe" => {
                let request = v1::SubscribeRequest {
                    uid: string("uid"),
                    topic: string("topic"),
                    public: flag("public"),
                    keep: flag("keep"),
                };
                reached(grpc.subscribe(self.keyed(request)).await?.into_inner())
            }
            "/v1/unsubscribe" => {
                let request = v1::UnsubscribeRequest {
                    uid: string("uid"),
                    topic: string("topic"),
                    public: flag("public"),
                };
                reached(grpc.unsubscribe(self.keyed(request)).await?.into_inner())
            }
            "/v1/presence" => {
                let request = v1::PresenceRequest {
                    topic: string("topic"),
                    uid: string("uid"),
                };
                let r = grpc.presence(self.keyed(request)).await?.into_inner();
                let mut answer = edges(r.edges, r.missing, r.complete);
                answer["topic"] = json!(r.topic);
                answer["users"] = json!(r.users);
                answer["anonymous"] = json!(r.anonymous);
                answer["connections"] = json!(r.connections);
                answer
            }
            "/v1/presence_stats" => {
                let request = v1::PresenceStatsRequest {
                    topic: string("topic"),
                };
                let r = grpc.presence_stats(self.keyed(request)).await?.into_inner();
                let mut answer = edges(r.edges, r.missing, r.complete);
                answer["topic"] = json!(r.topic);
                answer["users"] = json!(r.users);
                answer["anonymous"] = json!(r.anonymous);
                answer["connections"] = json!(r.connections);
                answer
            }
            "/v1/online" => {
                let uids = text("uid")
                    .split(',')
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect();
                let request = v1::OnlineRequest { uids };
                let r = grpc.online(self.keyed(request)).await?.into_inner();
                let mut answer = edges(r.edges, r.missing, r.complete);
                answer["online"] = json!(r.online);
                answer
            }
            "/v1/topics" => {
                let limit = text("limit");
                let request = v1::TopicsRequest {
                    prefix: string("prefix"),
                    limit: if limit.is_empty() {
                        0
                    } else {
                        limit.parse().expect("limit: a number")
                    },
                };
                let r = grpc.topics(self.keyed(request)).await?.into_inner();
                let topics: Vec<Value> = r
                    .topics
                    .into_iter()
                    .map(|t| json!({"topic": t.topic, "subscribers": t.subscribers}))
                    .collect();
                let mut answer = edges(r.edges, r.missing, r.complete);
                answer["topics"] = json!(topics);
                answer["truncated"] = json!(r.truncated);
                answer
            }
            other => panic!("{other}: not a server API call"),
        };
        Ok(answer)
    }

    /// Polls `GET /v1/edges` until `ok(body)` holds and returns the body.
    /// Panics after `within` with the last answer.
    pub async fn wait_edges(
        &self,
        within: Duration,
        what: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        crate::wait_for(within, format!("GET /v1/edges showing {what}"), || async {
            let reply = self.get("/v1/edges").await;
            if reply.status == 200 && ok(&reply.json()) {
                Ok(reply.json())
            } else {
                Err(format!("{} {}", reply.status, reply.body))
            }
        })
        .await
    }

    /// The node ids in a `/v1/edges` body, in its order.
    pub fn edge_ids(body: &Value) -> Vec<String> {
        body["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["node_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// Polls `GET <path>` until it answers `status`; panics after `within`.
    pub async fn wait_for_status(&self, path: &str, status: u16, within: Duration) {
        let url = format!("{}{path}", self.http_base);
        crate::wait_for(within, format!("GET {url} answering {status}"), || async {
            let got = tokio::time::timeout(Duration::from_secs(1), self.http.get(&url).send())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|r| r.status().as_u16());
            if got == Some(status) {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        })
        .await
    }
}

fn check_http(reply: &HttpReply) -> anyhow::Result<()> {
    anyhow::ensure!(reply.status == 200, "HTTP {}: {}", reply.status, reply.body);
    serde_json::from_str::<Value>(&reply.body)
        .map_err(|e| anyhow::anyhow!("HTTP 200 body is not JSON ({e}): {:?}", reply.body))?;
    Ok(())
}
