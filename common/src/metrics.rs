//! What both processes share for `GET /metrics`: the registry every metric
//! is registered in, its rendering in the Prometheus text format, and the
//! figures of the NATS connection.
//!
//! Nothing is global: each server (and each in-process server of a test)
//! owns a [`Registry`]. Components count in their own cheap way (the edge's
//! hub counts per shard) and [`Collector`]s read those counts at scrape
//! time, so a scrape costs a few loads and nothing is counted twice.

use crate::push::Route;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use std::fmt;
use std::sync::atomic::Ordering;

/// Prefix of every metric name (`gpush_edge_connections`).
pub const PREFIX: &str = "gpush";

/// Content type of [`render`]'s output: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A label set of static names and values, e.g. `[("reason", "idle")]`.
pub type Labels<const N: usize> = [(&'static str, &'static str); N];

/// Route kinds as the `kind` label of push counters says them: uid and
/// topic empty, topic only, uid set (user-wide or private topic).
pub const PUSH_KINDS: [&str; 3] = ["everyone", "topic", "user"];

/// Index of `route`'s kind in [`PUSH_KINDS`].
pub fn push_kind(route: Route<'_>) -> usize {
    match route {
        Route::Everyone => 0,
        Route::Topic(_) => 1,
        Route::User { .. } => 2,
    }
}

/// An empty registry whose metrics are named `gpush_<name>`.
pub fn new_registry() -> Registry {
    Registry::with_prefix(PREFIX)
}

/// Every metric of `registry`, in the Prometheus text format.
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

/// Writes one counter (`<name>[_<unit>]_total`) from a [`Collector`].
/// `help` is written as given: end it with a full stop, as the registry
/// does for registered metrics.
pub fn encode_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> fmt::Result {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, unit, counter.metric_type())?)
}

/// Writes one gauge from a [`Collector`]; see [`encode_counter`].
pub fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> fmt::Result {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// Registers the NATS connection's figures (`gpush_bus_*`), read at scrape
/// time from the statistics the client keeps anyway: nothing is counted on
/// the publish or delivery path.
pub fn register_bus(registry: &mut Registry, client: async_nats::Client) {
    registry.register_collector(Box::new(BusCollector { client }));
}

#[derive(Debug)]
struct BusCollector {
    client: async_nats::Client,
}

impl Collector for BusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stats = self.client.statistics();
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        encode_gauge(
            &mut encoder,
            "bus_connected",
            "1 while the NATS connection is up, else 0.",
            i64::from(connected),
        )?;
        encode_counter(
            &mut encoder,
            "bus_reconnects",
            "Times the NATS connection was re-established after the first connect.",
            None,
            stats.connects.load(Ordering::Relaxed).saturating_sub(1),
        )?;
        encode_counter(
            &mut encoder,
            "bus_messages_sent",
            "Messages published to NATS.",
            None,
            stats.out_messages.load(Ordering::Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "bus_messages_received",
            "Messages received from NATS subscriptions.",
            None,
            stats.in_messages.load(Ordering::Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "bus_sent",
            "Payload bytes published to NATS (protocol overhead excluded).",
            Some(&Unit::Bytes),
            stats.out_bytes.load(Ordering::Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "bus_received",
            "Payload bytes received from NATS (protocol overhead excluded).",
            Some(&Unit::Bytes),
            stats.in_bytes.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;

    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
            encode_counter(&mut encoder, "things_done", "Things.", None, 7)?;
            encode_counter(&mut encoder, "out", "Bytes.", Some(&Unit::Bytes), 9)?;
            encode_gauge(&mut encoder, "level", "Level.", -2)
        }
    }

    #[test]
    fn renders_prefixed_prometheus_text() {
        let mut registry = new_registry();
        let family = Family::<Labels<1>, Counter>::default();
        registry.register("events", "Events by kind", family.clone());
        family.get_or_create(&[("kind", "a")]).inc_by(3);
        registry.register_collector(Box::new(Fixed));
        let text = render(&registry).expect("render");
        for line in [
            "# HELP gpush_events_total Events by kind.",
            "# TYPE gpush_events_total counter",
            "gpush_events_total{kind=\"a\"} 3",
            "# TYPE gpush_things_done_total counter",
            "gpush_things_done_total 7",
            "gpush_out_bytes_total 9",
            "# TYPE gpush_level gauge",
            "gpush_level -2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
        assert!(CONTENT_TYPE.starts_with("text/plain; version=0.0.4"));
    }
}
