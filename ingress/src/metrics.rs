//! What the push API counts, for `GET /metrics` (`gpush_ingress_*`).
//!
//! Counted once per call, never per message: a batch of 10,000 adds to each
//! counter once. The NATS connection's figures (`gpush_bus_*`) come from
//! [`gpush_common::metrics::register_bus`].

use crate::error::ApiError;
use gpush_common::Push;
use gpush_common::metrics::{Labels, PUSH_KINDS, push_kind};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

/// Which API a call came through: the `api` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `POST /v1/pushData`, `POST /v1/pushBatch`.
    Http,
    /// `gpush.v1.Push` and `order.Proxy`.
    Grpc,
}

impl Transport {
    /// Both, in label order.
    pub const ALL: [Transport; 2] = [Transport::Http, Transport::Grpc];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Grpc => "grpc",
        }
    }
}

/// Upper bounds of the `gpush_ingress_publish_seconds` buckets.
pub const PUBLISH_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The push API's counters; cheap to clone (clones count together).
#[derive(Debug, Clone)]
pub struct IngressMetrics {
    /// By transport, then kind.
    pushes: [[Counter; PUSH_KINDS.len()]; Transport::ALL.len()],
    errors: Family<Labels<2>, Counter>,
    batch: Histogram,
    publish: Histogram,
}

impl Default for IngressMetrics {
    /// Counters registered nowhere (for tests and embedding).
    fn default() -> Self {
        Self::register(&mut Registry::default())
    }
}

impl IngressMetrics {
    /// Registers the push API's metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let pushes = Family::<Labels<2>, Counter>::default();
        registry.register(
            "ingress_pushes",
            "Messages published, by route kind and API",
            pushes.clone(),
        );
        let errors = Family::<Labels<2>, Counter>::default();
        registry.register(
            "ingress_push_errors",
            "Push calls refused, by API and reason (the error code of the answer)",
            errors.clone(),
        );
        // 1 to 16384: past the default max_batch of 10,000.
        let batch = Histogram::new(exponential_buckets(1.0, 2.0, 15));
        registry.register(
            "ingress_publish_batch_messages",
            "Messages per publish call (1 for pushData, the batch size for pushBatch)",
            batch.clone(),
        );
        let publish = Histogram::new(PUBLISH_BUCKETS);
        registry.register_with_unit(
            "ingress_publish",
            "Time a publish call took, until NATS confirmed it (or the standalone queue took \
             it), failed calls included",
            Unit::Seconds,
            publish.clone(),
        );
        Self {
            // Every series from the first scrape, zero included.
            pushes: Transport::ALL.map(|api| {
                PUSH_KINDS.map(|kind| {
                    pushes.get_or_create_owned(&[("kind", kind), ("api", api.as_str())])
                })
            }),
            errors,
            batch,
            publish,
        }
    }

    /// Counts a publish call of `pushes` that took `took`: the batch size
    /// and time always, the messages by kind when `published`.
    pub fn published(&self, api: Transport, pushes: &[Push], took: Duration, published: bool) {
        self.batch.observe(pushes.len() as f64);
        self.publish.observe(took.as_secs_f64());
        if published {
            let mut kinds = [0u64; PUSH_KINDS.len()];
            for push in pushes {
                kinds[push_kind(push.route())] += 1;
            }
            for (counter, n) in self.pushes[api as usize].iter().zip(kinds) {
                if n > 0 {
                    counter.inc_by(n);
                }
            }
        }
    }

    /// Counts a refused call.
    pub fn refused(&self, api: Transport, error: &ApiError) {
        self.errors
            .get_or_create(&[("api", api.as_str()), ("reason", error.code())])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn counts_by_kind_api_and_reason() {
        let mut registry = gpush_common::metrics::new_registry();
        let metrics = IngressMetrics::register(&mut registry);
        let push = |uid: &str, topic: &str| Push::new(uid, topic, Bytes::new());
        let batch = [push("", ""), push("", "t"), push("u", ""), push("u", "t")];
        metrics.published(Transport::Grpc, &batch, Duration::from_millis(2), true);
        metrics.published(
            Transport::Http,
            &batch[1..2],
            Duration::from_millis(1),
            true,
        );
        metrics.published(Transport::Http, &batch, Duration::from_secs(2), false);
        metrics.refused(Transport::Http, &ApiError::EmptyBatch);
        let text = gpush_common::metrics::render(&registry).expect("render");
        for line in [
            r#"gpush_ingress_pushes_total{kind="user",api="grpc"} 2"#,
            r#"gpush_ingress_pushes_total{kind="everyone",api="grpc"} 1"#,
            r#"gpush_ingress_pushes_total{kind="topic",api="http"} 1"#,
            r#"gpush_ingress_pushes_total{kind="user",api="http"} 0"#,
            r#"gpush_ingress_push_errors_total{api="http",reason="empty_batch"} 1"#,
            "gpush_ingress_publish_batch_messages_count 3",
            "gpush_ingress_publish_batch_messages_sum 9.0",
            r#"gpush_ingress_publish_batch_messages_bucket{le="1"} 1"#,
            r#"gpush_ingress_publish_batch_messages_bucket{le="4"} 3"#,
            "gpush_ingress_publish_seconds_count 3",
            r#"gpush_ingress_publish_seconds_bucket{le="0.001"} 1"#,
            r#"gpush_ingress_publish_seconds_bucket{le="0.0025"} 2"#,
            r#"gpush_ingress_publish_seconds_bucket{le="2.5"} 3"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
    }
}
