//! The server API: steer a user's connections and ask who is connected,
//! across every edge (see [`gpush_common::control`]); the HTTP routes here,
//! the same calls over gRPC in `crate::grpc`.
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
//!
//! gRPC serves the same calls (`gpush.v1.Push/Disconnect` ...
//! `/Topics`, see `crate::grpc`): both transports go through [`Control`],
//! which checks a call, asks the edges and merges their answers into the
//! answer types below; each transport only reads its request and writes
//! the answer in its own encoding.

use crate::api::PushApi;
use crate::edges::Edges;
use crate::error::ApiError;
use crate::http::{AppState, Authorized, json_error};
use crate::metrics::Transport;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use gpush_common::control::{Command, DEFAULT_TOPICS_LIMIT, Gathered};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What every answer carries about the edges asked.
#[derive(Debug, Serialize)]
pub(crate) struct EdgesAsked {
    /// The edges that answered.
    pub(crate) edges: Vec<String>,
    /// Registered edges that did not answer within `control_timeout`.
    pub(crate) missing: Vec<String>,
    /// Every registered edge answered (false without etcd: the registered
    /// edges are unknown).
    pub(crate) complete: bool,
}

impl EdgesAsked {
    fn of(gathered: &Gathered) -> Self {
        EdgesAsked {
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
    pub(crate) connections: u64,
    #[serde(flatten)]
    pub(crate) edges: EdgesAsked,
}

/// The answer to a presence call.
#[derive(Debug, Serialize)]
pub(crate) struct Presence {
    code: &'static str,
    pub(crate) topic: String,
    /// uid -> connections subscribed, over every edge.
    pub(crate) users: BTreeMap<String, u64>,
    /// Connections subscribed without a login.
    pub(crate) anonymous: u64,
    /// Every subscribed connection.
    pub(crate) connections: u64,
    #[serde(flatten)]
    pub(crate) edges: EdgesAsked,
}

/// The answer to a presence_stats call.
#[derive(Debug, Serialize)]
pub(crate) struct PresenceStats {
    code: &'static str,
    pub(crate) topic: String,
    /// Distinct users subscribed, over every edge.
    pub(crate) users: u64,
    /// Connections subscribed.
    pub(crate) connections: u64,
    /// Of them, without a login.
    pub(crate) anonymous: u64,
    #[serde(flatten)]
    pub(crate) edges: EdgesAsked,
}

/// The answer to an online call.
#[derive(Debug, Serialize)]
pub(crate) struct Online {
    code: &'static str,
    /// uid -> connections logged in as it (0: offline).
    pub(crate) online: BTreeMap<String, u64>,
    #[serde(flatten)]
    pub(crate) edges: EdgesAsked,
}

/// One topic of a topics answer.
#[derive(Debug, Serialize)]
pub(crate) struct TopicCount {
    pub(crate) topic: String,
    pub(crate) subscribers: u64,
}

/// The answer to a topics call.
#[derive(Debug, Serialize)]
pub(crate) struct Topics {
    code: &'static str,
    /// Busiest first.
    pub(crate) topics: Vec<TopicCount>,
    /// More topics matched than listed.
    pub(crate) truncated: bool,
    #[serde(flatten)]
    pub(crate) edges: EdgesAsked,
}

/// The server API, whatever the transport: checks a call (through
/// [`PushApi::control`]), sends it to every edge, the registered ones
/// expected, and merges the answers. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Control {
    api: PushApi,
    edges: Edges,
}

impl Control {
    /// The server API of `api`, expecting the edges `edges` lists.
    pub(crate) fn new(api: PushApi, edges: Edges) -> Self {
        Self { api, edges }
    }

    /// Sends `command` to the edges; a refusal is counted for `transport`.
    async fn gather(&self, transport: Transport, command: Command) -> Result<Gathered, ApiError> {
        let expected = self.edges.list().map(|list| {
            list.edges
                .into_iter()
                .map(|edge| edge.node_id)
                .collect::<Vec<_>>()
        });
        self.api
            .control(command, expected)
            .await
            .map_err(|e| self.api.refused(transport, e))
    }

    /// Disconnect, logout, subscribe or unsubscribe: connections reached.
    pub(crate) async fn reached(
        &self,
        transport: Transport,
        command: Command,
    ) -> Result<Reached, ApiError> {
        let gathered = self.gather(transport, command).await?;
        Ok(Reached {
            code: "ok",
            connections: gathered.reached(),
            edges: EdgesAsked::of(&gathered),
        })
    }

    /// The users subscribed to `topic` (only `uid` when not empty).
    pub(crate) async fn presence(
        &self,
        transport: Transport,
        topic: String,
        uid: String,
    ) -> Result<Presence, ApiError> {
        let command = Command::Presence {
            topic: topic.clone(),
            uid,
        };
        let gathered = self.gather(transport, command).await?;
        let (users, anonymous) = gathered.presence();
        Ok(Presence {
            code: "ok",
            topic,
            connections: users.values().sum::<u64>() + anonymous,
            users,
            anonymous,
            edges: EdgesAsked::of(&gathered),
        })
    }

    /// `topic`'s subscribers, counted.
    pub(crate) async fn presence_stats(
        &self,
        transport: Transport,
        topic: String,
    ) -> Result<PresenceStats, ApiError> {
        let command = Command::Presence {
            topic: topic.clone(),
            uid: String::new(),
        };
        let gathered = self.gather(transport, command).await?;
        let (users, anonymous) = gathered.presence();
        Ok(PresenceStats {
            code: "ok",
            topic,
            users: users.len() as u64,
            connections: users.values().sum::<u64>() + anonymous,
            anonymous,
            edges: EdgesAsked::of(&gathered),
        })
    }

    /// Connections of each of `uids` (duplicates asked once).
    pub(crate) async fn online(
        &self,
        transport: Transport,
        mut uids: Vec<String>,
    ) -> Result<Online, ApiError> {
        uids.sort();
        uids.dedup();
        let gathered = self
            .gather(transport, Command::Online { uids: uids.clone() })
            .await?;
        Ok(Online {
            code: "ok",
            online: gathered.online(&uids),
            edges: EdgesAsked::of(&gathered),
        })
    }

    /// Topics starting with `prefix`, busiest first, at most `limit`
    /// (None: [`DEFAULT_TOPICS_LIMIT`]).
    pub(crate) async fn topics(
        &self,
        transport: Transport,
        prefix: String,
        limit: Option<usize>,
    ) -> Result<Topics, ApiError> {
        let limit = limit.unwrap_or(DEFAULT_TOPICS_LIMIT);
        let gathered = self
            .gather(transport, Command::Topics { prefix, limit })
            .await?;
        let (topics, truncated) = gathered.topics(limit);
        Ok(Topics {
            code: "ok",
            topics: topics
                .into_iter()
                .map(|(topic, subscribers)| TopicCount { topic, subscribers })
                .collect(),
            truncated,
            edges: EdgesAsked::of(&gathered),
        })
    }
}

/// The server API of an HTTP call.
fn control(state: &AppState) -> Control {
    Control::new(state.api.clone(), state.edges.clone())
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

/// `POST /v1/disconnect`, `/v1/logout`, `/v1/subscribe`,
/// `/v1/unsubscribe`: the command of the body `B` to every edge; the
/// connections it reached.
pub(crate) async fn steer<B>(
    State(state): State<AppState>,
    _: Authorized,
    request: Result<Json<B>, JsonRejection>,
) -> Result<Json<Reached>, ApiError>
where
    B: DeserializeOwned + Into<Command>,
{
    let command = body(&state, request)?.into();
    control(&state)
        .reached(Transport::Http, command)
        .await
        .map(Json)
}

/// `POST /v1/disconnect`: closes every connection of `uid` (4003).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DisconnectBody {
    uid: String,
    #[serde(default)]
    reason: String,
}

impl From<DisconnectBody> for Command {
    fn from(DisconnectBody { uid, reason }: DisconnectBody) -> Self {
        Command::Disconnect { uid, reason }
    }
}

/// `POST /v1/logout`: ends every login of `uid` (10004, reason `logout`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogoutBody {
    uid: String,
}

impl From<LogoutBody> for Command {
    fn from(LogoutBody { uid }: LogoutBody) -> Self {
        Command::Logout { uid }
    }
}

/// `POST /v1/subscribe`: subscribes every connection of `uid` (10008).
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

impl From<SubscribeBody> for Command {
    fn from(body: SubscribeBody) -> Self {
        let SubscribeBody {
            uid,
            topic,
            public,
            keep,
        } = body;
        Command::Subscribe {
            uid,
            topic,
            public,
            keep,
        }
    }
}

/// `POST /v1/unsubscribe`: unsubscribes every connection of `uid` (10009).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UnsubscribeBody {
    uid: String,
    topic: String,
    #[serde(default)]
    public: bool,
}

impl From<UnsubscribeBody> for Command {
    fn from(UnsubscribeBody { uid, topic, public }: UnsubscribeBody) -> Self {
        Command::Unsubscribe { uid, topic, public }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PresenceParams {
    topic: String,
    #[serde(default)]
    uid: String,
}

/// `GET /v1/presence?topic=T[&uid=U]`.
pub(crate) async fn presence(
    State(state): State<AppState>,
    _: Authorized,
    params: Result<Query<PresenceParams>, QueryRejection>,
) -> Result<Json<Presence>, ApiError> {
    let PresenceParams { topic, uid } = query(&state, params)?;
    control(&state)
        .presence(Transport::Http, topic, uid)
        .await
        .map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatsParams {
    topic: String,
}

/// `GET /v1/presence_stats?topic=T`: counts only.
pub(crate) async fn presence_stats(
    State(state): State<AppState>,
    _: Authorized,
    params: Result<Query<StatsParams>, QueryRejection>,
) -> Result<Json<PresenceStats>, ApiError> {
    let StatsParams { topic } = query(&state, params)?;
    control(&state)
        .presence_stats(Transport::Http, topic)
        .await
        .map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OnlineParams {
    uid: String,
}

/// `GET /v1/online?uid=U1,U2,...`.
pub(crate) async fn online(
    State(state): State<AppState>,
    _: Authorized,
    params: Result<Query<OnlineParams>, QueryRejection>,
) -> Result<Json<Online>, ApiError> {
    let OnlineParams { uid } = query(&state, params)?;
    let uids = uid
        .split(',')
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    control(&state)
        .online(Transport::Http, uids)
        .await
        .map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicsParams {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
}

/// `GET /v1/topics[?prefix=P][&limit=L]`.
pub(crate) async fn topics(
    State(state): State<AppState>,
    _: Authorized,
    params: Result<Query<TopicsParams>, QueryRejection>,
) -> Result<Json<Topics>, ApiError> {
    let TopicsParams { prefix, limit } = query(&state, params)?;
    control(&state)
        .topics(Transport::Http, prefix, limit)
        .await
        .map(Json)
}
