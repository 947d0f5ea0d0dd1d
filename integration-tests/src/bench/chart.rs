//! Pictures of a run: SVG charts drawn with `plotters` (its SVG backend
//! only: no font files, no raster images), one per scenario, written next
//! to each other at the end of the run (`--charts DIR`).
//!
//! A scenario builds a [`Chart`] with [`latency`] (latency distributions
//! from [`Histogram`]s, several systems in one picture) or [`lines`] (any
//! y against x, e.g. memory against connections) and hands it to
//! [`Report::chart`](crate::bench::report::Report::chart), which writes the
//! machine, the date and the commit into its footer: a picture never
//! travels without the machine it was measured on.

use crate::bench::histogram::Histogram;
use plotters::coord::Shift;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use std::ops::Range;

/// Picture size, pixels.
const WIDTH: u32 = 880;
/// Picture height, pixels, footer included.
const HEIGHT: u32 = 500;
/// Height of the footer line below the plot, pixels.
const FOOTER: u32 = 26;
/// Font size of the footer line, pixels.
const FOOTER_FONT: f64 = 12.0;
/// The percentile axis runs from 0 to 1 - 10^-NINES (99.99 %).
const NINES: f64 = 4.0;
/// Points sampled per latency curve.
const STEPS: u32 = 200;
/// Series with at most this many points also get a marker on each point
/// (a single point has no line).
const MARKED: usize = 60;
/// Series colours (Okabe-Ito: told apart with colour-blindness too).
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// One picture: its file stem and its SVG text.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// File stem: the scenario's name, or `<scenario>-<what>` when a
    /// scenario draws two pictures.
    pub name: String,
    /// The SVG document.
    pub svg: String,
}

impl Chart {
    /// Writes `text` on the footer line (left to blank when drawn), e.g.
    /// the machine the figures come from.
    pub fn footer(&mut self, text: &str) {
        // Squeezed to the picture's width when an average sans-serif glyph
        // (~0.6 em) would run past it.
        let room = f64::from(WIDTH - 24);
        let fit = if text.chars().count() as f64 * 0.6 * FOOTER_FONT > room {
            format!(" textLength=\"{room}\" lengthAdjust=\"spacingAndGlyphs\"")
        } else {
            String::new()
        };
        let line = format!(
            "<text x=\"12\" y=\"{}\" font-family=\"sans-serif\" font-size=\"{FOOTER_FONT}\" fill=\"#444444\"{fit}>{}</text>\n",
            HEIGHT - 9,
            escape(text)
        );
        match self.svg.rfind("</svg>") {
            Some(end) => self.svg.insert_str(end, &line),
            None => self.svg.push_str(&line),
        }
    }
}

/// One line of a [`lines`] chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// `(x, y)` points, drawn in this order; points that are not finite
    /// are left out.
    pub points: Vec<(f64, f64)>,
}

/// Latency distributions, one curve per `(label, histogram)`: latency (ms,
/// log scale) against percentile on a "nines" axis (0, 90, 99, 99.9,
/// 99.99), so the median and the tail are both visible. Each legend entry
/// names its sample count and maximum; an empty histogram is listed as
/// such and draws no curve.
pub fn latency(name: &str, title: &str, series: &[(&str, &Histogram)]) -> Chart {
    let curves: Vec<Series> = series
        .iter()
        .map(|(label, h)| {
            if h.count() == 0 {
                return Series {
                    label: format!("{label} (no samples)"),
                    points: Vec::new(),
                };
            }
            let points = (0..=STEPS)
                .map(|i| {
                    let x = NINES * f64::from(i) / f64::from(STEPS);
                    let q = 1.0 - 10f64.powf(-x);
                    (x, h.quantile(q) as f64 / 1000.0)
                })
                .collect();
            Series {
                label: format!(
                    "{label} (n = {}, max {} ms)",
                    thousands(h.count()),
                    number(h.max() as f64 / 1000.0)
                ),
                points,
            }
        })
        .collect();
    render(name, |area| draw_latency(area, title, &curves))
}

/// A line chart of `series` (y against x, both linear, each from 0 when
/// none of its values is negative), with a marker on each point of short series.
pub fn lines(name: &str, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Chart {
    render(name, |area| {
        draw_lines(area, title, x_label, y_label, series)
    })
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Draws with `draw` on a white picture whose bottom [`FOOTER`] pixels are
/// left for [`Chart::footer`]. A drawing error becomes a picture saying so
/// (plotters only fails on I/O, which a string does not do).
fn render(name: &str, draw: impl FnOnce(&Area<'_>) -> DrawResult) -> Chart {
    let mut svg = String::new();
    let drawn = {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(Into::into)
            .and_then(|()| {
                let (plot, _footer) = root.split_vertically(HEIGHT - FOOTER);
                draw(&plot)
            })
            .and_then(|()| root.present().map_err(Into::into))
    };
    if let Err(e) = drawn {
        svg = format!(
            "<svg width=\"{WIDTH}\" height=\"{HEIGHT}\" xmlns=\"http://www.w3.org/2000/svg\">\n\
             <text x=\"12\" y=\"40\" font-family=\"sans-serif\" font-size=\"14\">chart {} failed: {}</text>\n</svg>\n",
            escape(name),
            escape(&e.to_string())
        );
    }
    Chart {
        name: name.to_owned(),
        svg,
    }
}

fn draw_latency(area: &Area<'_>, title: &str, curves: &[Series]) -> DrawResult {
    let values = curves.iter().flat_map(|s| finite(&s.points)).map(|p| p.1);
    let y = log_range(values);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(14)
        .margin_right(34)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..NINES, y.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile (log scale: each step one more nine)")
        .y_desc("latency, ms (log scale)")
        .x_labels(NINES as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| number(*y))
        .light_line_style(RGBColor(240, 240, 240))
        .draw()?;
    plot(&mut chart, curves, false)
}

fn draw_lines(
    area: &Area<'_>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> DrawResult {
    let xs = linear_range(
        series.iter().flat_map(|s| finite(&s.points)).map(|p| p.0),
        true,
    );
    let ys = linear_range(
        series.iter().flat_map(|s| finite(&s.points)).map(|p| p.1),
        true,
    );
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(14)
        .margin_right(34)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(xs, ys)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|x| number(*x))
        .y_label_formatter(&|y| number(*y))
        .light_line_style(RGBColor(240, 240, 240))
        .draw()?;
    plot(&mut chart, series, true)
}

/// Draws every series with its legend entry; `marks` puts a dot on each
/// point of short series.
fn plot<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: &[Series],
    marks: bool,
) -> DrawResult
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let points: Vec<(f64, f64)> = finite(&s.points).collect();
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(points.clone(), style))?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
        if marks && points.len() <= MARKED {
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        }
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()?;
    }
    Ok(())
}

/// The finite points of `points`.
fn finite(points: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
}

/// An axis range holding every value, from 0 when `from_zero` and none is
/// negative; never empty (0..1 without values).
fn linear_range(values: impl Iterator<Item = f64>, from_zero: bool) -> Range<f64> {
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return 0.0..1.0;
    }
    if from_zero && lo >= 0.0 {
        lo = 0.0;
    }
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let pad = (hi.abs() * 0.1).max(1.0);
        return (lo - pad)..(hi + pad);
    }
    if from_zero {
        hi += (hi - lo) * 0.05;
    }
    lo..hi
}

/// A log axis range from the power of ten at or below the smallest
/// positive value to the one above the largest; 0.01..10 without values.
fn log_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return 0.01..10.0;
    }
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    lo..hi
}

/// The percentile at "nines" position `x`: 0 -> "0", 1 -> "90", 2 -> "99",
/// 3 -> "99.9".
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.round() as i32 - 2).clamp(0, 4) as usize;
    format!("{p:.decimals$}")
}

/// A compact number for an axis: at most 3 significant digits, no
/// trailing zeros, thousands as k and millions as M.
fn number(v: f64) -> String {
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let digits = if scaled.abs() >= 100.0 || scaled == 0.0 {
        0
    } else {
        (2 - scaled.abs().log10().floor() as i32).clamp(0, 4) as usize
    };
    let mut text = format!("{scaled:.digits$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    text + suffix
}

/// `n` with thousands separators.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `text` safe inside an XML element.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that `svg` is well-formed XML as far as a chart needs:
    /// balanced tags, quoted attributes, no raw `<` or `&` in text, one
    /// root `<svg>`. Returns the text content.
    fn well_formed(svg: &str) -> String {
        let mut stack: Vec<&str> = Vec::new();
        let mut text = String::new();
        let mut rest = svg;
        let mut roots = 0;
        while let Some(open) = rest.find('<') {
            let content = &rest[..open];
            check_text(content);
            text.push_str(content);
            rest = &rest[open + 1..];
            let close = rest.find('>').expect("unterminated tag");
            let tag = &rest[..close];
            rest = &rest[close + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name.trim()), "mismatched </{name}>");
                continue;
            }
            assert_eq!(
                tag.matches('"').count() % 2,
                0,
                "unbalanced quotes in <{tag}>"
            );
            let name = tag
                .split_whitespace()
                .next()
                .expect("empty tag")
                .trim_end_matches('/');
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':'),
                "bad tag name {name:?}"
            );
            if stack.is_empty() {
                assert_eq!(name, "svg");
                roots += 1;
            }
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        check_text(rest);
        assert!(stack.is_empty(), "unclosed {stack:?}");
        assert_eq!(roots, 1);
        text
    }

    fn check_text(text: &str) {
        let mut rest = text;
        while let Some(amp) = rest.find('&') {
            rest = &rest[amp + 1..];
            let end = rest.find(';').expect("bare &");
            assert!(
                ["amp", "lt", "gt", "quot", "apos"].contains(&&rest[..end]),
                "unknown entity &{};",
                &rest[..end]
            );
        }
        assert!(!text.contains('>'), "raw > in text {text:?}");
    }

    fn histogram(values: impl IntoIterator<Item = u64>) -> Histogram {
        let mut h = Histogram::default();
        for v in values {
            h.record(v);
        }
        h
    }

    #[test]
    fn latency_chart_names_series_axes_and_machine() {
        let fast = histogram((1..=10_000).map(|i| 500 + i % 700));
        let slow = histogram((1..=10_000).map(|i| 2_000 + (i * 37) % 90_000));
        let mut chart = latency(
            "latency",
            "push to receive",
            &[("gpush <standalone>", &fast), ("baseline & co", &slow)],
        );
        chart.footer("2 CPUs (Test CPU), 3.9 GiB RAM — 2026-01-01");
        assert_eq!(chart.name, "latency");
        let text = well_formed(&chart.svg);
        for needle in [
            "push to receive",
            "gpush &lt;standalone&gt; (n = 10,000",
            "baseline &amp; co",
            "latency, ms (log scale)",
            "percentile",
            "99.99",
            "2 CPUs (Test CPU)",
        ] {
            assert!(chart.svg.contains(needle), "{needle:?} missing");
        }
        assert!(!chart.svg.contains("NaN") && !chart.svg.contains("inf"));
        assert!(text.contains("99.9"));
    }

    #[test]
    fn empty_and_single_inputs_draw_without_nan() {
        let empty = Histogram::default();
        let one = histogram([1234]);
        let zero = histogram([0]);
        let charts = [
            latency("a", "nothing", &[]),
            latency("b", "empty", &[("nobody", &empty)]),
            latency("c", "one", &[("one", &one), ("zero", &zero)]),
            lines("d", "nothing", "x", "y", &[]),
            lines(
                "e",
                "one point",
                "connections",
                "MiB",
                &[Series {
                    label: "edge".into(),
                    points: vec![(5.0, 7.0)],
                }],
            ),
            lines(
                "f",
                "not finite",
                "x",
                "y",
                &[
                    Series {
                        label: "bad".into(),
                        points: vec![(f64::NAN, 1.0), (1.0, f64::INFINITY), (2.0, -3.0)],
                    },
                    Series {
                        label: "empty".into(),
                        points: Vec::new(),
                    },
                ],
            ),
        ];
        for mut chart in charts {
            chart.footer("machine");
            well_formed(&chart.svg);
            assert!(!chart.svg.contains("NaN"), "{}: NaN", chart.name);
            assert!(!chart.svg.contains("inf"), "{}: inf", chart.name);
            assert!(
                !chart.svg.contains("failed"),
                "{}: {}",
                chart.name,
                chart.svg
            );
            assert!(chart.svg.contains("machine"));
        }
    }

    #[test]
    fn lines_chart_has_labels_and_markers() {
        let series = [
            Series {
                label: "RSS".into(),
                points: (1..=10)
                    .map(|i| (i as f64 * 1e5, i as f64 * 300.0))
                    .collect(),
            },
            Series {
                label: "kernel".into(),
                points: (1..=10)
                    .map(|i| (i as f64 * 1e5, i as f64 * 200.0))
                    .collect(),
            },
        ];
        let chart = lines("scale-memory", "memory", "connections", "MiB", &series);
        well_formed(&chart.svg);
        for needle in ["memory", "connections", "MiB", "RSS", "kernel", "1M"] {
            assert!(chart.svg.contains(needle), "{needle:?} missing");
        }
        assert!(chart.svg.contains("<circle"));
    }

    #[test]
    fn axis_numbers_and_ranges() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(0.01), "0.01");
        assert_eq!(number(250_000.0), "250k");
        assert_eq!(number(1_000_000.0), "1M");
        assert_eq!(number(123.456), "123");
        assert_eq!(percentile_label(0.0), "0");
        assert_eq!(percentile_label(2.0), "99");
        assert_eq!(percentile_label(4.0), "99.99");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(log_range([0.3, 42.0].into_iter()), 0.1..100.0);
        assert_eq!(log_range([1.0].into_iter()), 1.0..10.0);
        assert_eq!(linear_range([3.0].into_iter(), false), 2.0..4.0);
        let r = linear_range([3.0].into_iter(), true);
        assert!(r.start == 0.0 && (r.end - 3.15).abs() < 1e-9, "{r:?}");
        assert_eq!(linear_range(std::iter::empty(), true), 0.0..1.0);
    }
}
