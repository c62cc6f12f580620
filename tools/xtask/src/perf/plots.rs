//! The report's SVG plots (plotters, SVG backend): a metric against x
//! (throughput against packet size, log x) with each series' median and
//! min-max, CDFs of distributions, and the ratio bars of the isolated
//! against the monolithic build.

use super::report::{number, x_value};
use super::stats::{cdf, median, percentile, ratio_of_medians, summarize};
use bench_record::Record;
use plotters::coord::combinators::LogCoord;
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// One drawn plot: its group, a file name and its title.
pub struct Plot {
    pub group: String,
    pub file: String,
    pub title: String,
    pub svg: String,
}

/// Groups whose records get ratio bars (a series against its baseline).
const RATIO_GROUPS: [&str; 1] = ["isolation"];
/// A metric is plotted against x when it has at least this many x values.
const MIN_X_VALUES: usize = 3;

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

fn failed(error: impl std::fmt::Display) -> String {
    format!("cannot draw: {error}")
}

/// Every plot the records call for, in record order.
pub fn all(records: &[Record]) -> Result<Vec<Plot>, String> {
    let mut plots = Vec::new();
    let mut seen: Vec<(String, String, bool)> = Vec::new();
    for r in records {
        let key = (r.group.clone(), r.metric.clone(), r.distribution);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let same: Vec<&Record> = records
            .iter()
            .filter(|o| {
                o.group == r.group && o.metric == r.metric && o.distribution == r.distribution
            })
            .collect();
        if r.distribution {
            plots.push(distribution_plot(&same)?);
        } else if distinct_x(&same).len() >= MIN_X_VALUES {
            plots.push(against_x_plot(&same)?);
        }
    }
    let mut groups: Vec<&str> = Vec::new();
    for r in records {
        if RATIO_GROUPS.contains(&r.group.as_str()) && !groups.contains(&r.group.as_str()) {
            groups.push(&r.group);
        }
    }
    for group in groups {
        if let Some(plot) = ratio_plot(records, group)? {
            plots.push(plot);
        }
    }
    Ok(plots)
}

fn distinct_x(records: &[&Record]) -> Vec<f64> {
    let mut xs: Vec<f64> = records.iter().filter_map(|r| r.x).collect();
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.dedup();
    xs
}

/// Series names in order of first appearance.
fn series_names(records: &[&Record]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in records {
        if !names.contains(&r.series) {
            names.push(r.series.clone());
        }
    }
    names
}

/// An x axis: logarithmic when the values span a wide positive range.
fn wants_log(low: f64, high: f64) -> bool {
    low > 0.0 && high / low >= 16.0
}

const SIZE: (u32, u32) = (900, 520);

/// A point of a line: x, y and an optional (low, high) bar.
type Point = (f64, f64, Option<(f64, f64)>);

/// Lines of (x, y) per series, each point with an optional (low, high)
/// bar.
struct Lines<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    y_range: std::ops::Range<f64>,
    series: Vec<(String, Vec<Point>)>,
    markers: bool,
    /// The y axis is a fraction (a CDF).
    fraction: bool,
    /// A logarithmic y axis (values over several orders of magnitude).
    log_y: bool,
    /// Where the legend goes: the corner the lines leave empty.
    legend: SeriesLabelPosition,
}

/// Draws the lines; a logarithmic x axis is drawn as log2 of x on a
/// linear axis, so its ticks fall on powers of two (packet sizes) and are
/// labelled with x itself.
fn draw(lines: &Lines, x_low: f64, x_high: f64) -> Result<String, String> {
    let range = lines.y_range.clone();
    if lines.log_y {
        let y: LogCoord<f64> = range.log_scale().into();
        draw_on(lines, x_low, x_high, y)
    } else {
        draw_on(lines, x_low, x_high, RangedCoordf64::from(range))
    }
}

fn draw_on<Y>(lines: &Lines, x_low: f64, x_high: f64, y: Y) -> Result<String, String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let log = wants_log(x_low, x_high);
    let map = |x: f64| if log { x.log2() } else { x };
    let (low, high) = (map(x_low), map(x_high));
    let pad = ((high - low) * 0.03).max(1e-9);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(lines.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(low - pad..high + pad, y)
            .map_err(failed)?;
        let x_label = |v: &f64| {
            if log {
                x_value(2f64.powf(*v))
            } else {
                x_value(*v)
            }
        };
        let x_ticks = if log {
            ((high - low).ceil() as usize + 1).clamp(2, 24)
        } else {
            10
        };
        let y_label = |v: &f64| {
            if lines.fraction {
                format!("{v:.1}")
            } else {
                number(*v)
            }
        };
        chart
            .configure_mesh()
            .x_desc(lines.x_desc)
            .y_desc(lines.y_desc)
            .x_labels(x_ticks)
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .draw()
            .map_err(failed)?;
        for (index, (name, points)) in lines.series.iter().enumerate() {
            let style = color(index);
            let points: Vec<Point> = points.iter().map(|&(x, y, bar)| (map(x), y, bar)).collect();
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|&(x, y, _)| (x, y)),
                    style.stroke_width(2),
                ))
                .map_err(failed)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], style.stroke_width(2))
                });
            if lines.markers {
                chart
                    .draw_series(
                        points
                            .iter()
                            .map(|&(x, y, _)| Circle::new((x, y), 3, style.filled())),
                    )
                    .map_err(failed)?;
            }
            chart
                .draw_series(points.iter().filter_map(|&(x, y, bar)| {
                    bar.map(|(low, high)| ErrorBar::new_vertical(x, low, y, high, style, 8))
                }))
                .map_err(failed)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(lines.legend.clone())
            .draw()
            .map_err(failed)?;
        root.present().map_err(failed)?;
    }
    Ok(svg)
}

/// A metric against x: each series' median with its min-max bar.
fn against_x_plot(records: &[&Record]) -> Result<Plot, String> {
    let first = records[0];
    let xs = distinct_x(records);
    let mut series = Vec::new();
    let mut y_high: f64 = 0.0;
    let mut y_low: f64 = 0.0;
    let mut y_smallest = f64::INFINITY;
    for name in series_names(records) {
        let mut points = Vec::new();
        for r in records.iter().filter(|r| r.series == name) {
            let (Some(x), Some(s)) = (r.x, summarize(&r.samples)) else {
                continue;
            };
            y_high = y_high.max(s.max);
            y_low = y_low.min(s.min);
            y_smallest = y_smallest.min(s.min);
            points.push((x, s.median, Some((s.min, s.max))));
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        series.push((name, points));
    }
    // Medians over more than about one and a half orders of magnitude
    // (Mpkt/s from 64 B to 64 KiB) get a logarithmic y axis.
    let log_y = y_smallest > 0.0 && y_high / y_smallest >= 30.0;
    let y_range = if log_y {
        y_smallest * 0.8..y_high * 1.25
    } else {
        y_low..(y_high * 1.08).max(f64::MIN_POSITIVE)
    };
    // Falling lines (packets/s against size) leave the upper right empty,
    // rising ones (bytes/s) the upper left.
    let (mut rising, mut falling) = (0, 0);
    for (_, points) in &series {
        if let (Some(first), Some(last)) = (points.first(), points.last()) {
            if last.1 < first.1 {
                falling += 1;
            } else {
                rising += 1;
            }
        }
    }
    let legend = if falling > rising {
        SeriesLabelPosition::UpperRight
    } else {
        SeriesLabelPosition::UpperLeft
    };
    let x_label = first.x_label.clone().unwrap_or_else(|| "x".into());
    let title = format!("{}: {} against {}", first.group, first.metric, x_label);
    let lines = Lines {
        title: &title,
        x_desc: &x_label,
        y_desc: &format!("{} ({}), median and min-max", first.metric, first.unit),
        y_range,
        series,
        markers: true,
        fraction: false,
        log_y,
        legend,
    };
    let svg = draw(&lines, xs[0], xs[xs.len() - 1])?;
    Ok(Plot {
        group: first.group.clone(),
        file: format!("{}-{}.svg", slug(&first.group), slug(&first.metric)),
        title,
        svg,
    })
}

/// At most this many points of a CDF are drawn (evenly spaced ranks,
/// the first and the last kept): the curve looks the same and a plot of
/// 20 000 latencies stays small.
const CDF_POINTS: usize = 400;

fn thin(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    if points.len() <= CDF_POINTS {
        return points;
    }
    let last = points.len() - 1;
    (0..CDF_POINTS)
        .map(|k| points[(k * last).div_ceil(CDF_POINTS - 1)])
        .collect()
}

/// The CDF of every distribution of one metric (a series per record).
fn distribution_plot(records: &[&Record]) -> Result<Plot, String> {
    let first = records[0];
    let mut series = Vec::new();
    let (mut low, mut high) = (f64::INFINITY, f64::NEG_INFINITY);
    for r in records {
        if r.samples.is_empty() {
            continue;
        }
        let points: Vec<Point> = thin(cdf(&r.samples))
            .into_iter()
            .map(|(v, f)| (v, f, None))
            .collect();
        low = low.min(points[0].0);
        high = high.max(points[points.len() - 1].0);
        let label = match (r.x, &r.x_label) {
            (Some(x), Some(l)) => format!("{} ({l} {})", r.series, x_value(x)),
            _ => r.series.clone(),
        };
        let p50 = percentile(&r.samples, 50.0).unwrap_or_default();
        let p99 = percentile(&r.samples, 99.0).unwrap_or_default();
        series.push((
            format!(
                "{label}: p50 {} p99 {} {}",
                number(p50),
                number(p99),
                r.unit
            ),
            points,
        ));
    }
    if series.is_empty() {
        return Err(format!(
            "{}: {}: no observations",
            first.group, first.metric
        ));
    }
    if low >= high {
        // A single value: a visible width around it.
        let width = low.abs().max(1.0) * 0.05;
        low -= width;
        high += width;
    }
    let title = format!("{}: {} (CDF)", first.group, first.metric);
    let lines = Lines {
        title: &title,
        x_desc: &format!("{} ({})", first.metric, first.unit),
        y_desc: "fraction of observations at or below",
        y_range: 0.0..1.02,
        log_y: false,
        // A CDF climbs to the upper right.
        legend: SeriesLabelPosition::LowerRight,
        series,
        markers: false,
        fraction: true,
    };
    let svg = draw(&lines, low, high)?;
    Ok(Plot {
        group: first.group.clone(),
        file: format!("{}-{}-cdf.svg", slug(&first.group), slug(&first.metric)),
        title,
        svg,
    })
}

/// Bars of the ratio of each series to its baseline in one group (ratio
/// of medians; of p50 for distributions), with a line at 1.
fn ratio_plot(records: &[Record], group: &str) -> Result<Option<Plot>, String> {
    let mut bars: Vec<(String, f64)> = Vec::new();
    for r in records.iter().filter(|r| r.group == group) {
        let Some(name) = &r.baseline else { continue };
        let Some(base) = records.iter().find(|b| {
            b.group == r.group && &b.series == name && b.metric == r.metric && b.x == r.x
        }) else {
            continue;
        };
        let ratio = if r.distribution {
            match (median(&r.samples), median(&base.samples)) {
                (Some(a), Some(b)) if b != 0.0 => Some(a / b),
                _ => None,
            }
        } else {
            ratio_of_medians(&r.samples, &base.samples)
        };
        let Some(ratio) = ratio else { continue };
        let at = match (r.x, &r.x_label) {
            (Some(x), Some(label)) => format!(", {label} {}", x_value(x)),
            (Some(x), None) => format!(", {}", x_value(x)),
            _ => String::new(),
        };
        let better = if r.higher_is_better {
            "higher"
        } else {
            "lower"
        };
        bars.push((
            format!(
                "{}{at}: {} / {name} = {ratio:.3} ({better} is better)",
                r.metric, r.series
            ),
            ratio,
        ));
    }
    if bars.is_empty() {
        return Ok(None);
    }
    let title = format!("{group}: each series against its baseline (ratio of medians)");
    let top = bars.iter().map(|b| b.1).fold(1.0f64, f64::max) * 1.1;
    let height = 90 + 34 * bars.len() as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (SIZE.0, height)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(10)
            .build_cartesian_2d(0.0..top, 0.0..bars.len() as f64)
            .map_err(failed)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc("ratio")
            .x_label_formatter(&|v| format!("{v:.1}"))
            .draw()
            .map_err(failed)?;
        let rows = bars.len() as f64;
        for (index, (label, ratio)) in bars.iter().enumerate() {
            let y = rows - index as f64 - 1.0;
            let style = color(index);
            chart
                .draw_series([Rectangle::new(
                    [(0.0, y + 0.15), (*ratio, y + 0.85)],
                    style.mix(0.5).filled(),
                )])
                .map_err(failed)?;
            chart
                .draw_series([Text::new(
                    label.clone(),
                    (top * 0.01, y + 0.62),
                    ("sans-serif", 14).into_font(),
                )])
                .map_err(failed)?;
        }
        chart
            .draw_series(LineSeries::new(
                [(1.0, 0.0), (1.0, rows)],
                BLACK.stroke_width(2),
            ))
            .map_err(failed)?;
        root.present().map_err(failed)?;
    }
    Ok(Some(Plot {
        group: group.to_string(),
        file: format!("{}-ratios.svg", slug(group)),
        title,
        svg,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Vec<Record> {
        let mut records = Vec::new();
        for (series, scale) in [("ours", 1.0), ("memcpy", 3.0), ("cross-core copy", 2.0)] {
            for size in [64.0, 1024.0, 16384.0] {
                records.push(
                    Record::new("ring", series, "throughput", "GB/s", true)
                        .x(size, "packet size (B)")
                        .baseline("cross-core copy")
                        .samples(&[scale * size / 1000.0, scale * size / 900.0]),
                );
            }
        }
        records
    }

    #[test]
    fn throughput_against_packet_size_has_every_series_on_a_log_axis() {
        let plots = all(&ring()).unwrap();
        assert_eq!(plots.len(), 1);
        let plot = &plots[0];
        assert_eq!(plot.file, "ring-throughput.svg");
        assert!(plot.svg.starts_with("<svg"), "{}", &plot.svg[..80]);
        for series in ["ours", "memcpy", "cross-core copy"] {
            assert!(
                plot.svg.contains(&format!(">{series}<"))
                    || plot.svg.contains(&format!(">\n{series}\n<")),
                "no {series} in the legend"
            );
        }
        // The log axis labels its decades' ends: 64 and 16384 span 256x.
        assert!(wants_log(64.0, 16384.0));
        assert!(plot.svg.contains("packet size (B)"));
    }

    #[test]
    fn too_few_x_values_make_no_plot_against_x() {
        let two: Vec<Record> = ring()
            .into_iter()
            .filter(|r| r.x != Some(16384.0))
            .collect();
        assert!(all(&two).unwrap().is_empty());
    }

    #[test]
    fn distributions_get_a_cdf_with_their_percentiles_in_the_legend() {
        let observations: Vec<f64> = (1..=100).map(f64::from).collect();
        let records = [
            Record::new("restart", "hosted", "restart latency", "ms", false)
                .distribution(&observations),
            Record::new("restart", "qemu", "restart latency", "ms", false).distribution(&[5.0]),
        ];
        let plots = all(&records).unwrap();
        assert_eq!(plots.len(), 1);
        assert_eq!(plots[0].file, "restart-restart-latency-cdf.svg");
        assert!(
            plots[0].svg.contains("hosted: p50 50.00 p99 99.00 ms"),
            "{}",
            plots[0].svg
        );
        assert!(plots[0].svg.contains("qemu: p50 5.00 p99 5.00 ms"));
    }

    #[test]
    fn isolation_gets_ratio_bars() {
        let records = [
            Record::new("isolation", "isolated", "IC round trip", "us", false)
                .baseline("monolithic")
                .samples(&[12.0, 10.0, 11.0]),
            Record::new("isolation", "monolithic", "IC round trip", "us", false)
                .samples(&[5.0, 5.0, 5.0]),
        ];
        let plots = all(&records).unwrap();
        assert_eq!(plots.len(), 1);
        assert_eq!(plots[0].file, "isolation-ratios.svg");
        assert!(
            plots[0]
                .svg
                .contains("IC round trip: isolated / monolithic = 2.200 (lower is better)"),
            "{}",
            plots[0].svg
        );
    }

    #[test]
    fn long_cdfs_are_thinned_to_evenly_spaced_ranks_with_both_ends() {
        let many: Vec<(f64, f64)> = (0..20_000)
            .map(|i| (i as f64, (i + 1) as f64 / 20_000.0))
            .collect();
        let thinned = thin(many.clone());
        assert_eq!(thinned.len(), CDF_POINTS);
        assert_eq!(thinned[0], many[0]);
        assert_eq!(thinned[CDF_POINTS - 1], many[19_999]);
        assert!(thinned.windows(2).all(|w| w[0].0 < w[1].0));
        let few = many[..10].to_vec();
        assert_eq!(thin(few.clone()), few);
    }

    #[test]
    fn file_names_are_slugs() {
        assert_eq!(slug("4 KiB random read, QD1"), "4-kib-random-read-qd1");
    }
}
