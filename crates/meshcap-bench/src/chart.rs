//! The picture of a run: `scripts/bench.sh` writes it next to the JSON report and
//! docs/BENCHMARKS.md shows it. Left, the ADD and DEL latency distributions of every mode
//! against the exec baseline, per pod shape (box: p25 to p75, whiskers: p5 to p95, bar: the
//! median); right, the ratios the targets are stated in (below 1 is faster than the
//! baseline; the fast path's figures are its gain over rules alone, above 1 is better).
//!
//! Drawn with plotters' SVG backend only: no font or system library, the text is left to
//! whatever shows the SVG.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::stats::percentile;

/// What the eBPF fast-path bench (`cargo bench -p meshcap-fastpath --bench fastpath` with
/// `MESHCAP_BENCH_JSON`) reports: medians of interleaved runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FastPath {
    pub round_trip_us_rules: f64,
    pub round_trip_us_fast: f64,
    pub throughput_mib_s_rules: f64,
    pub throughput_mib_s_fast: f64,
    /// Rules-only round-trip time over the fast path's: the gain in round trips per second.
    pub round_trip_ratio: f64,
    /// Fast-path throughput over rules-only throughput.
    pub throughput_ratio: f64,
    /// Interleaved runs per mode.
    #[serde(default)]
    pub runs: Option<usize>,
    /// The CPU the app and the sidecar were pinned to (`MESHCAP_BENCH_CPU`), if any.
    #[serde(default)]
    pub pinned_cpu: Option<usize>,
}

/// One box of the left panel.
struct Row {
    label: String,
    color: RGBColor,
    /// p5, p25, median, p75, p95.
    q: [f64; 5],
}

fn color(mode: &str) -> RGBColor {
    match mode {
        "baseline" => RGBColor(120, 120, 120),
        "iptables" => RGBColor(230, 126, 34),
        _ => RGBColor(41, 128, 185),
    }
}

fn quantiles(samples: &[f64]) -> Option<[f64; 5]> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Some([5.0, 25.0, 50.0, 75.0, 95.0].map(|p| percentile(&v, p)))
}

fn rows(report: &Value) -> Vec<Row> {
    let mut rows = Vec::new();
    let shapes = report["add"]["shapes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (what, key) in [("ADD", "modes"), ("DEL", "del")] {
        for shape in &shapes {
            let name = shape["shape"].as_str().unwrap_or("?");
            for m in shape[key].as_array().into_iter().flatten() {
                let mode = m["mode"].as_str().unwrap_or("?");
                let samples: Vec<f64> = m["samples_ms"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64)
                    .collect();
                if let Some(q) = quantiles(&samples) {
                    rows.push(Row {
                        label: format!("{what} {name} {mode}"),
                        color: color(mode),
                        q,
                    });
                }
            }
        }
    }
    rows
}

/// One bar of the right panel: what, the ratio, whether below 1 is better, and the target
/// docs/BENCHMARKS.md states for it.
type Ratio = (String, f64, bool, Option<f64>);

/// The ratios of a run, with their targets.
fn ratios(report: &Value, fast: Option<&FastPath>) -> Vec<Ratio> {
    let mut out = Vec::new();
    for shape in report["add"]["shapes"].as_array().into_iter().flatten() {
        let name = shape["shape"].as_str().unwrap_or("?");
        for mode in ["nftables", "iptables"] {
            if let Some(r) = shape["ratios"][format!("{mode}/baseline median")].as_f64() {
                let target = match (mode, name) {
                    ("nftables", "dual-stack") => 0.20,
                    ("nftables", _) => 0.35,
                    _ => 1.0,
                };
                out.push((
                    format!("{mode} ADD / baseline, {name}"),
                    r,
                    true,
                    Some(target),
                ));
            }
        }
        if let Some(r) = shape["ratios"]["iptables DEL/ADD median"].as_f64() {
            out.push((format!("iptables DEL / ADD, {name}"), r, true, Some(1.5)));
        }
    }
    for m in report["parallel"]["modes"].as_array().into_iter().flatten() {
        let Some(r) = m["wall_over_cpu_bound_median"].as_f64() else {
            continue;
        };
        if m["mode"] == "nftables" {
            out.push((
                "nftables burst wall / CPU floor".to_owned(),
                r,
                true,
                Some(1.3),
            ));
        } else if m["mode"] == "control" {
            // No target: what the harness alone gives a plugin of that CPU.
            out.push(("control burst wall / CPU floor".to_owned(), r, true, None));
        }
    }
    if let Some(r) = report["scale"]["p99_last_over_first"].as_f64() {
        out.push(("scale: p99 last / first".to_owned(), r, true, Some(1.1)));
    }
    if let Some(f) = fast {
        out.push((
            "fast path round trips / rules".to_owned(),
            f.round_trip_ratio,
            false,
            Some(1.5),
        ));
        out.push((
            "fast path throughput / rules".to_owned(),
            f.throughput_ratio,
            false,
            Some(1.5),
        ));
    }
    out
}

type DrawResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn draw(svg: &mut String, report: &Value, fast: Option<&FastPath>) -> DrawResult<()> {
    let rows = rows(report);
    let ratios = ratios(report, fast);
    let height = (60 + 26 * rows.len().max(ratios.len()).max(6)) as u32;
    let root = SVGBackend::with_string(svg, (1200, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(720);

    let n = rows.len().max(1);
    // Log scale: a fast ADD (1-2 ms), the baseline (5-10 ms) and a DEL that waits on the
    // kernel (10-40 ms) all stay readable.
    let xmax = rows.iter().map(|r| r.q[4]).fold(1.0, f64::max) * 1.3;
    let xmin = rows.iter().map(|r| r.q[0]).fold(xmax, f64::min).max(0.05) / 1.3;
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    let row_label = move |y: &f64| {
        let i = y.round();
        if (y - i).abs() > 0.01 || i < 0.0 {
            return String::new();
        }
        // Row 0 is drawn at the top.
        labels
            .len()
            .checked_sub(1 + i as usize)
            .and_then(|k| labels.get(k))
            .cloned()
            .unwrap_or_default()
    };
    let mut chart = ChartBuilder::on(&left)
        .caption("Latency, whole process (ms)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(190)
        .build_cartesian_2d((xmin..xmax).log_scale(), -0.5f64..(n as f64 - 0.5))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&row_label)
        .x_label_formatter(&|x| format!("{x}"))
        .x_desc("ms, log scale (box p25-p75, whiskers p5-p95, bar median)")
        .draw()?;
    for (i, row) in rows.iter().enumerate() {
        let y = (n - 1 - i) as f64;
        let [p5, p25, p50, p75, p95] = row.q;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(p25, y - 0.3), (p75, y + 0.3)],
            row.color.mix(0.35).filled(),
        )))?;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(p25, y - 0.3), (p75, y + 0.3)],
            row.color.stroke_width(1),
        )))?;
        for seg in [
            vec![(p5, y), (p25, y)],
            vec![(p75, y), (p95, y)],
            vec![(p5, y - 0.15), (p5, y + 0.15)],
            vec![(p95, y - 0.15), (p95, y + 0.15)],
        ] {
            chart.draw_series(std::iter::once(PathElement::new(seg, row.color)))?;
        }
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(p50, y - 0.3), (p50, y + 0.3)],
            row.color.stroke_width(3),
        )))?;
    }

    let m = ratios.len().max(1);
    let rmax = ratios
        .iter()
        .map(|r| r.1.max(r.3.unwrap_or(0.0)))
        .fold(1.6, f64::max)
        * 1.12;
    let names: Vec<String> = ratios.iter().map(|r| r.0.clone()).collect();
    let ratio_label = move |y: &f64| {
        let i = y.round();
        if (y - i).abs() > 0.01 || i < 0.0 {
            return String::new();
        }
        names
            .len()
            .checked_sub(1 + i as usize)
            .and_then(|k| names.get(k))
            .cloned()
            .unwrap_or_default()
    };
    let mut chart = ChartBuilder::on(&right)
        .caption("Ratios (medians of one run)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(215)
        .build_cartesian_2d(0f64..rmax, -0.5f64..(m as f64 - 0.5))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(m)
        .y_label_formatter(&ratio_label)
        .x_desc("ratio (black line: 1.0, red tick: the target)")
        .draw()?;
    for (i, (_, r, lower_is_better, target)) in ratios.iter().enumerate() {
        let y = (m - 1 - i) as f64;
        let c = if *lower_is_better {
            RGBColor(41, 128, 185)
        } else {
            RGBColor(39, 174, 96)
        };
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, y - 0.3), (*r, y + 0.3)],
            c.mix(0.6).filled(),
        )))?;
        if let Some(t) = target {
            // The target: a red tick across the bar's row.
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(*t, y - 0.42), (*t, y + 0.42)],
                RED.stroke_width(2),
            )))?;
        }
        chart.draw_series(std::iter::once(Text::new(
            format!("{r:.2}"),
            (*r + rmax * 0.01, y + 0.15),
            ("sans-serif", 12),
        )))?;
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, -0.5), (1.0, m as f64 - 0.5)],
        BLACK.stroke_width(1),
    )))?;
    root.present()?;
    Ok(())
}

/// The SVG of `report` (the JSON meshcap-bench writes) and, when given, the fast path's
/// figures.
pub fn render(report: &Value, fast: Option<&FastPath>) -> Result<String> {
    let mut svg = String::new();
    draw(&mut svg, report, fast).map_err(|e| anyhow!("drawing the chart: {e}"))?;
    Ok(svg)
}

/// Reads the fast path's JSON report.
pub fn read_fast_path(path: &Path) -> Result<FastPath> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_every_row_and_ratio() {
        let lat = |mode: &str, v: &[f64]| json!({"mode": mode, "samples_ms": v});
        let report = json!({
            "add": {"shapes": [{
                "shape": "dual-stack",
                "modes": [lat("baseline", &[8.0, 9.0, 10.0]), lat("nftables", &[1.0, 1.5, 2.0])],
                "del": [lat("nftables", &[3.0, 4.0])],
                "ratios": {"nftables/baseline median": 0.17, "iptables DEL/ADD median": 1.4}
            }]},
            "parallel": {"modes": [{"mode": "nftables", "wall_over_cpu_bound_median": 1.2}]},
            "scale": {"p99_last_over_first": 0.9}
        });
        let fast = FastPath {
            round_trip_us_rules: 80.0,
            round_trip_us_fast: 50.0,
            throughput_mib_s_rules: 2000.0,
            throughput_mib_s_fast: 3200.0,
            round_trip_ratio: 1.6,
            throughput_ratio: 1.6,
            runs: Some(7),
            pinned_cpu: None,
        };
        let svg = render(&report, Some(&fast)).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in [
            "ADD dual-stack baseline",
            "ADD dual-stack nftables",
            "DEL dual-stack nftables",
            "nftables ADD / baseline, dual-stack",
            "iptables DEL / ADD, dual-stack",
            "fast path round trips / rules",
            "0.17",
            "1.60",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
    }
}
