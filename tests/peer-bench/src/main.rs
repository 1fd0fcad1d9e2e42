//! `peer-bench`: keyreg's state tree, `jmt` (BLAKE3 and SHA-256) and `akd`
//! on the same keys and values. Each (tree, size) runs in its own child
//! process, one after the other, so memory is measured and freed per run;
//! each child merges its rows into the CSV, and the parent prints the table.
//!
//! ```sh
//! cargo run --release --bin peer-bench -- --trees keyreg,jmt-blake3 --entries 10000,1000000
//! ```

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use keyreg_peer_bench::results::{self, Row, RUN};
use keyreg_peer_bench::run::{run, Plan};
use keyreg_peer_bench::trees::akd::AkdTree;
use keyreg_peer_bench::trees::jmt::{Blake3, JmtTree};
use keyreg_peer_bench::trees::keyreg::KeyregTree;
use keyreg_peer_bench::trees::Tree;
use keyreg_peer_bench::workload::load_average;

const TREES: [&str; 4] = ["keyreg", "jmt-blake3", "jmt-sha256", "akd"];

const USAGE: &str = "usage: peer-bench [--trees keyreg,jmt-blake3,jmt-sha256,akd] [--entries 10000,1000000,10000000]
  [--csv docs/bench-data/peer-trees.csv] [--value-len 300] [--load-batch 100000]
  [--small-batches 20] [--large-batches 1] [--insert-batches 20] [--proofs 10000]
  [--max-load-seconds 900] [--max-rss-gb 16] [--max-run-seconds 1800] [--table-only]";

struct Options {
    trees: Vec<String>,
    sizes: Vec<u64>,
    csv: PathBuf,
    plan: Plan,
    max_run_seconds: u64,
    table_only: bool,
    /// Set in the children: run this one tree at `plan.entries`.
    child: Option<String>,
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        trees: TREES.iter().map(|t| t.to_string()).collect(),
        sizes: vec![10_000, 1_000_000, 10_000_000],
        csv: PathBuf::from("docs/bench-data/peer-trees.csv"),
        plan: Plan {
            entries: 0,
            value_len: 300,
            load_batch: 100_000,
            small_batches: 20,
            large_batches: 1,
            insert_batches: 20,
            proofs: 10_000,
            max_load_seconds: 900.0,
            max_rss_bytes: 16_000_000_000,
        },
        max_run_seconds: 1800,
        table_only: false,
        child: None,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        if flag == "--table-only" {
            options.table_only = true;
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        let number = || -> Result<u64> {
            value
                .parse()
                .with_context(|| format!("{flag}: {value:?} is not a whole number"))
        };
        let plan = &mut options.plan;
        match flag.as_str() {
            "--trees" => {
                options.trees = value.split(',').map(str::to_string).collect();
                if let Some(unknown) = options.trees.iter().find(|t| !TREES.contains(&t.as_str())) {
                    bail!("unknown tree {unknown:?} (known: {})", TREES.join(","));
                }
            }
            "--entries" => {
                options.sizes = value
                    .split(',')
                    .map(|s| s.parse().with_context(|| format!("--entries: {s:?}")))
                    .collect::<Result<_>>()?
            }
            "--csv" => options.csv = PathBuf::from(value),
            "--value-len" => plan.value_len = number()?.clamp(1, 4096) as usize,
            "--load-batch" => plan.load_batch = number()?.max(1) as usize,
            "--small-batches" => plan.small_batches = number()?.max(1) as usize,
            "--large-batches" => plan.large_batches = number()?.max(1) as usize,
            "--insert-batches" => plan.insert_batches = number()?.max(1) as usize,
            "--proofs" => plan.proofs = number()?.max(1) as usize,
            "--max-load-seconds" => plan.max_load_seconds = number()? as f64,
            "--max-rss-gb" => plan.max_rss_bytes = number()?.saturating_mul(1_000_000_000),
            "--max-run-seconds" => options.max_run_seconds = number()?,
            "--child-tree" => options.child = Some(value.clone()),
            "--child-entries" => plan.entries = number()?,
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(options)
}

fn run_tree<T: Tree>(mut tree: T, plan: &Plan) -> Result<Vec<Row>> {
    run(&mut tree, plan)
}

fn run_child(tree: &str, options: &Options) -> Result<()> {
    let plan = &options.plan;
    println!(
        "{tree} at {} entries (load average {:.2})",
        plan.entries,
        load_average()
    );
    let rows = match tree {
        "keyreg" => run_tree(KeyregTree::new(), plan)?,
        "jmt-blake3" => run_tree(JmtTree::<Blake3>::new("jmt-blake3"), plan)?,
        "jmt-sha256" => run_tree(JmtTree::<sha2::Sha256>::new("jmt-sha256"), plan)?,
        "akd" => run_tree(AkdTree::new()?, plan)?,
        other => bail!("unknown tree {other:?}"),
    };
    results::merge_into(&options.csv, &rows)
}

/// Runs one child and waits for it at most `max_run_seconds`; a child that
/// fails or overruns leaves a row saying so.
fn spawn_child(tree: &str, entries: u64, options: &Options, args: &[String]) -> Result<()> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .args([
            "--child-tree",
            tree,
            "--child-entries",
            &entries.to_string(),
        ])
        .spawn()
        .context("starting a child run")?;
    let started = Instant::now();
    let limit = Duration::from_secs(options.max_run_seconds);
    let failure = loop {
        if let Some(status) = child.try_wait()? {
            break (!status.success()).then(|| format!("the run exited with {status}"));
        }
        if started.elapsed() > limit {
            child.kill()?;
            child.wait()?;
            break Some(format!(
                "time: the run did not finish within {} s and was stopped",
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if let Some(reason) = failure {
        eprintln!("{tree} at {entries}: {reason}");
        let row = Row {
            tree: tree.to_string(),
            entries,
            metric: RUN.to_string(),
            unit: "status".to_string(),
            value: None,
            load_avg: load_average(),
            note: format!("infeasible: {reason}"),
        };
        results::merge_into(&options.csv, &[row])?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = parse_options(&args).and_then(|options| {
        if let Some(tree) = &options.child {
            return run_child(tree, &options);
        }
        if !options.table_only {
            for &entries in &options.sizes {
                for tree in &options.trees {
                    spawn_child(tree, entries, &options, &args)?;
                }
            }
        }
        let rows = results::read(&options.csv)?;
        println!(
            "\nrates per CPU-second (per wall-clock second); from {}{}",
            options.csv.display(),
            results::markdown(&rows, &options.trees, &options.sizes)
        );
        Ok(())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer-bench: {e:#}\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}
