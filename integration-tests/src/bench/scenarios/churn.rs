//! churn: WebSocket handshakes + subscribe per second.
//!
//! Client processes open a connection, upgrade, subscribe to one of 100
//! topics, wait for the 20001 reply and close, with many cycles in flight,
//! for a fixed time. Each process rotates over several loopback source
//! addresses so the closed connections' TIME_WAIT never runs it out of
//! ports.

use super::Bench;
use crate::bench::fleet;
use crate::bench::report::{Row, Target, Unit};
use crate::bench::systems::Standalone;

/// Client processes.
const PROCESSES: usize = 2;
/// Cycles in flight per process.
const CONCURRENCY: usize = 64;
/// Source addresses per process.
const SOURCES: usize = 4;
/// Cycles per second target.
const TARGET: f64 = 10_000.0;

/// Runs the churn scenario on a standalone edge.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let run_for = bench.sizes.churn_run;
    eprintln!(
        "[churn] standalone edge: {PROCESSES} x {CONCURRENCY} cycles in flight for {run_for:?}"
    );
    let mut edge = Standalone::start(&bench.bins, false, bench.history()).await?;
    let churn = fleet::churn(&edge.ws_url, run_for, PROCESSES, CONCURRENCY, SOURCES).await?;
    edge.check_running()?;
    let rate = churn.cycles as f64 / churn.secs.max(f64::EPSILON);
    let mut note = format!(
        "{} cycles in {:.1} s, {} in flight",
        churn.cycles,
        churn.secs,
        PROCESSES * CONCURRENCY
    );
    if churn.failed > 0 {
        note.push_str(&format!(
            "; {} FAILED ({})",
            churn.failed,
            churn.first_error.as_deref().unwrap_or("?")
        ));
    }
    bench.report.add(
        Row::new(
            "churn",
            "standalone",
            "handshake+subscribe/s",
            rate,
            Unit::PerSec,
        )
        .target(Target::at_least(TARGET))
        .note(note),
    );
    bench.report.add(Row::new(
        "churn",
        "standalone",
        "cycle p99",
        churn.cycle_time.quantile(0.99) as f64,
        Unit::Micros,
    ));
    Ok(())
}
