//! The server API over HTTP: steer a user's connections and ask who is
//! connected, across every edge (see [`gpush_common::control`]).
//!
//! | call | body / query | answer |
//! |---|---|---|
//! | `POST /v1/disconnect` | `{"uid","reason"?}` | `connections` closed (4003) |
//! | `POST /v1/logout` | `{"uid"}` | `connections` logged out (10004) |
//! | `POST /v1/subscribe` | `{"uid","topic","public"?,"keep"?}` | `connections` subscribed (10008) |
//! | `POST /v1/unsubscribe` | `{"uid","topic","public"?}` | `connections` unsubscribed (10009) |
//! | `GET /v1/presence` | `topic`, `uid`? | `users` {uid: connections}, `anonymous`, `connections` |
//! | `GET /v1/presence_stats` | `topic` | `users`, `connections`, `anonymous` counts |
//! | `GET /v1/online` | `uid=U1,U2,...` | `online` {uid: connections} |
//! | `GET /v1/topics` | `prefix`?, `limit`? | `topics` [{topic, subscribers}], `truncated` |
//!
//! Every answer also names the edges that answered (`edges`) and those
//! registered in etcd that did not within `control_timeout` (`missing`);
//! `complete` is true when every registered edge answered.

use crate::error::ApiError;
use crate::http::{AppState, Authorized, json_error};
use crate::metrics::Transport;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use gpush_common::control::{Command, DEFAULT_TOPICS_LIMIT, Gathered};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What every answer carries about the edges asked.
#[derive(Debug, Serialize)]
struct Edges {
    /// The edges that answered.
    edges: Vec<String>,
    /// Registered edges that did not answer within `control_timeout`.
    missing: Vec<String>,
    /// Every registered edge answered (false without etcd: the registered
    /// edges are unknown).
    complete: bool,
}

impl Edges {
    fn of(gathered: &Gathered) -> Self {
        Edges {
            edges: gathered.answers.keys().cloned().collect(),
            missing: gathered.missing.clone(),
            complete: gathered.missing.is_empty() && gathered.expected_known,
        }
    }
}

/// The answer to a call that steers connections.
#[derive(Debug, Serialize)]
pub(crate) struct Reached {
    code: &'static str,
    /// Connections told, on every edge that answered.
    connections: u64,
    #[serde(flatten)]
    edges: Edges,
}

/// Sends `command` to the edges: the registered ones are expected.
pub(crate) async fn gather(state: &AppState, command: Command) -> Result<Gathered, ApiError> {
    let expected = state.edges.list().map(|list| {
        list.edges
            .into_iter()
            .map(|edge| edge.node_id)
            .collect::<Vec<_>>()
    });
    state
        .api
        .control(command, expected)
        .await
        .map_err(|e| state.api.refused(Transport::Http, e))
}

async fn reached(state: &AppState, command: Command) -> Result<Json<Reached>, ApiError> {
    let gathered = gather(state, command).await?;
    Ok(Json(Reached {
        code: "ok",
        connections: gathered.reached(),
        edges: Edges::of(&gathered),
    }))
}

/// Reads a JSON body, refusing it as every push route does.
fn body<T>(state: &AppState, body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(body)| body).map_err(|r| {
        state
            .api
            .refused(Transport::Http, json_error(&state.api, r))
    })
}

/// Reads a query string.
fn query<T>(state: &AppState, query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(query)| query).map_err(|e| {
        state
            .api
            .refused(Transport::Http, ApiError::BadQuery(e.body_text()))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DisconnectBody {
    uid: String,
    #[serde(default)]
    reason: String,
}

/// `POST /v1/disconnect`: closes every connection of `uid` (4003).
pub(crate) async fn disconnect(
    State(state): State<AppState>,
    _: Authorized,
    request: Result<Json<DisconnectBody>, JsonRejection>,
) -> Result<Json<Reached>, ApiError> {
    let DisconnectBody { uid, reason } = body(&state, request)?;
    reached(&state, Command::Disconnect { uid, reason }).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogoutBody {
    uid: String,
}

/// `POST /v1/logout`: ends every login of `uid` (10004, reason `logout`).
pub(crate) async fn logout(
    State(state): State<AppState>,
    _: Authorized,
    request: Result<Json<LogoutBody>, JsonRejection>,
) -> Result<Json<Reached>, ApiError> {
    let LogoutBody { uid } = body(&state, request)?;
    reached(&state, Command::Logout { uid }).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscribeBody {
    uid: String,
    topic: String,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    keep: bool,
}

/// `POST /v1/subscribe`: subscribes every connection of `uid` (10008).
pub(crate) async fn subscribe(
    State(state): State<AppState>,
    _: Authorized,
    request: Result<Json<SubscribeBody>, JsonRejection>,
) -> Result<Json<Reached>, ApiError> {
    let SubscribeBody {
        uid,
        topic,
        public,
        keep,
    } = body(&state, request)?;
    let command = Command::Subscribe {
        uid,
        topic,
        public,
        keep,
    };
    reached(&state, command).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UnsubscribeBody {
    uid: String,
    topic: String,
    #[serde(default)]
    public: bool,
}

/// `POST /v1/unsubscribe`: unsubscribes every connection of `uid` (10009).
pub(crate) async fn unsubscribe(
    State(state): State<AppState>,
    _: Authorized,
    request: Result<Json<UnsubscribeBody>, JsonRejection>,
) -> Result<Json<Reached>, ApiError> {
    let UnsubscribeBody { uid, topic, public } = body(&state, request)?;
    reached(&state, Command::Unsubscribe { uid, topic, public }).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PresenceParams {
    topic: String,
    #[serde(default)]
    uid: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct Presence {
    code: &'static str,
    topic: String,
    /// uid -> connections subscribed, over every edge.
    users: BTreeMap<String, u64>,
    /// Connections subscribed without a login.
    anonymous: u64,
    /// Every subscribed connection.
    connections: u64,
    #[serde(flatten)]
    edges: Edges,
}

/// `GET /v1/presence?topic=T[&uid=U]`.
pub(crate) async fn presence(
    State(state): State<AppState>,
    _: Authorized,
    params: Result<Query<PresenceParams>, QueryRejection>,
) -> Result<Json<Presence>, ApiError> {
    let PresenceParams { topic, uid } = query(&state, params)?;
    let gathered = gather(
        &state,
        Command::Presence {
            topic: topic.clone(),
            uid,
        },
    )
    .await?;
    let (users, anonymous) = gathered.presence();
    Ok(Json(Presence {
        code: "ok",
        topic,
        connections: users.values().sum::<u64>() + anonymous,
        users,
        anonymous,
        edges: Edges::of(&gathered),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatsParams {
    topic: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct PresenceStats {
    code: &'static str,
    topic: String,
    /// Distinct users subscribed, over every edge.
    users: u64,
    /// Connections subscribed.
    connections: u64,
    /// Of them, without a login.
    anonymous: u64,
    #[serde(flatten)]
    edges: Edges,
}

/// `GET /v1/presence_stats?topic=T`: counts only.
pub(crate) async fn presence_stats(
    State(state): State<AppState>,
    _: Authorized,
    params: Result<Query<StatsParams>, QueryRejection>,
) -> Result<Json<PresenceStats>, ApiError> {
    let StatsParams { topic } = query(&state, params)?;
    let command = Command::Presence {
        topic: topic.clone(),
        uid: String::new(),
    };
    let gathered = gather(&state, command).await?;
    let (users, anonymous) = gathered.presence();
    Ok(Json(PresenceStats {
        code: "ok",
        topic,
        users: users.len() as u64,
        connections: users.values().sum::<u64>() + anonymous,
        anonymous,
        edges: Edges::of(&gathered),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OnlineParams {
    uid: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct Online {
    code: &'static str,
    /// uid -> connections logged in as it (0: offline).
    online: BTreeMap<String, u64>,
    #[serde(flatten)]
    edges: Edges,
}

/// `GET /v1/online?uid=U1,U2,...`.
pub(crate) async fn online(
    State(state): State<AppState>,
    _: Authorized,
    params: Result<Query<OnlineParams>, QueryRejection>,
) -> Result<Json<Online>, ApiError> {
    let OnlineParams { uid } = query(&state, params)?;
    let mut uids: Vec<String> = uid
        .split(',')
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    uids.sort();
    uids.dedup();
    let gathered = gather(&state, Command::Online { uids: uids.clone() }).await?;
    Ok(Json(Online {
        code: "ok",
        online: gathered.online(&uids),
        edges: Edges::of(&gathered),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicsParams {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct TopicCount {
    topic: String,
    subscribers: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Topics {
    code: &'static str,
    /// Busiest first.
    topics: Vec<TopicCount>,
    /// More topics matched than listed.
    truncated: bool,
    #[serde(flatten)]
    edges: Edges,
}

/// `GET /v1/topics[?prefix=P][&limit=L]`.
pub(crate) async fn topics(
    State(state): State<AppState>,
    _: Authorized,
    params: Result<Query<TopicsParams>, QueryRejection>,
) -> Result<Json<Topics>, ApiError> {
    let TopicsParams { prefix, limit } = query(&state, params)?;
    let limit = limit.unwrap_or(DEFAULT_TOPICS_LIMIT);
    let gathered = gather(&state, Command::Topics { prefix, limit }).await?;
    let (topics, truncated) = gathered.topics(limit);
    Ok(Json(Topics {
        code: "ok",
        topics: topics
            .into_iter()
            .map(|(topic, subscribers)| TopicCount { topic, subscribers })
            .collect(),
        truncated,
        edges: Edges::of(&gathered),
    }))
}
