//! Result rows: the CSV in docs/bench-data/peer-trees.csv and the table.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::csv::{field, Table};

pub const HEADER: &str = "tree,entries,metric,unit,value,load_avg,note";

/// Rates: each is written twice, `per_cpu_s` (count / process CPU seconds)
/// and `per_wall_s`.
pub const RATES: [(&str, &str); 8] = [
    ("updates_1k", "updates/s, batches of 1k existing keys"),
    ("updates_100k", "updates/s, batches of 100k existing keys"),
    ("inserts_1k", "inserts/s, batches of 1k new keys"),
    ("inserts_100k", "inserts/s, batches of 100k new keys"),
    (
        "proofs_generated_present",
        "proofs generated/s, present keys",
    ),
    ("proofs_generated_absent", "proofs generated/s, absent keys"),
    ("proofs_verified_present", "proofs verified/s, present keys"),
    ("proofs_verified_absent", "proofs verified/s, absent keys"),
];

/// Sizes in bytes.
pub const SIZES: [(&str, &str); 3] = [
    (
        "proof_bytes_present",
        "proof size (bytes, mean), present keys",
    ),
    (
        "proof_bytes_absent",
        "proof size (bytes, mean), absent keys",
    ),
    ("peak_rss", "peak RSS of the run"),
];

/// A whole run's status: `ok`, or why it stopped (value left empty).
pub const RUN: &str = "run";

#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub tree: String,
    pub entries: u64,
    pub metric: String,
    pub unit: String,
    /// `None`: not measured (the note says why).
    pub value: Option<f64>,
    pub load_avg: f64,
    pub note: String,
}

impl Row {
    fn to_line(&self) -> String {
        format!(
            "{},{},{},{},{},{:.2},{}",
            self.tree,
            self.entries,
            self.metric,
            self.unit,
            self.value.map_or(String::new(), |v| format!("{v:.1}")),
            self.load_avg,
            field(&self.note)
        )
    }
}

pub fn read(path: &Path) -> Result<Vec<Row>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let table = Table::read(path)?;
    let col = |name| table.column(name);
    let (tree, entries, metric, unit, value, load, note) = (
        col("tree")?,
        col("entries")?,
        col("metric")?,
        col("unit")?,
        col("value")?,
        col("load_avg")?,
        col("note")?,
    );
    table
        .rows
        .iter()
        .map(|r| {
            let text = |i: usize| r.get(i).cloned().unwrap_or_default();
            Ok(Row {
                tree: text(tree),
                entries: text(entries).parse().context("entries")?,
                metric: text(metric),
                unit: text(unit),
                value: match text(value).as_str() {
                    "" => None,
                    v => Some(v.parse().with_context(|| format!("value {v:?}"))?),
                },
                load_avg: text(load).parse().unwrap_or(f64::NAN),
                note: text(note),
            })
        })
        .collect()
}

/// Replaces the rows of every (tree, entries) that `new` has rows for, and
/// writes the file sorted (via a temporary file, so a crash keeps the old one).
pub fn merge_into(path: &Path, new: &[Row]) -> Result<()> {
    let replaced: BTreeSet<(&str, u64)> =
        new.iter().map(|r| (r.tree.as_str(), r.entries)).collect();
    let mut rows: Vec<Row> = read(path)?
        .into_iter()
        .filter(|r| !replaced.contains(&(r.tree.as_str(), r.entries)))
        .collect();
    rows.extend_from_slice(new);
    rows.sort_by(|a, b| {
        (a.entries, &a.tree, &a.metric, &a.unit).cmp(&(b.entries, &b.tree, &b.metric, &b.unit))
    });
    let mut text = format!("{HEADER}\n");
    for row in &rows {
        text.push_str(&row.to_line());
        text.push('\n');
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("csv.tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

fn find<'a>(
    rows: &'a [Row],
    tree: &str,
    entries: u64,
    metric: &str,
    unit: &str,
) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.tree == tree && r.entries == entries && r.metric == metric && r.unit == unit)
}

/// "1 234 567": digits grouped by thousands, as in the docs.
pub fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// Entries as "10^N" when a power of ten.
pub fn entries_label(entries: u64) -> String {
    let exponent = (entries as f64).log10().round();
    if entries > 0 && 10f64.powf(exponent) as u64 == entries {
        format!("10^{exponent}")
    } else {
        grouped(entries as f64)
    }
}

/// A Markdown table per number of entries: one column per tree, rates as
/// "per CPU-second (per wall-clock second)"; notes for what is missing.
pub fn markdown(rows: &[Row], trees: &[String], sizes: &[u64]) -> String {
    let mut out = String::new();
    for &entries in sizes {
        let _ = writeln!(out, "\n**{} entries**\n", entries_label(entries));
        let _ = writeln!(out, "| | {} |", trees.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(trees.len()));
        // Why a cell is empty, numbered; the same reason gets one number.
        let mut notes: Vec<String> = Vec::new();
        let mut number = |note: String| match notes.iter().position(|n| *n == note) {
            Some(i) => i + 1,
            None => {
                notes.push(note);
                notes.len()
            }
        };
        let mut cell = |tree: &str, metric: &str, unit: &str, text: &dyn Fn(f64) -> String| {
            match find(rows, tree, entries, metric, unit) {
                Some(Row { value: Some(v), .. }) => text(*v),
                Some(Row {
                    value: None, note, ..
                }) => format!("n/a [{}]", number(note.clone())),
                // No row: the run stopped early (its status row says why) or never ran.
                None => match find(rows, tree, entries, RUN, "status") {
                    Some(Row {
                        value: None, note, ..
                    }) => {
                        format!(
                            "infeasible [{}]",
                            number(format!("{tree} at this size: {note}"))
                        )
                    }
                    _ => "-".to_string(),
                },
            }
        };
        for (metric, label) in RATES {
            let cells: Vec<String> = trees
                .iter()
                .map(|tree| {
                    let wall = find(rows, tree, entries, metric, "per_wall_s")
                        .and_then(|r| r.value)
                        .map_or(String::new(), |w| format!(" ({})", grouped(w)));
                    cell(tree, metric, "per_cpu_s", &|v| {
                        format!("{}{wall}", grouped(v))
                    })
                })
                .collect();
            let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
        }
        for (metric, label) in SIZES {
            let cells: Vec<String> = trees
                .iter()
                .map(|tree| {
                    cell(tree, metric, "bytes", &|v| {
                        if metric == "peak_rss" {
                            format!("{:.2} GB", v / 1e9)
                        } else {
                            format!("{v:.0}")
                        }
                    })
                })
                .collect();
            let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
        }
        let loads: Vec<String> = trees
            .iter()
            .map(|tree| {
                let seen: Vec<f64> = rows
                    .iter()
                    .filter(|r| r.tree == *tree && r.entries == entries && r.load_avg.is_finite())
                    .map(|r| r.load_avg)
                    .collect();
                match (
                    seen.iter().copied().reduce(f64::min),
                    seen.iter().copied().reduce(f64::max),
                ) {
                    (Some(lo), Some(hi)) => format!("{lo:.1}-{hi:.1}"),
                    _ => "-".to_string(),
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "| load average while measuring | {} |",
            loads.join(" | ")
        );
        if !notes.is_empty() {
            out.push('\n');
            for (i, note) in notes.iter().enumerate() {
                let _ = writeln!(out, "[{}] {note}  ", i + 1);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_and_sizes_labelled() {
        assert_eq!(grouped(1234567.4), "1 234 567");
        assert_eq!(grouped(999.0), "999");
        assert_eq!(entries_label(10_000_000), "10^7");
        assert_eq!(entries_label(30_000), "30 000");
    }

    #[test]
    fn merge_replaces_a_runs_rows_only() {
        let dir = std::env::temp_dir().join(format!("peer-bench-test-{}", std::process::id()));
        let path = dir.join("rows.csv");
        let row = |tree: &str, value| Row {
            tree: tree.to_string(),
            entries: 10,
            metric: "updates_1k".to_string(),
            unit: "per_cpu_s".to_string(),
            value,
            load_avg: 1.0,
            note: "a, b".to_string(),
        };
        merge_into(&path, &[row("a", Some(1.0)), row("b", None)]).unwrap();
        merge_into(&path, &[row("a", Some(2.0))]).unwrap();
        let rows = read(&path).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].value, Some(2.0));
        assert_eq!(rows[1].value, None);
        assert_eq!(rows[1].note, "a; b");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
