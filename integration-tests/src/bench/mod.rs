//! `gpush-bench`: a benchmark program that proves (or disproves) gpush's
//! performance targets on the machine it runs on.
//!
//! It starts what it measures (a standalone `gpush-edge`, or a cluster of
//! real `nats-server`, `gpush-ingress` and `gpush-edge` processes), drives
//! it with WebSocket clients in separate processes (it re-executes itself;
//! one process holds at most ~19,900 sockets here), and prints a table and
//! optionally JSON. Every gpush figure that has one is also shown as a
//! ratio to the same figure of a minimal raw server measured in the same
//! run with the same clients ([`baseline`]): absolute numbers drift on
//! shared machines, ratios within one run much less.
//!
//! # Layout
//! - [`cli`]: flags, scenarios, and the hidden roles (client, baseline).
//! - [`wire`]: the hand-written WebSocket handshake and framing.
//! - [`histogram`]: a mergeable log-linear latency histogram.
//! - [`control`]: the JSON-lines protocol between coordinator and clients.
//! - [`client`]: the load-client process.
//! - [`fleet`]: the coordinator's side of the client processes.
//! - [`baseline`]: the baseline raw server process.
//! - [`systems`]: starting the systems under test; reading RSS.
//! - [`push`]: payloads and push API calls.
//! - [`http`]: a lean HTTP/1.1 keep-alive client for the ingress load.
//! - [`scenarios`]: one module per scenario.
//! - [`report`]: the table, the JSON and the charts' footer.
//! - [`chart`]: the SVG charts (`--charts DIR`).

pub mod baseline;
pub mod chart;
pub mod cli;
pub mod client;
pub mod control;
pub mod fleet;
pub mod histogram;
pub mod http;
pub mod push;
pub mod report;
pub mod scenarios;
pub mod systems;
pub mod wire;

use cli::{RunArgs, Scenario};
use report::Report;
use scenarios::{Bench, Sizes};
use std::process::ExitCode;
use std::time::Instant;
use systems::Binaries;

/// Runs the selected scenarios (all by default), prints the table and
/// writes the JSON and the charts. Fails (exit 1) when the binaries are missing or any
/// scenario fails; the other scenarios still run.
pub fn run(args: RunArgs) -> ExitCode {
    let bins = match Binaries::locate() {
        Ok(bins) => bins,
        Err(e) => {
            eprintln!("gpush-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("gpush-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios.clone()
    };
    scenarios.dedup();
    let sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::standard()
    };
    let started = Instant::now();
    let mut bench = Bench::new(bins, sizes, Report::new(args.quick), args.history.clone());
    eprintln!("{}", bench.report.header());
    runtime.block_on(async {
        for scenario in scenarios {
            let began = Instant::now();
            if let Err(e) = bench.run(scenario).await {
                eprintln!("gpush-bench: scenario {} FAILED: {e:#}", scenario.name());
                bench
                    .report
                    .failures
                    .push(format!("{}: {e:#}", scenario.name()));
            }
            eprintln!(
                "[{}] done in {:.1} s",
                scenario.name(),
                began.elapsed().as_secs_f64()
            );
        }
    });
    drop(runtime);
    let mut report = bench.report;
    report.duration_secs = started.elapsed().as_secs_f64();
    println!("{}", report.header());
    if report.quick {
        println!("(quick sizes: the targets are stated for the standard sizes)");
    }
    println!();
    print!("{}", report.table());
    println!("\ntotal time {:.0} s", report.duration_secs);
    if let Some(path) = &args.json
        && let Err(e) = report.write_json(path)
    {
        eprintln!("gpush-bench: cannot write {}: {e:#}", path.display());
        return ExitCode::FAILURE;
    }
    if let Some(dir) = args.charts_dir() {
        match report.write_charts(dir) {
            Ok(paths) => {
                for path in paths {
                    println!("chart: {}", path.display());
                }
            }
            Err(e) => {
                eprintln!(
                    "gpush-bench: cannot write charts to {}: {e:#}",
                    dir.display()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
