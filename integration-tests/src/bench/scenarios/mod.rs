//! The scenarios: each starts the systems it measures, drives them with a
//! [`Fleet`](crate::bench::fleet::Fleet) of client processes, and adds rows
//! to the report. The baseline's figures are measured once per run, right
//! before the first gpush figure that is compared to them.

pub mod churn;
pub mod fanout;
pub mod idle;
pub mod ingress;
pub mod latency;
pub mod many_topics;
pub mod presence;
pub mod presence_churn;
pub mod private;
pub mod scale;
pub mod storm;
pub mod toggle;

use crate::bench::cli::{HistoryMode, Scenario};
use crate::bench::report::Report;
use crate::bench::systems::Binaries;
use std::time::Duration;

/// Public topics an idle fleet spreads its subscriptions over.
pub const IDLE_TOPICS: usize = 100;
/// The topic of the fan-out and latency subscribers.
pub const FANOUT_TOPIC: &str = "bench";
/// Pushes to the fleet at the latency scenario's fixed rate, per second.
pub const LATENCY_RATE: u32 = 20;
/// Private pushes per second.
pub const PRIVATE_RATE: u32 = 20_000;
/// Private pushes per batch call (one call every `BATCH / RATE` seconds).
pub const PRIVATE_BATCH: u32 = 200;

/// Scenario sizes: the standard ones the targets are stated for, or the
/// quick ones of a smoke run.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Connections of the idle scenarios.
    pub idle_conns: usize,
    /// Subscribers of the fan-out and latency scenarios.
    pub fanout_subscribers: usize,
    /// Measured time of a fan-out run (after a one-second warm-up).
    pub fanout_run: Duration,
    /// Measured time of a latency run.
    pub latency_run: Duration,
    /// Logged-in users of the private scenario.
    pub private_users: usize,
    /// Measured time of the private scenario.
    pub private_run: Duration,
    /// Time of each ingress measurement.
    pub ingress_run: Duration,
    /// Time of the churn run.
    pub churn_run: Duration,
    /// Subscribers of the toggled topic in the toggle scenario. The edge
    /// holds them, the [`toggle::TOGGLERS`] and its own descriptors in one
    /// process, so the sum must stay under the open-files limit (checked
    /// before the run, see [`toggle::run`]).
    pub toggle_subscribers: usize,
    /// Clients reconnecting at once in the storm scenario.
    pub storm_clients: usize,
    /// Users subscribed to the presence scenario's topic, spread over its
    /// [`presence::EDGES`] edges.
    pub presence_subscribers: usize,
    /// Subscribers of the presence topic in the presence-churn scenario
    /// (half on each of its two edges).
    pub churn_presence_subscribers: usize,
    /// Time of each churn rate of the presence-churn scenario.
    pub presence_run: Duration,
    /// Connections the scale scenario ramps to (`--scale-conns`).
    pub scale_conns: usize,
    /// Distinct topics of the many-topics scenario, and its connections
    /// (each subscribed to [`many_topics::PER_CONN`] of them).
    pub many_topics: usize,
    /// Pushes per second to random topics in the many-topics scenario.
    pub many_topics_rate: u32,
    /// Measured time of the many-topics pushes.
    pub many_topics_run: Duration,
}

impl Sizes {
    /// The sizes the targets are stated for.
    pub fn standard() -> Self {
        Self {
            idle_conns: 19_000,
            fanout_subscribers: 15_000,
            fanout_run: Duration::from_secs(10),
            latency_run: Duration::from_secs(10),
            private_users: 19_000,
            private_run: Duration::from_secs(10),
            ingress_run: Duration::from_secs(5),
            churn_run: Duration::from_secs(5),
            // 20,000 subscribers, 50 togglers and the edge's own ~15
            // descriptors do not fit under a 20,000 open-files limit.
            toggle_subscribers: 19_900,
            storm_clients: 15_000,
            presence_subscribers: 50_000,
            churn_presence_subscribers: 10_000,
            presence_run: Duration::from_secs(10),
            scale_conns: 1_000_000,
            many_topics: 100_000,
            many_topics_rate: 20_000,
            many_topics_run: Duration::from_secs(10),
        }
    }

    /// Small and short: checks that everything works.
    pub fn quick() -> Self {
        Self {
            idle_conns: 2_000,
            fanout_subscribers: 2_000,
            fanout_run: Duration::from_secs(3),
            latency_run: Duration::from_secs(3),
            private_users: 2_000,
            private_run: Duration::from_secs(3),
            ingress_run: Duration::from_secs(2),
            churn_run: Duration::from_secs(2),
            toggle_subscribers: 2_000,
            storm_clients: 2_000,
            presence_subscribers: 3_000,
            churn_presence_subscribers: 2_000,
            presence_run: Duration::from_secs(4),
            scale_conns: 36_000,
            many_topics: 6_000,
            many_topics_rate: 5_000,
            many_topics_run: Duration::from_secs(3),
        }
    }
}

/// The baseline's figures, each measured at most once per run.
#[derive(Debug, Default)]
struct BaselineFigures {
    idle: Option<idle::IdleFigures>,
    fanout: Option<fanout::FanoutFigures>,
    latency: Option<latency::LatencyFigures>,
}

/// What every scenario works with.
#[derive(Debug)]
pub struct Bench {
    /// The binaries to start.
    pub bins: Binaries,
    /// Scenario sizes.
    pub sizes: Sizes,
    /// The results so far.
    pub report: Report,
    /// History settings to run `fanout` and `ingress` with (at least one).
    pub history: Vec<HistoryMode>,
    baseline: BaselineFigures,
}

impl Bench {
    /// A run with `sizes` on the binaries `bins`, gpush with each of
    /// `history` (the defaults when empty).
    pub fn new(
        bins: Binaries,
        sizes: Sizes,
        report: Report,
        mut history: Vec<HistoryMode>,
    ) -> Self {
        history.dedup();
        if history.is_empty() {
            history.push(HistoryMode::On);
        }
        Self {
            bins,
            sizes,
            report,
            history,
            baseline: BaselineFigures::default(),
        }
    }

    /// The history setting of scenarios that run once.
    pub fn history(&self) -> HistoryMode {
        self.history[0]
    }

    /// Runs one scenario.
    pub async fn run(&mut self, scenario: Scenario) -> anyhow::Result<()> {
        match scenario {
            Scenario::Idle => idle::run(self, false).await,
            Scenario::IdlePrivate => idle::run(self, true).await,
            Scenario::Fanout => fanout::run(self).await,
            Scenario::Latency => latency::run(self).await,
            Scenario::Private => private::run(self).await,
            Scenario::Ingress => ingress::run(self).await,
            Scenario::Churn => churn::run(self).await,
            Scenario::Toggle => toggle::run(self).await,
            Scenario::Storm => storm::run(self).await,
            Scenario::Presence => presence::run(self).await,
            Scenario::PresenceChurn => presence_churn::run(self).await,
            Scenario::Scale => scale::run(self).await,
            Scenario::ManyTopics => many_topics::run(self).await,
            Scenario::Baseline => {
                self.baseline_idle().await?;
                self.baseline_fanout().await?;
                self.baseline_latency().await?;
                Ok(())
            }
        }
    }

    /// The baseline's idle figures (measured on first use).
    pub async fn baseline_idle(&mut self) -> anyhow::Result<idle::IdleFigures> {
        if let Some(figures) = &self.baseline.idle {
            return Ok(figures.clone());
        }
        let figures = idle::measure_baseline(self).await?;
        self.baseline.idle = Some(figures.clone());
        Ok(figures)
    }

    /// The baseline's fan-out figures (measured on first use).
    pub async fn baseline_fanout(&mut self) -> anyhow::Result<fanout::FanoutFigures> {
        if let Some(figures) = &self.baseline.fanout {
            return Ok(figures.clone());
        }
        let figures = fanout::measure_baseline(self).await?;
        self.baseline.fanout = Some(figures.clone());
        Ok(figures)
    }

    /// The baseline's latency figures (measured on first use).
    pub async fn baseline_latency(&mut self) -> anyhow::Result<latency::LatencyFigures> {
        if let Some(figures) = &self.baseline.latency {
            return Ok(figures.clone());
        }
        let figures = latency::measure_baseline(self).await?;
        self.baseline.latency = Some(figures.clone());
        Ok(figures)
    }
}

/// A note on connections that failed to set up or were closed, if any.
pub fn trouble_note(failed: u64, first_error: Option<&str>, closed: u64) -> String {
    let mut parts = Vec::new();
    if failed > 0 {
        parts.push(format!(
            "{failed} set-ups FAILED ({})",
            first_error.unwrap_or("?")
        ));
    }
    if closed > 0 {
        parts.push(format!("{closed} connections closed by the server"));
    }
    parts.join("; ")
}

/// Joins non-empty notes with "; ".
pub fn join_notes(notes: &[&str]) -> String {
    notes
        .iter()
        .filter(|n| !n.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("; ")
}
