//! The push API itself, independent of transport: authenticate, validate,
//! publish.
//!
//! HTTP and gRPC both go through [`PushApi`], so the two accept exactly the
//! same pushes and refuse the rest with the same [`ApiError`]. A batch is
//! validated completely before anything is published: one bad message and
//! nothing is sent. Valid pushes are published in request order with one
//! [`Bus::publish`], so pushes on one route arrive in the order they were
//! sent. Delivery is at-most-once: a push published while an edge is
//! briefly disconnected from the bus is lost for that edge's clients.
//!
//! [`PushApi`] also owns the registry behind the API's `GET /metrics`: what
//! it publishes and refuses ([`IngressMetrics`]) and, on NATS, the bus
//! connection's figures.

use crate::config::PushApiConfig;
use crate::error::{ApiError, Field};
use crate::metrics::{IngressMetrics, Transport};
use bytes::Bytes;
use gpush_common::bus::HistoryQuery;
use gpush_common::control::{Command, Gathered, MAX_ONLINE_UIDS, MAX_TOPICS_LIMIT};
use gpush_common::history::Page;
use gpush_common::push::{validate_name, validate_optional_name};
use gpush_common::rate::TokenBucket;
use gpush_common::{Bus, Push};
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Upper bound of a request body (HTTP) or message (gRPC), in bytes,
/// whatever `max_batch` × `max_payload` would allow. A batch must fit in it.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// Validates pushes and publishes them on the bus. Cheap to clone.
#[derive(Clone)]
pub struct PushApi {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Bus,
    config: PushApiConfig,
    metrics: IngressMetrics,
    registry: Registry,
    /// The push rate limit, shared by every call; its clock counts from
    /// `epoch`.
    bucket: Mutex<TokenBucket>,
    epoch: Instant,
}

impl PushApi {
    /// An API publishing to `bus` under the limits of `config`, with a
    /// registry of its own for `GET /metrics`.
    pub fn new(bus: Bus, config: PushApiConfig) -> Self {
        let mut registry = gpush_common::metrics::new_registry();
        let metrics = IngressMetrics::register(&mut registry);
        if let Bus::Nats(nats) = &bus {
            gpush_common::metrics::register_bus(&mut registry, nats.client().clone());
        }
        let epoch = Instant::now();
        let bucket = Mutex::new(TokenBucket::full(config.push_limit(), 0));
        Self {
            inner: Arc::new(Inner {
                bus,
                config,
                metrics,
                registry,
                bucket,
                epoch,
            }),
        }
    }

    /// Every metric of this API in the Prometheus text format.
    pub fn render_metrics(&self) -> Result<String, std::fmt::Error> {
        gpush_common::metrics::render(&self.inner.registry)
    }

    /// Counts a call refused with `error` and gives the error back, for
    /// `map_err`.
    pub fn refused(&self, api: Transport, error: ApiError) -> ApiError {
        self.inner.metrics.refused(api, &error);
        error
    }

    /// The limits in force.
    pub fn config(&self) -> &PushApiConfig {
        &self.inner.config
    }

    /// The bus pushes go to.
    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// Checks the `authorization` header or metadata value, which must be
    /// `Bearer <api_key>` when an API key is configured.
    pub fn authorize(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        let Some(key) = self.inner.config.api_key.as_deref() else {
            return Ok(());
        };
        let given = authorization
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), key.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    /// Checks the size of a batch before its messages are looked at.
    pub fn check_batch_len(&self, len: usize) -> Result<(), ApiError> {
        let max = self.inner.config.max_batch;
        if len == 0 {
            Err(ApiError::EmptyBatch)
        } else if len > max {
            Err(ApiError::BatchTooLarge { max })
        } else {
            Ok(())
        }
    }

    /// Validates one message (`index` is its position in a batch, None for
    /// a single push) and stamps it as a [`Push`].
    pub fn check(
        &self,
        index: Option<usize>,
        uid: String,
        topic: String,
        data: Bytes,
    ) -> Result<Push, ApiError> {
        let config = &self.inner.config;
        validate_optional_name(&uid, config.max_name_len).map_err(|error| {
            ApiError::InvalidUid {
                field: Field::new(index, "uid"),
                error,
            }
        })?;
        validate_optional_name(&topic, config.max_name_len).map_err(|error| {
            ApiError::InvalidTopic {
                field: Field::new(index, "topic"),
                error,
            }
        })?;
        if data.len() > config.max_payload {
            return Err(ApiError::PayloadTooLarge {
                field: Field::new(index, "data"),
                len: data.len(),
                max: config.max_payload,
            });
        }
        Ok(Push::new(uid, topic, data))
    }

    /// Publishes already validated pushes that came through `api`, in
    /// order, and counts the call. Returns each push's history offset (0:
    /// none), one per push accepted.
    ///
    /// The call first takes one token per push from the push rate limit
    /// (all or nothing); without them nothing is published and the call
    /// fails with [`ApiError::RateLimited`].
    pub async fn publish(&self, api: Transport, pushes: &[Push]) -> Result<Vec<u64>, ApiError> {
        self.take_tokens(pushes.len())?;
        let started = Instant::now();
        let published = self.inner.bus.publish(pushes).await;
        self.inner
            .metrics
            .published(api, pushes, started.elapsed(), published.is_ok());
        Ok(published?)
    }

    /// The history API: checks the query (a topic, a uid, or both; names
    /// as for pushes; `limit` 1..=[`MAX_HISTORY_LIMIT`]) and reads it.
    pub async fn history(&self, query: HistoryQuery) -> Result<Page, ApiError> {
        let max = self.inner.config.max_name_len;
        if query.uid.is_empty() && query.topic.is_empty() {
            return Err(ApiError::BadQuery(
                "give a topic, a uid, or both (a user's private topic)".into(),
            ));
        }
        validate_optional_name(&query.topic, max).map_err(|error| ApiError::InvalidTopic {
            field: Field::new(None, "topic"),
            error,
        })?;
        validate_optional_name(&query.uid, max).map_err(|error| ApiError::InvalidUid {
            field: Field::new(None, "uid"),
            error,
        })?;
        if !(1..=MAX_HISTORY_LIMIT).contains(&query.limit) {
            return Err(ApiError::BadQuery(format!(
                "limit must be from 1 to {MAX_HISTORY_LIMIT}"
            )));
        }
        let what = if query.uid.is_empty() {
            format!("topic {:?}", query.topic)
        } else {
            format!("user {:?}", query.uid)
        };
        self.inner
            .bus
            .history(&query)
            .await?
            .ok_or(ApiError::NoHistory(what))
    }

    /// The server API (see [`gpush_common::control`]): checks `command`
    /// (names as for pushes, but a uid is required where it names a
    /// user), sends it to every edge and gathers their answers within
    /// `control_timeout`; `expected` names the registered edges (None:
    /// unknown, without etcd).
    pub async fn control(
        &self,
        command: Command,
        expected: Option<Vec<String>>,
    ) -> Result<Gathered, ApiError> {
        self.check_command(&command)?;
        let gathered = self
            .inner
            .bus
            .control(
                &command,
                expected,
                self.inner.config.control_timeout,
                self.inner.config.control_max_bytes,
            )
            .await
            .map_err(|e| match e {
                gpush_common::BusError::AnswerTooLarge(max) => ApiError::AnswerTooLarge { max },
                other => ApiError::Bus(other),
            })?;
        if let Some(error) = gathered.refusal() {
            return Err(ApiError::EdgeRefused(error.to_owned()));
        }
        Ok(gathered)
    }

    fn check_command(&self, command: &Command) -> Result<(), ApiError> {
        let max = self.inner.config.max_name_len;
        let uid = |uid: &str| {
            validate_name(uid, max).map_err(|error| ApiError::InvalidUid {
                field: Field::new(None, "uid"),
                error,
            })
        };
        let topic = |topic: &str| {
            validate_name(topic, max).map_err(|error| ApiError::InvalidTopic {
                field: Field::new(None, "topic"),
                error,
            })
        };
        match command {
            Command::Disconnect { uid: u, reason } => {
                uid(u)?;
                if reason.len() > MAX_CLOSE_REASON {
                    return Err(ApiError::BadQuery(format!(
                        "reason: at most {MAX_CLOSE_REASON} bytes (a close frame's reason)"
                    )));
                }
                Ok(())
            }
            Command::Logout { uid: u } => uid(u),
            Command::Subscribe {
                uid: u, topic: t, ..
            }
            | Command::Unsubscribe {
                uid: u, topic: t, ..
            } => {
                uid(u)?;
                topic(t)
            }
            Command::Presence { topic: t, uid: u } => {
                topic(t)?;
                validate_optional_name(u, max).map_err(|error| ApiError::InvalidUid {
                    field: Field::new(None, "uid"),
                    error,
                })
            }
            Command::Online { uids } => {
                if uids.is_empty() || uids.len() > MAX_ONLINE_UIDS {
                    return Err(ApiError::BadQuery(format!(
                        "uid: give 1 to {MAX_ONLINE_UIDS} uids, comma-separated"
                    )));
                }
                uids.iter().try_for_each(|u| uid(u))
            }
            Command::Topics { prefix, limit } => {
                validate_optional_name(prefix, max).map_err(|error| ApiError::InvalidTopic {
                    field: Field::new(None, "prefix"),
                    error,
                })?;
                if !(1..=MAX_TOPICS_LIMIT).contains(limit) {
                    return Err(ApiError::BadQuery(format!(
                        "limit must be from 1 to {MAX_TOPICS_LIMIT}"
                    )));
                }
                Ok(())
            }
            // Edges ask each other this; the server API does not, but a
            // well-formed one is harmless.
            Command::Tracked { topic: t } => t.as_deref().map_or(Ok(()), topic),
        }
    }

    /// Takes `n` tokens from the push rate limit, or says when to retry.
    fn take_tokens(&self, n: usize) -> Result<(), ApiError> {
        let rate = self.inner.config.push_limit();
        if !rate.is_limited() {
            return Ok(());
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let mut bucket = self
            .inner
            .bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Read the clock under the lock: a time read before another
        // caller's refill would look like a jump of 49 days.
        let now_ms = self.inner.epoch.elapsed().as_millis() as u64;
        let taken = bucket.try_take(n, rate, now_ms);
        drop(bucket);
        taken.map_err(|wait| ApiError::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil().clamp(1.0, 3600.0) as u64,
        })
    }

    /// Size limit of one gRPC request message: [`Self::request_limit`],
    /// capped by `max_grpc_message`.
    pub fn grpc_message_limit(&self) -> usize {
        self.request_limit().min(self.inner.config.max_grpc_message)
    }

    /// Size limit of one request body or message: room for a full batch
    /// (base64 grows payloads by 4/3; names may be JSON-escaped up to 6
    /// bytes per byte; plus JSON syntax), capped at [`MAX_REQUEST_BYTES`],
    /// but never less than one maximal push.
    pub fn request_limit(&self) -> usize {
        let config = &self.inner.config;
        let one = (config.max_payload / 3 + 1) * 4 + 12 * config.max_name_len + 256;
        one.saturating_mul(config.max_batch)
            .min(MAX_REQUEST_BYTES)
            .max(one)
    }
}

/// Longest `reason` of a disconnect: what a close frame can carry.
pub const MAX_CLOSE_REASON: usize = 123;

/// Most pushes one history API call returns.
pub const MAX_HISTORY_LIMIT: usize = 1000;
/// Pushes a history API call returns when it names no limit.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// Compares without stopping at the first difference, so the time taken
/// does not reveal how much of the key a guess got right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpush_common::LocalDelivery;

    struct Sink;
    impl LocalDelivery for Sink {
        fn deliver(&self, _: &Push) {}
    }

    fn api(api_key: Option<&str>) -> PushApi {
        PushApi::new(
            Bus::Local(Arc::new(Sink)),
            PushApiConfig {
                api_key: api_key.map(str::to_owned),
                max_payload: 4,
                max_batch: 2,
                max_name_len: 8,
                ..PushApiConfig::default()
            },
        )
    }

    #[test]
    fn api_key() {
        assert!(api(None).authorize(None).is_ok());
        let api = api(Some("s3cret"));
        assert!(api.authorize(Some("Bearer s3cret")).is_ok());
        assert!(api.authorize(Some("bearer  s3cret ")).is_ok());
        for bad in [
            None,
            Some(""),
            Some("s3cret"),
            Some("Bearer s3cre"),
            Some("Basic s3cret"),
        ] {
            assert!(
                matches!(api.authorize(bad), Err(ApiError::Unauthorized)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn limits() {
        let api = api(None);
        assert!(matches!(api.check_batch_len(0), Err(ApiError::EmptyBatch)));
        assert!(matches!(
            api.check_batch_len(3),
            Err(ApiError::BatchTooLarge { max: 2 })
        ));
        assert!(
            api.check(None, "".into(), "".into(), Bytes::from_static(b"1234"))
                .is_ok()
        );
        let e = api
            .check(Some(1), "".into(), "".into(), Bytes::from_static(b"12345"))
            .expect_err("too large");
        assert_eq!(
            e.to_string(),
            "messages[1].data: payload is 5 bytes, the maximum is 4"
        );
        let e = api
            .check(None, "123456789".into(), "".into(), Bytes::new())
            .expect_err("uid too long");
        assert_eq!(e.code(), "invalid_uid");
    }

    fn one_push() -> Push {
        Push::new("", "t", Bytes::from_static(b"1"))
    }

    #[tokio::test]
    async fn push_rate_is_enforced_and_refills() {
        let api = PushApi::new(
            Bus::Local(Arc::new(Sink)),
            PushApiConfig {
                push_rate: 1_000,
                push_burst: 3,
                max_batch: 3,
                ..PushApiConfig::default()
            },
        );
        let batch = vec![one_push(); 3];
        assert_eq!(
            api.publish(Transport::Http, &batch)
                .await
                .map(|o| o.len())
                .ok(),
            Some(3)
        );
        let refused = api
            .publish(Transport::Grpc, &batch)
            .await
            .expect_err("bucket empty");
        assert_eq!(refused.code(), "rate_limited");
        assert!(
            matches!(
                refused,
                ApiError::RateLimited {
                    retry_after_secs: 1
                }
            ),
            "{refused:?}"
        );
        // 1,000 a second: three tokens are back within a few milliseconds.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(
            api.publish(Transport::Http, &batch)
                .await
                .map(|o| o.len())
                .ok(),
            Some(3)
        );
    }

    #[tokio::test]
    async fn no_push_rate_no_limit() {
        let api = api(None);
        for _ in 0..1_000 {
            assert!(api.publish(Transport::Http, &[one_push()]).await.is_ok());
        }
    }

    #[test]
    fn grpc_limit_is_the_smaller() {
        let mut config = PushApiConfig::default();
        let api = PushApi::new(Bus::Local(Arc::new(Sink)), config.clone());
        assert_eq!(api.grpc_message_limit(), MAX_REQUEST_BYTES);
        config.max_grpc_message = 4096;
        let api = PushApi::new(Bus::Local(Arc::new(Sink)), config);
        assert_eq!(api.grpc_message_limit(), 4096);
    }

    #[test]
    fn request_limit_is_capped_but_fits_one_push() {
        let mut config = PushApiConfig::default();
        let default = PushApi::new(Bus::Local(Arc::new(Sink)), config.clone()).request_limit();
        assert_eq!(default, MAX_REQUEST_BYTES);
        config.max_payload = 2 * MAX_REQUEST_BYTES;
        let huge = PushApi::new(Bus::Local(Arc::new(Sink)), config).request_limit();
        assert!(huge > 2 * MAX_REQUEST_BYTES * 4 / 3);
    }
}
