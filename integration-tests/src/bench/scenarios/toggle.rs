//! toggle: fan-out latency on a large topic while other clients toggle
//! their subscription to it.
//!
//! A standalone edge holds `toggle_subscribers` subscribers of one topic
//! and gets [`LATENCY_RATE`] pushes per second, measured as in the latency
//! scenario: once quiet, then again while [`TOGGLERS`] more clients each
//! subscribe to and unsubscribe from the same topic at the edge's default
//! request rate. Both runs touch the topic's index shard, so the second
//! run shows what a subscription change costs the fan-out of that topic.
//! The toggling rows carry the quiet run's figures as their baseline, so
//! the ratio column is busy / quiet.
//!
//! The edge holds every subscriber, every toggler, the push API's
//! connection and its own listeners in one process, under the open-files
//! limit it inherits; past that limit it cannot accept the push API's
//! connection at all (the push times out). The run checks the sum first.

use super::latency::{LatencyFigures, drive};
use super::{Bench, FANOUT_TOPIC, LATENCY_RATE};
use crate::bench::chart;
use crate::bench::fleet::{Fleet, FleetSpec};
use crate::bench::push::Pusher;
use crate::bench::report::{Row, Unit};
use crate::bench::systems::{Standalone, open_files_limit};
use anyhow::bail;
use futures_util::{SinkExt, StreamExt};
use gpush_edge::config::DEFAULT_REQUEST_RATE;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::{MissedTickBehavior, interval};
use tokio_tungstenite::tungstenite::Message;

/// Clients toggling their subscription during the second run.
pub const TOGGLERS: usize = 50;

/// Descriptors the edge needs besides its WebSocket clients: stdio, log
/// file, epoll, listeners, the push API's connections (about 15 in use).
const EDGE_OWN_FDS: usize = 50;

/// What the togglers did.
#[derive(Debug, Default)]
struct Toggled {
    /// Requests sent.
    sent: AtomicU64,
    /// Replies other than subscribed / unsubscribed (rate limited, ...).
    refused: AtomicU64,
}

/// One toggling client: subscribe, unsubscribe, ... at `rate` requests a
/// second until aborted, reading (and dropping) every reply and push.
async fn toggle(url: String, rate: u32, toggled: Arc<Toggled>) -> anyhow::Result<()> {
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let (mut tx, mut rx) = ws.split();
    let counts = toggled.clone();
    let reader = async move {
        while let Some(Ok(message)) = rx.next().await {
            if let Message::Text(text) = message
                && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(code) = value["code"].as_u64()
                && code >= 30_000
            {
                counts.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let writer = async move {
        let mut tick = interval(Duration::from_secs(1) / rate.max(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for n in 0u64.. {
            tick.tick().await;
            let code = if n % 2 == 0 { 1 } else { 2 };
            let request = serde_json::json!({"code": code, "topic": FANOUT_TOPIC});
            tx.send(Message::text(request.to_string())).await?;
            toggled.sent.fetch_add(1, Ordering::Relaxed);
        }
        anyhow::Ok(())
    };
    tokio::select! {
        () = reader => Ok(()),
        written = writer => written,
    }
}

/// Adds the latency rows of one run; `quiet` (the quiet run's figures)
/// becomes the baseline of the toggling run's rows.
fn add_rows(
    bench: &mut Bench,
    system: &str,
    figures: &LatencyFigures,
    quiet: Option<&LatencyFigures>,
    note: String,
) {
    for (name, value, base) in [
        ("p50", figures.p50, quiet.map(|q| q.p50)),
        ("p99", figures.p99, quiet.map(|q| q.p99)),
        ("max", figures.max, quiet.map(|q| q.max)),
    ] {
        let mut row = Row::new("toggle", system, name, value as f64, Unit::Micros)
            .baseline(base.map(|b| b as f64));
        if name == "p50" {
            row = row.note(note.clone());
        }
        bench.report.add(row);
    }
    bench.report.add(Row::new(
        "toggle",
        system,
        "loss",
        figures.loss as f64,
        Unit::Count,
    ));
}

/// Runs the toggle scenario on a standalone edge.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let subscribers = bench.sizes.toggle_subscribers;
    let run_for = bench.sizes.latency_run;
    if let Some(limit) = open_files_limit()
        && (subscribers + TOGGLERS + EDGE_OWN_FDS) as u64 > limit
    {
        bail!(
            "{subscribers} subscribers + {TOGGLERS} togglers + {EDGE_OWN_FDS} descriptors of \
             the edge's own exceed the open-files limit ({limit}) the edge inherits"
        );
    }
    eprintln!(
        "[toggle] standalone edge: {subscribers} subscribers, {LATENCY_RATE} pushes/s, \
         quiet then with {TOGGLERS} clients toggling at {DEFAULT_REQUEST_RATE}/s"
    );
    let mut edge = Standalone::start(&bench.bins, false, bench.history()).await?;
    let spec = FleetSpec {
        latency: true,
        ..FleetSpec::public(&edge.ws_url, subscribers, FANOUT_TOPIC)
    };
    let mut fleet = Fleet::start(&spec).await?;
    let pusher = Pusher::gpush(&edge.http_base);

    let quiet = drive(&mut fleet, &pusher, run_for).await?;
    let note = quiet.note.clone();
    add_rows(bench, "quiet", &quiet, None, note);

    fleet.reset().await?;
    let toggled = Arc::new(Toggled::default());
    let mut togglers = JoinSet::new();
    for _ in 0..TOGGLERS {
        togglers.spawn(toggle(
            edge.ws_url.clone(),
            DEFAULT_REQUEST_RATE,
            toggled.clone(),
        ));
    }
    let busy = drive(&mut fleet, &pusher, run_for).await;
    // A toggler still running is fine; one that ended on an error is not.
    let mut failed = 0;
    while let Some(ended) = togglers.try_join_next() {
        failed += usize::from(!matches!(ended, Ok(Ok(()))));
    }
    togglers.abort_all();
    let busy = busy?;
    let sent = toggled.sent.load(Ordering::Relaxed);
    let note = format!(
        "{}; {sent} toggles by {TOGGLERS} clients ({:.0}/s), {} refused{}",
        busy.note,
        sent as f64 / run_for.as_secs_f64(),
        toggled.refused.load(Ordering::Relaxed),
        if failed > 0 { ", a toggler FAILED" } else { "" },
    );
    add_rows(bench, "toggling", &busy, Some(&quiet), note);
    bench.report.chart(chart::latency(
        "toggle",
        &format!(
            "toggle: latency, {subscribers} subscribers, {LATENCY_RATE} pushes/s, \
             quiet and while {TOGGLERS} clients toggle"
        ),
        &[("quiet", &quiet.histogram), ("toggling", &busy.histogram)],
    ));
    fleet.stop().await;
    edge.check_running()?;
    Ok(())
}
