//! Results: rows of numbers with their baseline, ratio and target, the
//! machine they were measured on, printed as a table and written as JSON.

use crate::bench::chart::Chart;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The machine and moment of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs available.
    pub cpus: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// UTC date and time of the run (ISO 8601).
    pub date: String,
    /// The commit checked out in the source tree the benchmark was built
    /// from, when the run started (`+dirty` with uncommitted changes);
    /// `None` without git or outside a checkout.
    pub commit: Option<String>,
}

impl Machine {
    /// Reads /proc for what describes this machine.
    pub fn probe() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let memory_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory_gib: memory_kib / (1024.0 * 1024.0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            date: utc_now(),
            commit: source_commit(),
        }
    }

    /// One line naming the machine, the date and the commit: the footer of
    /// every chart.
    pub fn describe(&self) -> String {
        let mut line = format!(
            "{} CPUs ({}), {:.1} GiB RAM, Linux {} — {}",
            self.cpus, self.cpu_model, self.memory_gib, self.kernel, self.date
        );
        if let Some(commit) = &self.commit {
            let _ = write!(line, " — commit {commit}");
        }
        line
    }
}

/// The short commit of the checkout this crate was built from, read with
/// `git` at run time.
fn source_commit() -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).filter(|c| !c.is_empty())?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|status| !status.is_empty());
    Some(if dirty { commit + "+dirty" } else { commit })
}

/// Now as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// What a number counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Bytes (memory per connection).
    Bytes,
    /// Events per second.
    PerSec,
    /// Microseconds (latency).
    Micros,
    /// A plain count (loss, errors, connections).
    Count,
}

impl Unit {
    /// `value` in this unit, for people.
    pub fn format(self, value: f64) -> String {
        match self {
            Unit::Bytes if value.abs() >= 1024.0 * 1024.0 => {
                format!("{:.1} MiB", value / (1024.0 * 1024.0))
            }
            Unit::Bytes => format!("{:.2} KiB", value / 1024.0),
            Unit::PerSec if value >= 1e6 => format!("{:.2} M/s", value / 1e6),
            Unit::PerSec if value >= 1e3 => format!("{:.1} k/s", value / 1e3),
            Unit::PerSec => format!("{value:.1} /s"),
            Unit::Micros if value >= 1e6 => format!("{:.2} s", value / 1e6),
            Unit::Micros if value >= 1e3 => format!("{:.2} ms", value / 1e3),
            Unit::Micros => format!("{value:.0} µs"),
            Unit::Count => format!("{value:.0}"),
        }
    }
}

/// How a number compares to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cmp {
    /// The number must be at most the target.
    AtMost,
    /// The number must be at least the target.
    AtLeast,
}

/// A goal from the performance issue, on the number itself or on its
/// ratio to the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Target {
    /// Direction.
    pub cmp: Cmp,
    /// The bound.
    pub value: f64,
    /// Whether the bound applies to `value / baseline` instead.
    pub of_baseline: bool,
}

impl Target {
    /// The number must be at most `value`.
    pub fn at_most(value: f64) -> Self {
        Self {
            cmp: Cmp::AtMost,
            value,
            of_baseline: false,
        }
    }

    /// The number must be at least `value`.
    pub fn at_least(value: f64) -> Self {
        Self {
            cmp: Cmp::AtLeast,
            value,
            of_baseline: false,
        }
    }

    /// The ratio to the baseline must be at most `ratio`.
    pub fn ratio_at_most(ratio: f64) -> Self {
        Self {
            of_baseline: true,
            ..Self::at_most(ratio)
        }
    }

    /// The ratio to the baseline must be at least `ratio`.
    pub fn ratio_at_least(ratio: f64) -> Self {
        Self {
            of_baseline: true,
            ..Self::at_least(ratio)
        }
    }

    fn met(&self, value: f64, ratio: Option<f64>) -> Option<bool> {
        let subject = if self.of_baseline { ratio? } else { value };
        Some(match self.cmp {
            Cmp::AtMost => subject <= self.value,
            Cmp::AtLeast => subject >= self.value,
        })
    }

    fn describe(&self, unit: Unit) -> String {
        let op = match self.cmp {
            Cmp::AtMost => "<=",
            Cmp::AtLeast => ">=",
        };
        if self.of_baseline {
            format!("{op} {:.2}x base", self.value)
        } else {
            format!("{op} {}", unit.format(self.value))
        }
    }
}

/// One measured number.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// What was measured: `standalone`, `cluster`, `baseline`...
    pub system: String,
    /// Which number.
    pub metric: String,
    /// The number.
    pub value: f64,
    /// Its unit.
    pub unit: Unit,
    /// The baseline's number for the same metric, measured in this run.
    pub baseline: Option<f64>,
    /// `value / baseline`.
    pub ratio: Option<f64>,
    /// The goal, if the issue sets one.
    pub target: Option<Target>,
    /// Whether the goal was met.
    pub target_met: Option<bool>,
    /// Context: sizes, failures, caveats.
    pub note: String,
}

impl Row {
    /// A number without baseline or target.
    pub fn new(scenario: &str, system: &str, metric: &str, value: f64, unit: Unit) -> Self {
        Self {
            scenario: scenario.to_owned(),
            system: system.to_owned(),
            metric: metric.to_owned(),
            value,
            unit,
            baseline: None,
            ratio: None,
            target: None,
            target_met: None,
            note: String::new(),
        }
    }

    /// Adds the baseline's number (and so a ratio).
    pub fn baseline(mut self, baseline: Option<f64>) -> Self {
        self.baseline = baseline;
        self.ratio = baseline.filter(|b| *b != 0.0).map(|b| self.value / b);
        self.target_met = self.target.and_then(|t| t.met(self.value, self.ratio));
        self
    }

    /// Adds the goal.
    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self.target_met = target.met(self.value, self.ratio);
        self
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where and when.
    pub machine: Machine,
    /// Whether the quick sizes were used.
    pub quick: bool,
    /// The numbers, in the order measured.
    pub rows: Vec<Row>,
    /// Scenarios that failed, with why.
    pub failures: Vec<String>,
    /// Wall time of the whole run, seconds.
    pub duration_secs: f64,
    /// The pictures, in the order drawn (not in the JSON).
    #[serde(skip)]
    pub charts: Vec<Chart>,
}

impl Report {
    /// An empty report for this machine.
    pub fn new(quick: bool) -> Self {
        Self {
            machine: Machine::probe(),
            quick,
            rows: Vec::new(),
            failures: Vec::new(),
            duration_secs: 0.0,
            charts: Vec::new(),
        }
    }

    /// Adds a picture, its footer naming the machine, date and commit. A
    /// picture of the same name drawn earlier in the run is replaced.
    pub fn chart(&mut self, mut chart: Chart) {
        let quick = if self.quick { " --quick" } else { "" };
        chart.footer(&format!(
            "gpush-bench{quick} on {}",
            self.machine.describe()
        ));
        eprintln!("  -> chart {}", chart.name);
        self.charts.retain(|c| c.name != chart.name);
        self.charts.push(chart);
    }

    /// Writes every picture to `<dir>/<name>.svg` (creating `dir`);
    /// returns the paths written.
    pub fn write_charts(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        if self.charts.is_empty() {
            return Ok(Vec::new());
        }
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        for chart in &self.charts {
            let path = dir.join(format!("{}.svg", chart.name));
            std::fs::write(&path, &chart.svg)?;
            written.push(path);
        }
        Ok(written)
    }

    /// Adds a row and echoes it to stderr as progress.
    pub fn add(&mut self, row: Row) {
        eprintln!(
            "  -> {} {} {}: {}",
            row.scenario,
            row.system,
            row.metric,
            row.unit.format(row.value)
        );
        self.rows.push(row);
    }

    /// The machine header.
    pub fn header(&self) -> String {
        let m = &self.machine;
        format!(
            "gpush-bench{} — {}{}\nmachine: {} CPUs ({}), {:.1} GiB RAM, Linux {}",
            if self.quick { " --quick" } else { "" },
            m.date,
            m.commit
                .as_deref()
                .map(|c| format!(" — commit {c}"))
                .unwrap_or_default(),
            m.cpus,
            m.cpu_model,
            m.memory_gib,
            m.kernel
        )
    }

    /// The table of every row.
    pub fn table(&self) -> String {
        let headings = [
            "scenario", "system", "metric", "value", "baseline", "ratio", "target", "", "note",
        ];
        let cells: Vec<[String; 9]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.scenario.clone(),
                    r.system.clone(),
                    r.metric.clone(),
                    r.unit.format(r.value),
                    r.baseline.map(|b| r.unit.format(b)).unwrap_or_default(),
                    r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_default(),
                    r.target.map(|t| t.describe(r.unit)).unwrap_or_default(),
                    match r.target_met {
                        Some(true) => "ok".into(),
                        Some(false) => "MISS".into(),
                        None => String::new(),
                    },
                    r.note.clone(),
                ]
            })
            .collect();
        let mut widths = headings.map(|h| h.chars().count());
        for row in &cells {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let right_aligned = [false, false, false, true, true, true, false, false, false];
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            let mut text = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                if right_aligned[i] {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad));
                }
                text.push_str("  ");
            }
            let _ = writeln!(out, "{}", text.trim_end());
        };
        line(&headings.map(str::to_owned));
        let mut previous: Option<&str> = None;
        for (row, cells) in self.rows.iter().zip(&cells) {
            if previous.is_some_and(|p| p != row.scenario) {
                line(&<[String; 9]>::default());
            }
            previous = Some(&row.scenario);
            line(cells);
        }
        for failure in &self.failures {
            let _ = writeln!(out, "FAILED: {failure}");
        }
        out
    }

    /// Writes the report as JSON.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_gregorian() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn targets_and_ratios() {
        let row = Row::new(
            "idle",
            "standalone",
            "RSS per connection",
            1800.0,
            Unit::Bytes,
        )
        .target(Target::at_most(2048.0))
        .baseline(Some(1200.0));
        assert_eq!(row.target_met, Some(true));
        assert_eq!(row.ratio, Some(1.5));
        let row = Row::new("fanout", "cluster", "deliveries/s", 600.0, Unit::PerSec)
            .baseline(Some(1000.0))
            .target(Target::ratio_at_least(0.7));
        assert_eq!(row.target_met, Some(false));
        let mut report = Report::new(true);
        report.rows.push(row);
        let table = report.table();
        assert!(table.contains("MISS"), "{table}");
        assert!(table.contains(">= 0.70x base"), "{table}");
    }

    #[test]
    fn charts_name_the_machine_and_are_written() {
        let mut report = Report::new(true);
        report.machine.cpu_model = "Test & CPU".into();
        report.chart(crate::bench::chart::lines("storm", "first", "x", "y", &[]));
        report.chart(crate::bench::chart::lines("storm", "second", "x", "y", &[]));
        assert_eq!(report.charts.len(), 1, "same name replaces");
        let svg = &report.charts[0].svg;
        assert!(svg.contains("second") && !svg.contains("first"));
        assert!(svg.contains("gpush-bench --quick on"), "{svg}");
        assert!(svg.contains("Test &amp; CPU"), "{svg}");
        assert!(svg.contains(&report.machine.date));
        let dir = std::env::temp_dir().join(format!("gpush-bench-charts-{}", std::process::id()));
        let written = report.write_charts(&dir.join("nested")).expect("write");
        assert_eq!(written, [dir.join("nested").join("storm.svg")]);
        assert_eq!(std::fs::read_to_string(&written[0]).expect("read"), *svg);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
