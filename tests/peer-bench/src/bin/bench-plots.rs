//! `bench-plots`: SVG plots of the CSV files in docs/bench-data.
//!
//! ```sh
//! cargo run --release --bin bench-plots -- --data ../../docs/bench-data --out ../../docs/img
//! ```
//!
//! * `peer-trees.csv` (written by `peer-bench`) gives `peer-trees-rates.svg`
//!   (updates, proofs generated and verified per CPU-second vs entries) and
//!   `peer-trees-proof-size.svg`.
//! * `scale.csv` (columns `devices,disk_bytes,rss_bytes,lookup_p50_us,
//!   lookup_p99_us,proof_bytes`), when present, gives `scale.svg`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use keyreg_peer_bench::csv::Table;
use keyreg_peer_bench::results::{self, entries_label, Row};
use plotters::coord::Shift;
use plotters::prelude::*;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// One line of a panel: name, colour and (x, y) points sorted by x.
struct Series {
    name: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn color(index: usize) -> RGBColor {
    PALETTE.get(index % PALETTE.len()).copied().unwrap_or(BLACK)
}

/// The x (entries, devices) of a figure's data, the same for all its
/// panels so that they line up: (min, max).
fn x_span(xs: impl Iterator<Item = f64>) -> Result<(f64, f64)> {
    let xs: Vec<f64> = xs.filter(|x| *x > 0.0).collect();
    match (
        xs.iter().copied().reduce(f64::min),
        xs.iter().copied().reduce(f64::max),
    ) {
        (Some(lo), Some(hi)) => Ok((lo, hi)),
        _ => bail!("no positive x values to plot"),
    }
}

/// A log x axis over `x_span`; y logarithmic when `log_y`, else linear from 0.
fn panel(
    area: &Area,
    title: &str,
    (x_label, x_span): (&str, (f64, f64)),
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> Result<()> {
    let points = || series.iter().flat_map(|s| s.points.iter().copied());
    if points().next().is_none() {
        bail!("{title}: no data points");
    }
    let y_max = points().map(|p| p.1).fold(f64::MIN, f64::max);
    let y_min = points().map(|p| p.1).fold(f64::MAX, f64::min);
    // Room on both sides of the data.
    let x_range = (x_span.0 / 2.0)..(x_span.1 * 2.0);
    let mut chart = ChartBuilder::on(area);
    chart
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(78);
    let x_desc = x_label.to_string();
    let y_desc = y_label.to_string();
    let style = |s: &Series| ShapeStyle::from(&s.color).stroke_width(2);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_desc.as_str())
                .y_desc(y_desc.as_str())
                .x_label_formatter(&power_of_ten_label)
                .y_label_formatter(&|y| short_number(*y))
                .label_style(("sans-serif", 14))
                .axis_desc_style(("sans-serif", 15))
                .draw()?;
            for s in series {
                chart
                    .draw_series(LineSeries::new(s.points.iter().copied(), style(s)))?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], s.color.stroke_width(2))
                    });
                chart.draw_series(
                    s.points
                        .iter()
                        .map(|&p| Circle::new(p, 4, style(s).filled())),
                )?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font(("sans-serif", 14))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }};
    }
    if log_y {
        draw!(chart.build_cartesian_2d(
            x_range.log_scale(),
            ((y_min / 3.0)..(y_max * 3.0)).log_scale()
        )?);
    } else {
        draw!(chart.build_cartesian_2d(x_range.log_scale(), 0.0..(y_max * 1.4))?);
    }
    Ok(())
}

/// "10^6" at powers of ten; other log-axis ticks stay unlabelled (their
/// long labels would overlap).
fn power_of_ten_label(x: &f64) -> String {
    let exponent = x.log10().round();
    if (x / 10f64.powf(exponent) - 1.0).abs() < 1e-6 {
        entries_label(x.round() as u64)
    } else {
        String::new()
    }
}

/// 1.2M, 35k, 640: short tick labels.
fn short_number(value: f64) -> String {
    let (scaled, suffix) = match value.abs() {
        v if v >= 1e9 => (value / 1e9, "G"),
        v if v >= 1e6 => (value / 1e6, "M"),
        v if v >= 1e3 => (value / 1e3, "k"),
        _ => (value, ""),
    };
    let digits = format!("{scaled:.2}");
    format!(
        "{}{suffix}",
        digits.trim_end_matches('0').trim_end_matches('.')
    )
}

/// The trees, ours first, then in `peer-bench`'s order, then any others.
fn trees(rows: &[Row]) -> Vec<String> {
    const ORDER: [&str; 4] = ["keyreg", "jmt-blake3", "jmt-sha256", "akd"];
    let mut names: Vec<String> = Vec::new();
    for row in rows {
        if !names.contains(&row.tree) {
            names.push(row.tree.clone());
        }
    }
    names.sort_by_key(|name| ORDER.iter().position(|o| o == name).unwrap_or(ORDER.len()));
    names
}

fn tree_series(rows: &[Row], metric: &str, unit: &str) -> Vec<Series> {
    trees(rows)
        .into_iter()
        .enumerate()
        .map(|(i, tree)| {
            let mut points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.tree == tree && r.metric == metric && r.unit == unit)
                .filter_map(|r| Some((r.entries as f64, r.value?)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                name: tree,
                color: color(i),
                points,
            }
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

fn plot_peer_trees(csv: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let rows = results::read(csv)?;
    let span = x_span(rows.iter().map(|r| r.entries as f64))?;
    let rates = out.join("peer-trees-rates.svg");
    {
        let root = SVGBackend::new(&rates, (1200, 900)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((2, 2));
        let shown = [
            ("updates_1k", "updates/s, batches of 1k existing keys"),
            ("updates_100k", "updates/s, batches of 100k existing keys"),
            (
                "proofs_generated_present",
                "proofs generated/s (present keys)",
            ),
            (
                "proofs_verified_present",
                "proofs verified/s (present keys)",
            ),
        ];
        for (area, (metric, title)) in panels.iter().zip(shown) {
            panel(
                area,
                title,
                ("entries", span),
                "per CPU-second",
                &tree_series(&rows, metric, "per_cpu_s"),
                true,
            )?;
        }
        root.present()?;
    }
    let sizes = out.join("peer-trees-proof-size.svg");
    {
        let root = SVGBackend::new(&sizes, (1200, 450)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 2));
        for (area, kind) in panels.iter().zip(["present", "absent"]) {
            let title = format!("mean proof size, {kind} keys");
            panel(
                area,
                &title,
                ("entries", span),
                "bytes",
                &tree_series(&rows, &format!("proof_bytes_{kind}"), "bytes"),
                false,
            )?;
        }
        root.present()?;
    }
    Ok(vec![rates, sizes])
}

/// `scale.csv`: devices,disk_bytes,rss_bytes,lookup_p50_us,lookup_p99_us,proof_bytes.
fn plot_scale(csv: &Path, out: &Path) -> Result<PathBuf> {
    let table = Table::read(csv)?;
    let devices = table.column("devices")?;
    let column = |name: &str, label: &str, index: usize| -> Result<Series> {
        let col = table.column(name)?;
        let mut points = Vec::with_capacity(table.rows.len());
        for row in &table.rows {
            let number = |i: usize| -> Result<f64> {
                let text = row.get(i).map_or("", String::as_str);
                text.parse()
                    .with_context(|| format!("{}: {text:?} is not a number", csv.display()))
            };
            points.push((number(devices)?, number(col)?));
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(Series {
            name: label.to_string(),
            color: color(index),
            points,
        })
    };
    let span = x_span(
        column("proof_bytes", "", 0)?
            .points
            .into_iter()
            .map(|p| p.0),
    )?;
    let path = out.join("scale.svg");
    {
        let root = SVGBackend::new(&path, (1500, 450)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 3));
        let [memory, lookup, proof] = panels.as_slice() else {
            bail!("expected three panels");
        };
        panel(
            memory,
            "disk and memory",
            ("devices", span),
            "bytes",
            &[
                column("disk_bytes", "disk", 0)?,
                column("rss_bytes", "node RSS", 1)?,
            ],
            true,
        )?;
        panel(
            lookup,
            "look-up latency",
            ("devices", span),
            "microseconds",
            &[
                column("lookup_p50_us", "p50", 2)?,
                column("lookup_p99_us", "p99", 3)?,
            ],
            true,
        )?;
        panel(
            proof,
            "proof size",
            ("devices", span),
            "bytes",
            &[column("proof_bytes", "proof", 4)?],
            false,
        )?;
        root.present()?;
    }
    Ok(path)
}

fn main() -> ExitCode {
    let mut data = PathBuf::from("docs/bench-data");
    let mut out = PathBuf::from("docs/img");
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let target = match flag.as_str() {
            "--data" => &mut data,
            "--out" => &mut out,
            _ => {
                eprintln!("unknown flag {flag}\nusage: bench-plots [--data DIR] [--out DIR]");
                return ExitCode::FAILURE;
            }
        };
        match args.next() {
            Some(value) => *target = PathBuf::from(value),
            None => {
                eprintln!("{flag} needs a value");
                return ExitCode::FAILURE;
            }
        }
    }
    let outcome = (|| -> Result<()> {
        std::fs::create_dir_all(&out)?;
        let (peer, scale) = (data.join("peer-trees.csv"), data.join("scale.csv"));
        let mut written = Vec::new();
        if peer.exists() {
            written.extend(
                plot_peer_trees(&peer, &out)
                    .with_context(|| format!("plotting {}", peer.display()))?,
            );
        } else {
            println!("{}: not there, skipped", peer.display());
        }
        if scale.exists() {
            written.push(
                plot_scale(&scale, &out)
                    .with_context(|| format!("plotting {}", scale.display()))?,
            );
        } else {
            println!("{}: not there, skipped", scale.display());
        }
        if written.is_empty() {
            bail!("no CSV file to plot in {}", data.display());
        }
        for path in written {
            println!("wrote {}", path.display());
        }
        Ok(())
    })();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-plots: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::short_number;

    #[test]
    fn only_powers_of_ten_are_labelled() {
        assert_eq!(super::power_of_ten_label(&1e6), "10^6");
        assert_eq!(super::power_of_ten_label(&2e6), "");
    }

    #[test]
    fn tick_labels_keep_their_zeros() {
        assert_eq!(short_number(100.0), "100");
        assert_eq!(short_number(1500.0), "1.5k");
        assert_eq!(short_number(2_000_000.0), "2M");
        assert_eq!(short_number(0.25), "0.25");
    }
}
