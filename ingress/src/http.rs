//! The HTTP push API (axum).
//!
//! | Route | Answer |
//! |---|---|
//! | `POST /v1/pushData` `{"uid","topic","data"}` | `{"code":"ok","message":"ok","accepted":1}` |
//! | `POST /v1/pushBatch` `{"messages":[...]}` | `{"code":"ok","message":"ok","accepted":N}` |
//! | `GET /healthz` | `{"status":"ok"}` while the process runs |
//! | `GET /readyz` | 200 `{"status":"ok"}` when the bus is connected, else 503 |
//! | `GET /v1/edges` | `{"edges":[record...],"stale":bool}`, least loaded first |
//! | `GET /v1/connect` | `{"url","node_id","stale"}` of the least loaded edge |
//! | `GET /v1/stats` | `{"edges":[{"node_id","url","connections"}...],"total_connections","edge_count","stale"}` |
//! | `GET /metrics` | the push API's metrics, Prometheus text format |
//!
//! `uid` and `topic` default to `""`; `data` is required and is base64
//! (standard alphabet; padding optional; the URL-safe alphabet is accepted
//! too). Push bodies must be sent as `Content-Type: application/json`, which
//! also keeps a web page from posting to an unauthenticated local ingress
//! without a CORS preflight. Errors are `{"code","message"}` (see
//! [`ApiError`]). The body size limit is [`PushApi::request_limit`]: a full
//! batch, capped at 64 MiB. A batch is parsed with `max_batch` in hand and
//! refused at its `max_batch + 1`th message, before the rest is allocated.
//! A call that takes longer than `request_timeout` (a body sent too
//! slowly) is answered 408 `request_timeout`.
//!
//! Browsers may call these routes from the pages of the origins listed in
//! `push.cors_allowed_origins` (CORS, preflight included); with the list
//! empty no CORS header is sent and browsers refuse cross-origin calls.

use crate::api::PushApi;
use crate::control;
use crate::edges::{ClusterStats, Edges};
use crate::error::{ApiError, Field};
use crate::metrics::Transport;
use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::fmt;
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Standard alphabet, padding optional.
const STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
/// URL-safe alphabet, padding optional.
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) api: PushApi,
    pub(crate) edges: Edges,
}

/// How long a browser may cache a CORS preflight answer.
pub const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// The HTTP routes of the push API, publishing through `api` and listing
/// `edges`, with CORS for the API's `cors_allowed_origins`.
pub fn router(api: PushApi, edges: Edges) -> Router {
    let limit = api.request_limit();
    let cors = cors(&api.config().cors_allowed_origins);
    let router = Router::new()
        .route("/v1/pushData", post(push_data))
        .route("/v1/pushBatch", post(push_batch))
        .route("/v1/edges", get(list_edges))
        .route("/v1/connect", get(connect))
        .route("/v1/stats", get(stats))
        .route("/v1/history", get(history))
        .route(
            "/v1/disconnect",
            post(control::steer::<control::DisconnectBody>),
        )
        .route("/v1/logout", post(control::steer::<control::LogoutBody>))
        .route(
            "/v1/subscribe",
            post(control::steer::<control::SubscribeBody>),
        )
        .route(
            "/v1/unsubscribe",
            post(control::steer::<control::UnsubscribeBody>),
        )
        .route("/v1/presence", get(control::presence))
        .route("/v1/presence_stats", get(control::presence_stats))
        .route("/v1/online", get(control::online))
        .route("/v1/topics", get(control::topics))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::NotFound })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            within_request_timeout,
        ));
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.with_state(AppState { api, edges })
}

/// Answers 408 `request_timeout` when the call takes longer than
/// `request_timeout`, body included; the connection then closes, since
/// the rest of its body was not read.
async fn within_request_timeout(
    State(api): State<PushApi>,
    request: Request,
    next: Next,
) -> Response {
    let timeout = api.config().request_timeout;
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let secs = timeout.as_secs_f64().ceil() as u64;
            api.refused(Transport::Http, ApiError::RequestTimeout { secs })
                .into_response()
        }
    }
}

/// The CORS layer for `origins` (`"*"` alone: any origin), or `None` for
/// an empty list. Entries that are not header values are skipped; config
/// validation reports them before this runs.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([CONTENT_TYPE, AUTHORIZATION])
            .max_age(CORS_MAX_AGE),
    )
}

/// One message as sent over HTTP. An unknown key is refused (400 naming
/// it): read as absent, a misspelled `topic` or `uid` would turn a push to
/// one topic or user into a push to everyone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    topic: String,
    /// Base64.
    data: String,
}

/// The messages of a `POST /v1/pushBatch` body (`{"messages": [...]}`),
/// parsed with `max_batch` in hand: the `max_batch + 1`th message ends
/// the parse with `batch_too_large`, so a body of millions of tiny
/// messages never becomes millions of [`Message`]s. Parse errors name
/// the field path as axum's `Json` does (`messages[1].uid: ...`).
struct BatchBody(Vec<Message>);

impl FromRequest<AppState> for BatchBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(ApiError::BadJson(
                "expected `Content-Type: application/json`".into(),
            ));
        }
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::BodyTooLarge {
                        limit: state.api.request_limit(),
                    }
                } else {
                    ApiError::BadJson(rejection.body_text())
                }
            })?;
        parse_batch(&body, state.api.config().max_batch).map(BatchBody)
    }
}

/// Whether the request says its body is JSON (`application/json` or
/// `application/*+json`), as axum's `Json` requires.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let lower = subtype.to_ascii_lowercase();
    kind.eq_ignore_ascii_case("application") && (lower == "json" || lower.ends_with("+json"))
}

/// Parses a batch body, stopping at the `max_batch + 1`th message.
fn parse_batch(body: &[u8], max_batch: usize) -> Result<Vec<Message>, ApiError> {
    let over = Cell::new(false);
    let mut json = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let seed = BatchSeed(MessagesSeed {
        max_batch,
        over: &over,
    });
    let parsed = seed
        .deserialize(serde_path_to_error::Deserializer::new(
            &mut json, &mut track,
        ))
        .and_then(|messages| json.end().map(|()| messages));
    parsed.map_err(|error| {
        if over.get() {
            return ApiError::BatchTooLarge { max: max_batch };
        }
        let what = match error.classify() {
            serde_json::error::Category::Data => {
                "Failed to deserialize the JSON body into the target type"
            }
            _ => "Failed to parse the request body as JSON",
        };
        let error = serde_path_to_error::Error::new(track.path(), error);
        ApiError::BadJson(format!("{what}: {error}"))
    })
}

/// `{"messages": [...]}`, and nothing else.
struct BatchSeed<'a>(MessagesSeed<'a>);

impl<'de> DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = Vec<Message>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<Message>, D::Error> {
        d.deserialize_struct("Batch", &["messages"], self)
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_> {
    type Value = Vec<Message>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct Batch")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Message>, A::Error> {
        let mut messages = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "messages" {
                return Err(de::Error::unknown_field(&key, &["messages"]));
            }
            if messages.is_some() {
                return Err(de::Error::duplicate_field("messages"));
            }
            messages = Some(map.next_value_seed(self.0)?);
        }
        messages.ok_or_else(|| de::Error::missing_field("messages"))
    }
}

/// The `messages` array, at most `max_batch` long; `over` is set when
/// it is longer.
#[derive(Clone, Copy)]
struct MessagesSeed<'a> {
    max_batch: usize,
    over: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for MessagesSeed<'_> {
    type Value = Vec<Message>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<Message>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for MessagesSeed<'_> {
    type Value = Vec<Message>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of messages")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Message>, A::Error> {
        let mut messages = Vec::new();
        while let Some(message) = seq.next_element::<Message>()? {
            if messages.len() == self.max_batch {
                self.over.set(true);
                return Err(de::Error::custom(format_args!(
                    "more than {} messages",
                    self.max_batch
                )));
            }
            messages.push(message);
        }
        Ok(messages)
    }
}

/// The success body of both push routes.
#[derive(Debug, Serialize)]
struct Accepted {
    /// `"ok"`: the same type as the error codes, so clients can switch on it.
    code: &'static str,
    message: &'static str,
    accepted: usize,
    /// `pushData`: the push's history offset, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    /// `pushBatch`: each push's history offset (0: none), when any has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    offsets: Option<Vec<u64>>,
}

impl Accepted {
    /// The answer to `pushData`.
    fn one(offsets: Vec<u64>) -> Json<Self> {
        Json(Accepted {
            code: "ok",
            message: "ok",
            accepted: offsets.len(),
            offset: offsets.first().copied().filter(|&o| o > 0),
            offsets: None,
        })
    }

    /// The answer to `pushBatch`.
    fn many(offsets: Vec<u64>) -> Json<Self> {
        Json(Accepted {
            code: "ok",
            message: "ok",
            accepted: offsets.len(),
            offset: None,
            offsets: offsets.iter().any(|&o| o > 0).then_some(offsets),
        })
    }
}

/// Proof that the request carried the API key (or that none is needed).
/// Extracted before the body, so an unauthenticated caller is refused
/// without its body being read.
pub(crate) struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        state
            .api
            .authorize(header)
            .map(|()| Authorized)
            .map_err(|e| state.api.refused(Transport::Http, e))
    }
}

/// Turns an axum JSON rejection into our error: 413 for an over-long body,
/// otherwise 400 `bad_json` with axum's message, which names the field
/// (`messages[1].uid: invalid type ...`).
pub(crate) fn json_error(api: &PushApi, rejection: JsonRejection) -> ApiError {
    match rejection {
        r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge {
            limit: api.request_limit(),
        },
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::BadJson("expected `Content-Type: application/json`".into())
        }
        other => ApiError::BadJson(other.body_text()),
    }
}

fn decode(field: Field, data: &str) -> Result<Bytes, ApiError> {
    let engine = if data.contains(['-', '_']) {
        &URL_SAFE
    } else {
        &STANDARD
    };
    engine
        .decode(data)
        .map(Bytes::from)
        .map_err(|e| ApiError::BadBase64 {
            field,
            reason: e.to_string(),
        })
}

async fn push_data(
    State(state): State<AppState>,
    _: Authorized,
    body: Result<Json<Message>, JsonRejection>,
) -> Result<Json<Accepted>, ApiError> {
    let accepted = push_one(&state.api, body)
        .await
        .map_err(|e| state.api.refused(Transport::Http, e))?;
    Ok(Accepted::one(accepted))
}

async fn push_one(
    api: &PushApi,
    body: Result<Json<Message>, JsonRejection>,
) -> Result<Vec<u64>, ApiError> {
    let Json(m) = body.map_err(|r| json_error(api, r))?;
    let data = decode(Field::new(None, "data"), &m.data)?;
    let push = api.check(None, m.uid, m.topic, data)?;
    api.publish(Transport::Http, std::slice::from_ref(&push))
        .await
}

async fn push_batch(
    State(state): State<AppState>,
    _: Authorized,
    body: Result<BatchBody, ApiError>,
) -> Result<Json<Accepted>, ApiError> {
    let accepted = push_many(&state.api, body)
        .await
        .map_err(|e| state.api.refused(Transport::Http, e))?;
    Ok(Accepted::many(accepted))
}

async fn push_many(api: &PushApi, body: Result<BatchBody, ApiError>) -> Result<Vec<u64>, ApiError> {
    let BatchBody(messages) = body?;
    api.check_batch_len(messages.len())?;
    let pushes = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let data = decode(Field::new(Some(i), "data"), &m.data)?;
            api.check(Some(i), m.uid, m.topic, data)
        })
        .collect::<Result<Vec<_>, _>>()?;
    api.publish(Transport::Http, &pushes).await
}

#[derive(Debug, Serialize)]
struct Health {
    status: &'static str,
}

async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.api.bus().is_ready() {
        Json(Health { status: "ok" }).into_response()
    } else {
        let body = Json(Health {
            status: "bus not connected",
        });
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn list_edges(State(state): State<AppState>) -> Result<Response, ApiError> {
    let list = state.edges.list().ok_or(ApiError::EdgesNotConfigured)?;
    Ok(Json(list).into_response())
}

/// `GET /v1/history` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    #[serde(default)]
    topic: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    since: u64,
    limit: Option<usize>,
}

/// One kept push in a history answer.
#[derive(Debug, Serialize)]
struct HistoryPush {
    offset: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    uid: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    topic: String,
    /// base64, as in `pushData`.
    data: String,
}

#[derive(Debug, Serialize)]
struct HistoryBody {
    code: &'static str,
    epoch: String,
    offset: u64,
    complete: bool,
    pushes: Vec<HistoryPush>,
}

/// `GET /v1/history?topic=T[&uid=U]&since=N&limit=L`: the stream's epoch
/// and last offset, and the pushes it keeps after `since` (data base64).
async fn history(
    State(state): State<AppState>,
    _: Authorized,
    params: Result<axum::extract::Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HistoryBody>, ApiError> {
    let axum::extract::Query(params) = params.map_err(|e| ApiError::BadQuery(e.body_text()))?;
    let query = gpush_common::bus::HistoryQuery {
        uid: params.uid,
        topic: params.topic,
        since: params.since,
        limit: params.limit.unwrap_or(crate::api::DEFAULT_HISTORY_LIMIT),
    };
    let page = state.api.history(query).await?;
    Ok(Json(HistoryBody {
        code: "ok",
        epoch: page.epoch,
        offset: page.offset,
        complete: page.complete,
        pushes: page
            .entries
            .into_iter()
            .map(|entry| HistoryPush {
                offset: entry.offset,
                uid: entry.push.uid,
                topic: entry.push.topic,
                data: base64::engine::general_purpose::STANDARD.encode(&entry.push.data),
            })
            .collect(),
    }))
}

/// `GET /v1/stats`: connections per edge and in total, from etcd.
async fn stats(State(state): State<AppState>) -> Result<Json<ClusterStats>, ApiError> {
    let list = state.edges.list().ok_or(ApiError::EdgesNotConfigured)?;
    Ok(Json(list.stats()))
}

/// `GET /metrics`: the push API's metrics in the Prometheus text format.
async fn metrics(State(state): State<AppState>) -> Response {
    match state.api.render_metrics() {
        Ok(text) => ([(CONTENT_TYPE, gpush_common::metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[derive(Debug, Serialize)]
struct Connect {
    url: String,
    node_id: String,
    /// True when etcd is unreachable and the choice is from the last
    /// known list.
    stale: bool,
}

async fn connect(State(state): State<AppState>) -> Result<Json<Connect>, ApiError> {
    let pick = state.edges.pick().ok_or(ApiError::EdgesNotConfigured)?;
    let edge = pick.edge.ok_or(ApiError::NoEdges)?;
    Ok(Json(Connect {
        url: edge.url,
        node_id: edge.node_id,
        stale: pick.stale,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PushApiConfig;
    use axum::body::Body;
    use axum::http::{Request, header};
    use gpush_common::registry::EdgeRecord;
    use gpush_common::{Bus, LocalDelivery, Push, Route};
    use http_body_util::BodyExt;
    use serde_json::{Value, json};
    use std::sync::{Arc, Mutex};
    use tower::ServiceExt;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Push>>);

    impl LocalDelivery for Recorder {
        fn deliver(&self, push: &Push) {
            self.0.lock().expect("lock").push(push.clone());
        }
    }

    impl Recorder {
        fn taken(&self) -> Vec<Push> {
            std::mem::take(&mut *self.0.lock().expect("lock"))
        }
    }

    fn config() -> PushApiConfig {
        PushApiConfig {
            max_payload: 8,
            max_batch: 3,
            max_name_len: 16,
            ..PushApiConfig::default()
        }
    }

    fn server(config: PushApiConfig, edges: Edges) -> (Router, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let api = PushApi::new(Bus::Local(recorder.clone()), config);
        (router(api, edges), recorder)
    }

    async fn call(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, json)
    }

    fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
        Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.into())
            .expect("request")
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).expect("request")
    }

    async fn post_json(app: &Router, path: &str, body: Value) -> (StatusCode, Value) {
        call(app, post(path, body.to_string())).await
    }

    /// Asserts a 400 with `code` whose message mentions `field`.
    fn assert_bad(reply: (StatusCode, Value), code: &str, field: &str) {
        let (status, body) = reply;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["code"], code, "{body}");
        let message = body["message"].as_str().expect("message");
        assert!(message.contains(field), "{message:?} should name {field:?}");
    }

    #[tokio::test]
    async fn push_data_publishes_one_push() {
        let (app, rec) = server(config(), Edges::Disabled);
        let reply = post_json(
            &app,
            "/v1/pushData",
            json!({"uid": "u1", "topic": "t.1", "data": "aGk="}),
        )
        .await;
        assert_eq!(
            reply,
            (
                StatusCode::OK,
                json!({"code": "ok", "message": "ok", "accepted": 1})
            )
        );
        let pushes = rec.taken();
        assert_eq!(pushes.len(), 1);
        let p = &pushes[0];
        assert_eq!(
            (p.uid.as_str(), p.topic.as_str(), &p.data[..]),
            ("u1", "t.1", &b"hi"[..])
        );
        assert!(p.sent_at_us > 0);
    }

    #[tokio::test]
    async fn routes_follow_empty_fields() {
        let (app, rec) = server(config(), Edges::Disabled);
        for body in [
            json!({"data": ""}),
            json!({"topic": "news", "data": ""}),
            json!({"uid": "7", "data": ""}),
            json!({"uid": "7", "topic": "inbox", "data": ""}),
        ] {
            assert_eq!(
                post_json(&app, "/v1/pushData", body).await.0,
                StatusCode::OK
            );
        }
        let pushes = rec.taken();
        let routes: Vec<Route<'_>> = pushes.iter().map(Push::route).collect();
        assert_eq!(
            routes,
            [
                Route::Everyone,
                Route::Topic("news"),
                Route::User {
                    uid: "7",
                    topic: None
                },
                Route::User {
                    uid: "7",
                    topic: Some("inbox")
                },
            ]
        );
    }

    #[tokio::test]
    async fn base64_variants() {
        let (app, rec) = server(config(), Edges::Disabled);
        // "\xfb\xff" is "+/8=" in standard and "-_8" in URL-safe base64.
        for data in ["+/8=", "+/8", "-_8="] {
            let reply = post_json(&app, "/v1/pushData", json!({"data": data})).await;
            assert_eq!(reply.0, StatusCode::OK, "{data}: {}", reply.1);
        }
        let pushes = rec.taken();
        assert!(pushes.iter().all(|p| p.data[..] == b"\xfb\xff"[..]));
        assert_bad(
            post_json(&app, "/v1/pushData", json!({"data": "not base64!"})).await,
            "bad_base64",
            "data",
        );
        assert!(rec.taken().is_empty());
    }

    #[tokio::test]
    async fn bad_requests_name_the_field() {
        let (app, rec) = server(config(), Edges::Disabled);
        let bad =
            |uid: &str, topic: &str, data: &str| json!({"uid": uid, "topic": topic, "data": data});
        assert_bad(
            post_json(&app, "/v1/pushData", bad("", "a\nb", "")).await,
            "invalid_topic",
            "topic",
        );
        assert_bad(
            post_json(&app, "/v1/pushData", bad("", &"x".repeat(17), "")).await,
            "invalid_topic",
            "topic: is 17 bytes long",
        );
        assert_bad(
            post_json(&app, "/v1/pushData", bad("u\0", "", "")).await,
            "invalid_uid",
            "uid",
        );
        // 9 bytes, the maximum is 8.
        assert_bad(
            post_json(&app, "/v1/pushData", bad("", "", "MTIzNDU2Nzg5")).await,
            "payload_too_large",
            "data",
        );
        assert_bad(
            call(&app, post("/v1/pushData", "{not json")).await,
            "bad_json",
            "",
        );
        assert_bad(
            post_json(&app, "/v1/pushData", json!({"topic": "t"})).await,
            "bad_json",
            "data",
        );
        assert_bad(
            post_json(&app, "/v1/pushData", json!({"topic": 5, "data": ""})).await,
            "bad_json",
            "topic",
        );
        let untyped = Request::post("/v1/pushData")
            .body(Body::from(r#"{"data":""}"#))
            .expect("request");
        assert_bad(call(&app, untyped).await, "bad_json", "Content-Type");
        assert!(rec.taken().is_empty());
    }

    #[tokio::test]
    async fn batch_is_published_in_order() {
        let (app, rec) = server(config(), Edges::Disabled);
        let messages: Vec<Value> = ["MQ==", "Mg==", "Mw=="]
            .iter()
            .map(|d| json!({"topic": "t", "data": d}))
            .collect();
        let reply = post_json(&app, "/v1/pushBatch", json!({ "messages": messages })).await;
        assert_eq!(
            reply,
            (
                StatusCode::OK,
                json!({"code": "ok", "message": "ok", "accepted": 3})
            )
        );
        let data: Vec<_> = rec.taken().into_iter().map(|p| p.data).collect();
        assert_eq!(data, [&b"1"[..], b"2", b"3"]);
    }

    #[tokio::test]
    async fn one_bad_message_refuses_the_whole_batch() {
        let (app, rec) = server(config(), Edges::Disabled);
        let batch = json!({"messages": [
            {"topic": "ok", "data": ""},
            {"topic": "a\u{7}b", "data": ""},
        ]});
        assert_bad(
            post_json(&app, "/v1/pushBatch", batch).await,
            "invalid_topic",
            "messages[1].topic: contains a control character",
        );
        let batch = json!({"messages": [{"data": ""}, {"data": ""}, {"data": "%%"}]});
        assert_bad(
            post_json(&app, "/v1/pushBatch", batch).await,
            "bad_base64",
            "messages[2].data",
        );
        let batch = json!({"messages": [{"data": ""}, {"uid": 1, "data": ""}]});
        assert_bad(
            post_json(&app, "/v1/pushBatch", batch).await,
            "bad_json",
            "messages[1].uid",
        );
        assert_bad(
            post_json(&app, "/v1/pushBatch", json!({"messages": []})).await,
            "empty_batch",
            "messages",
        );
        let four = json!({"messages": [{"data": ""}, {"data": ""}, {"data": ""}, {"data": ""}]});
        assert_bad(
            post_json(&app, "/v1/pushBatch", four).await,
            "batch_too_large",
            "messages",
        );
        assert!(rec.taken().is_empty());
    }

    #[tokio::test]
    async fn a_batch_stops_at_max_batch_plus_one() {
        let (app, rec) = server(config(), Edges::Disabled);
        // The fourth message ends the parse: what follows is never read.
        let body = r#"{"messages":[{"data":""},{"data":""},{"data":""},{"data":""},oops"#;
        assert_bad(
            call(&app, post("/v1/pushBatch", body)).await,
            "batch_too_large",
            "more than 3 messages",
        );
        let body = json!({"messages": [{"data": ""}, {"Uid": "u", "data": ""}]});
        assert_bad(
            post_json(&app, "/v1/pushBatch", body).await,
            "bad_json",
            "messages[1].Uid: unknown field",
        );
        let body = json!({"messages": [{"data": ""}], "extra": 1});
        assert_bad(
            post_json(&app, "/v1/pushBatch", body).await,
            "bad_json",
            "unknown field `extra`",
        );
        assert_bad(
            post_json(&app, "/v1/pushBatch", json!({})).await,
            "bad_json",
            "missing field `messages`",
        );
        assert_bad(
            call(&app, post("/v1/pushBatch", r#"{"messages":[]} x"#)).await,
            "bad_json",
            "trailing characters",
        );
        let untyped = Request::post("/v1/pushBatch")
            .body(Body::from(r#"{"messages":[{"data":""}]}"#))
            .expect("request");
        assert_bad(call(&app, untyped).await, "bad_json", "Content-Type");
        let typed = Request::post("/v1/pushBatch")
            .header(
                header::CONTENT_TYPE,
                "application/vnd.api+json; charset=utf-8",
            )
            .body(Body::from(r#"{"messages":[{"data":""}]}"#))
            .expect("request");
        assert_eq!(call(&app, typed).await.0, StatusCode::OK);
        assert_eq!(rec.taken().len(), 1);
    }

    #[tokio::test]
    async fn api_key_is_required_when_configured() {
        let config = PushApiConfig {
            api_key: Some("s3cret".into()),
            ..config()
        };
        let (app, rec) = server(config, Edges::Disabled);
        let body = r#"{"data":"aGk="}"#;
        for auth in [None, Some("Bearer wrong"), Some("s3cret")] {
            let mut request = post("/v1/pushData", body);
            if let Some(auth) = auth {
                request
                    .headers_mut()
                    .insert(header::AUTHORIZATION, auth.parse().expect("header"));
            }
            let (status, json) = call(&app, request).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
            assert_eq!(json["code"], "unauthorized");
        }
        // Refused before the body is even parsed.
        let mut garbage = post("/v1/pushBatch", "{");
        garbage.headers_mut().insert(
            header::AUTHORIZATION,
            "Bearer nope".parse().expect("header"),
        );
        assert_eq!(call(&app, garbage).await.0, StatusCode::UNAUTHORIZED);
        assert!(rec.taken().is_empty());
        // The server API too, before its body or query is read.
        for path in [
            "/v1/disconnect",
            "/v1/logout",
            "/v1/subscribe",
            "/v1/unsubscribe",
        ] {
            let (status, json) = call(&app, post(path, r#"{"uid":"u","topic":"t"}"#)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(json["code"], "unauthorized", "{path}");
        }
        for path in [
            "/v1/presence?topic=t",
            "/v1/presence_stats?topic=t",
            "/v1/online?uid=u",
            "/v1/topics",
        ] {
            let (status, json) = call(&app, get(path)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(json["code"], "unauthorized", "{path}");
        }

        let mut request = post("/v1/pushData", body);
        request.headers_mut().insert(
            header::AUTHORIZATION,
            "Bearer s3cret".parse().expect("header"),
        );
        assert_eq!(call(&app, request).await.0, StatusCode::OK);
        assert_eq!(rec.taken().len(), 1);
    }

    #[tokio::test]
    async fn oversized_body_is_413() {
        let (app, rec) = server(config(), Edges::Disabled);
        let body = format!(r#"{{"data":"{}"}}"#, "A".repeat(1 << 20));
        let (status, json) = call(&app, post("/v1/pushData", body)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(json["code"], "body_too_large");
        assert!(rec.taken().is_empty());
    }

    #[tokio::test]
    async fn health_and_readiness() {
        let (app, _) = server(config(), Edges::Disabled);
        assert_eq!(
            call(&app, get("/healthz")).await,
            (StatusCode::OK, json!({"status": "ok"}))
        );
        assert_eq!(
            call(&app, get("/readyz")).await,
            (StatusCode::OK, json!({"status": "ok"}))
        );
        let (status, json) = call(&app, get("/nope")).await;
        assert_eq!(
            (status, json["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
    }

    #[tokio::test]
    async fn disconnected_bus_is_503() {
        // Nothing listens on port 1: the client stays disconnected.
        let client = gpush_common::bus::connect_nats(&["nats://127.0.0.1:1".into()], "test")
            .await
            .expect("client");
        let bus = Bus::Nats(gpush_common::bus::NatsBus::new(
            client,
            gpush_common::Subjects::default(),
            std::time::Duration::from_millis(100),
            gpush_common::bus::Ack::default(),
        ));
        let app = router(PushApi::new(bus, config()), Edges::Disabled);
        assert_eq!(
            call(&app, get("/readyz")).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "bus not connected"})
            )
        );
        assert_eq!(call(&app, get("/healthz")).await.0, StatusCode::OK);
        let (status, json) = post_json(&app, "/v1/pushData", json!({"data": ""})).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json["code"], "bus_unavailable");
        // Validation still comes first.
        let reply = post_json(&app, "/v1/pushData", json!({"topic": "\n", "data": ""})).await;
        assert_bad(reply, "invalid_topic", "topic");
    }

    #[tokio::test]
    async fn cors_follows_the_allowed_origins() {
        let preflight = |origin: &str| {
            Request::options("/v1/pushData")
                .header(header::ORIGIN, origin)
                .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
                .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
                .body(Body::empty())
                .expect("request")
        };
        let allowed = |response: &Response| {
            response
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .map(|v| v.to_str().expect("ASCII").to_owned())
        };
        let page = "http://localhost:9992";

        // No origins configured: no CORS headers at all.
        let (app, _) = server(config(), Edges::Disabled);
        let response = app.clone().oneshot(preflight(page)).await.expect("call");
        assert_eq!(allowed(&response), None);

        let listed = PushApiConfig {
            cors_allowed_origins: vec![page.to_owned()],
            ..config()
        };
        let (app, rec) = server(listed, Edges::Disabled);
        let response = app.clone().oneshot(preflight(page)).await.expect("call");
        assert!(response.status().is_success(), "{}", response.status());
        assert_eq!(allowed(&response).as_deref(), Some(page));
        let methods = response.headers()[header::ACCESS_CONTROL_ALLOW_METHODS]
            .to_str()
            .expect("ASCII")
            .to_owned();
        assert!(methods.contains("POST"), "{methods}");
        let response = app
            .clone()
            .oneshot(preflight("http://evil.example"))
            .await
            .expect("call");
        assert_eq!(allowed(&response), None);
        // The actual call carries the header too, and is published.
        let mut push = post("/v1/pushData", r#"{"topic":"t","data":"aGk="}"#);
        push.headers_mut()
            .insert(header::ORIGIN, HeaderValue::from_static(page));
        let response = app.clone().oneshot(push).await.expect("call");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(allowed(&response).as_deref(), Some(page));
        assert_eq!(rec.taken().len(), 1);

        let any = PushApiConfig {
            cors_allowed_origins: vec!["*".to_owned()],
            ..config()
        };
        let (app, _) = server(any, Edges::Disabled);
        let response = app
            .clone()
            .oneshot(preflight("http://anywhere.example"))
            .await
            .expect("call");
        assert_eq!(allowed(&response).as_deref(), Some("*"));
    }

    /// A single edge with three connections, as a standalone edge
    /// describes itself.
    struct Solo;

    impl crate::edges::EdgeDirectory for Solo {
        fn list(&self) -> crate::edges::EdgeList {
            crate::edges::EdgeList {
                edges: vec![solo_record()],
                stale: false,
            }
        }

        fn pick(&self) -> crate::edges::Pick {
            crate::edges::Pick {
                edge: Some(solo_record()),
                stale: false,
            }
        }
    }

    fn solo_record() -> EdgeRecord {
        EdgeRecord {
            node_id: "solo".into(),
            url: "ws://127.0.0.1:9992/ws".into(),
            connections: 3,
            started_at: 1,
            updated_at: 2,
        }
    }

    fn solo_edge() -> Edges {
        Edges::from_directory(Solo)
    }

    #[tokio::test]
    async fn edges_endpoints() {
        let (app, _) = server(config(), Edges::Disabled);
        for path in ["/v1/edges", "/v1/connect"] {
            let (status, json) = call(&app, get(path)).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(json["code"], "etcd_not_configured");
        }
        let (app, _) = server(config(), solo_edge());
        let (status, json) = call(&app, get("/v1/edges")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json["stale"], false);
        assert_eq!(json["edges"][0]["connections"], 3);
        let (status, json) = call(&app, get("/v1/connect")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            json,
            json!({"url": "ws://127.0.0.1:9992/ws", "node_id": "solo", "stale": false})
        );
    }

    #[tokio::test]
    async fn stats_endpoint() {
        let (app, _) = server(config(), Edges::Disabled);
        let (status, json) = call(&app, get("/v1/stats")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json["code"], "etcd_not_configured");
        let (app, _) = server(config(), solo_edge());
        let (status, json) = call(&app, get("/v1/stats")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            json,
            json!({
                "edges": [{"node_id": "solo", "url": "ws://127.0.0.1:9992/ws", "connections": 3}],
                "total_connections": 3,
                "edge_count": 1,
                "stale": false,
            })
        );
    }

    #[tokio::test]
    async fn metrics_count_pushes_and_refusals() {
        let (app, _) = server(config(), Edges::Disabled);
        post_json(&app, "/v1/pushData", json!({"topic": "t", "data": ""})).await;
        post_json(
            &app,
            "/v1/pushBatch",
            json!({"messages": [{"data": ""}, {"uid": "u", "data": ""}]}),
        )
        .await;
        post_json(&app, "/v1/pushData", json!({"topic": "a\nb", "data": ""})).await;
        call(&app, post("/v1/pushBatch", "{not json")).await;
        let response = app.clone().oneshot(get("/metrics")).await.expect("call");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            gpush_common::metrics::CONTENT_TYPE
        );
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let text = String::from_utf8(body.to_vec()).expect("utf-8");
        for line in [
            r#"gpush_ingress_pushes_total{kind="topic",api="http"} 1"#,
            r#"gpush_ingress_pushes_total{kind="everyone",api="http"} 1"#,
            r#"gpush_ingress_pushes_total{kind="user",api="http"} 1"#,
            r#"gpush_ingress_pushes_total{kind="user",api="grpc"} 0"#,
            r#"gpush_ingress_push_errors_total{api="http",reason="invalid_topic"} 1"#,
            r#"gpush_ingress_push_errors_total{api="http",reason="bad_json"} 1"#,
            "gpush_ingress_publish_batch_messages_count 2",
            "gpush_ingress_publish_batch_messages_sum 3.0",
            "gpush_ingress_publish_seconds_count 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
    }
}
