//! One tree at one size: bulk load (not timed), warm-up (not timed), then
//! the timed figures. Every loop runs a fixed number of times; the bulk load
//! also stops early at a time or memory limit, and the run then reports the
//! size as infeasible with what it observed.

use anyhow::{bail, Result};

use crate::results::{Row, RUN};
use crate::trees::{Key, Tree};
use crate::workload::{
    device_key, load_average, peak_rss_bytes, record, rss_bytes, Elapsed, Rng, Stopwatch,
    ABSENT_BASE,
};

#[derive(Clone, Debug)]
pub struct Plan {
    pub entries: u64,
    pub value_len: usize,
    pub load_batch: usize,
    /// Timed update batches of 1 000 and of 100 000 existing keys.
    pub small_batches: usize,
    pub large_batches: usize,
    /// Timed insert batches of 1 000 (then `large_batches` of 100 000); kept
    /// apart from `small_batches` because inserts grow the tree.
    pub insert_batches: usize,
    /// Proofs per kind (present keys, absent keys).
    pub proofs: usize,
    pub max_load_seconds: f64,
    pub max_rss_bytes: u64,
}

const SMALL_BATCH: usize = 1_000;
const LARGE_BATCH: usize = 100_000;
const WARM_UP_PROOFS: usize = 1_000;

struct Recorder {
    tree: String,
    entries: u64,
    rows: Vec<Row>,
}

impl Recorder {
    fn push(&mut self, metric: &str, unit: &str, value: Option<f64>, note: &str) {
        self.rows.push(Row {
            tree: self.tree.clone(),
            entries: self.entries,
            metric: metric.to_string(),
            unit: unit.to_string(),
            value,
            load_avg: load_average(),
            note: note.to_string(),
        });
    }

    fn rate(&mut self, metric: &str, count: usize, elapsed: Elapsed, method: &str) {
        let per_cpu = count as f64 / elapsed.cpu.max(1e-9);
        let per_wall = count as f64 / elapsed.wall.max(1e-9);
        println!(
            "  {metric:<26} {per_cpu:>12.0}/CPU-s {per_wall:>12.0}/s wall  ({count} in {:.2} s CPU, {:.2} s wall; {method})",
            elapsed.cpu, elapsed.wall
        );
        self.push(metric, "per_cpu_s", Some(per_cpu), method);
        self.push(metric, "per_wall_s", Some(per_wall), method);
    }

    fn missing(&mut self, metric: &str, reason: &str) {
        println!("  {metric:<26} n/a: {reason}");
        self.push(metric, "per_cpu_s", None, reason);
        self.push(metric, "per_wall_s", None, reason);
    }
}

/// Commits `batches` batches of `size` and times them all; `pick` gives
/// batch `b`'s (key, value) pairs.
fn timed_commits<T: Tree>(
    tree: &mut T,
    batches: usize,
    pick: &mut dyn FnMut(usize) -> Result<Vec<(Key, Vec<u8>)>>,
) -> Result<(usize, Elapsed)> {
    let mut total = Elapsed::default();
    let mut count = 0;
    for b in 0..batches {
        let batch = pick(b)?;
        count += batch.len();
        let started = Stopwatch::start();
        tree.commit(batch)?;
        total += started.elapsed();
    }
    Ok((count, total))
}

pub fn run<T: Tree>(tree: &mut T, plan: &Plan) -> Result<Vec<Row>> {
    let mut out = Recorder {
        tree: tree.name().to_string(),
        entries: plan.entries,
        rows: Vec::new(),
    };
    let n = plan.entries;
    let len = plan.value_len;

    // Bulk load, not timed for the table (the time is printed).
    let started = Stopwatch::start();
    let mut loaded = 0u64;
    while loaded < n {
        let end = (loaded + plan.load_batch as u64).min(n);
        tree.commit(
            (loaded..end)
                .map(|i| (device_key(i), record(i, 0, len)))
                .collect(),
        )?;
        loaded = end;
        let elapsed = started.elapsed();
        let stop = if elapsed.wall > plan.max_load_seconds && loaded < n {
            Some(format!(
                "time: loading {loaded} of {n} entries took {:.0} s wall ({:.0} s CPU; limit {:.0} s), \
                 i.e. {:.0} inserts/s in batches of {}",
                elapsed.wall, elapsed.cpu, plan.max_load_seconds, loaded as f64 / elapsed.wall, plan.load_batch
            ))
        } else if rss_bytes() > plan.max_rss_bytes && loaded < n {
            Some(format!(
                "memory: RSS reached {:.1} GB after {loaded} of {n} entries (limit {:.1} GB)",
                rss_bytes() as f64 / 1e9,
                plan.max_rss_bytes as f64 / 1e9
            ))
        } else {
            None
        };
        if let Some(reason) = stop {
            println!("  stopped: {reason}");
            out.push(RUN, "status", None, &format!("infeasible: {reason}"));
            out.push(
                "peak_rss",
                "bytes",
                Some(peak_rss_bytes() as f64),
                "at the stop",
            );
            return Ok(out.rows);
        }
    }
    let load = started.elapsed();
    println!(
        "  bulk load (not a table figure): {n} entries in batches of {} took {:.1} s wall, {:.1} s CPU; RSS {:.2} GB",
        plan.load_batch,
        load.wall,
        load.cpu,
        rss_bytes() as f64 / 1e9
    );
    out.push(
        "load",
        "s_cpu",
        Some(load.cpu),
        "bulk load; not timed for the table",
    );
    out.push(
        "load",
        "s_wall",
        Some(load.wall),
        "bulk load; not timed for the table",
    );

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n);
    let mut generation = 0u64;
    let mut updates = |rng: &mut Rng, size: usize| -> Result<Vec<(Key, Vec<u8>)>> {
        generation += 1;
        Ok(rng
            .distinct_below(n, size)?
            .into_iter()
            .map(|i| (device_key(i), record(i, generation, len)))
            .collect())
    };

    // Warm-up: one update batch and some proofs, not timed.
    if n >= 2 * SMALL_BATCH as u64 {
        tree.commit(updates(&mut rng, SMALL_BATCH)?)?;
    }
    for _ in 0..WARM_UP_PROOFS.min(n as usize) {
        tree.prove(&device_key(rng.below(n)))?;
    }

    for (metric, size, batches) in [
        ("updates_1k", SMALL_BATCH, plan.small_batches),
        ("updates_100k", LARGE_BATCH, plan.large_batches),
    ] {
        if size as u64 > n / 2 {
            out.missing(
                metric,
                &format!(
                    "a batch of {size} distinct existing keys needs at least {} entries",
                    2 * size
                ),
            );
            continue;
        }
        let (count, elapsed) = timed_commits(tree, batches, &mut |_| updates(&mut rng, size))?;
        let method = format!("{batches} batches of {size} distinct random existing keys with new {len}-byte values; one version per batch, written to memory, older versions pruned");
        out.rate(metric, count, elapsed, &method);
    }

    prove_and_verify(tree, plan, &mut rng, &mut out)?;

    let mut next = n;
    for (metric, size, batches) in [
        ("inserts_1k", SMALL_BATCH, plan.insert_batches),
        ("inserts_100k", LARGE_BATCH, plan.large_batches),
    ] {
        let (count, elapsed) = timed_commits(tree, batches, &mut |_| {
            let batch = (next..next + size as u64)
                .map(|i| (device_key(i), record(i, 0, len)))
                .collect();
            next += size as u64;
            Ok(batch)
        })?;
        let method = format!("{batches} batches of {size} new keys with {len}-byte values (run after the update and proof figures; the tree grows by them)");
        out.rate(metric, count, elapsed, &method);
    }

    let peak = peak_rss_bytes();
    println!("  peak RSS {:.2} GB", peak as f64 / 1e9);
    out.push(
        "peak_rss",
        "bytes",
        Some(peak as f64),
        "VmHWM of the whole run",
    );
    out.push(RUN, "status", Some(1.0), "ok");
    Ok(out.rows)
}

fn prove_and_verify<T: Tree>(
    tree: &mut T,
    plan: &Plan,
    rng: &mut Rng,
    out: &mut Recorder,
) -> Result<()> {
    let n = plan.entries;
    let kinds: [(&str, Vec<Key>); 2] = [
        (
            "present",
            (0..plan.proofs).map(|_| device_key(rng.below(n))).collect(),
        ),
        (
            "absent",
            (0..plan.proofs)
                .map(|_| device_key(ABSENT_BASE + rng.below(n)))
                .collect(),
        ),
    ];
    for (kind, keys) in kinds {
        let present = kind == "present";
        if !present && !tree.proves_absence() {
            let reason = "the library has no proof of absence for a key (akd's lookup proves present labels only)";
            out.missing("proofs_generated_absent", reason);
            out.missing("proofs_verified_absent", reason);
            out.push("proof_bytes_absent", "bytes", None, reason);
            continue;
        }
        let started = Stopwatch::start();
        let mut proofs = Vec::with_capacity(keys.len());
        for key in &keys {
            proofs.push(tree.prove(key)?);
        }
        let generated = started.elapsed();
        out.rate(
            &format!("proofs_generated_{kind}"),
            proofs.len(),
            generated,
            &format!(
                "{} {kind} keys at random; value + proof at the latest version",
                keys.len()
            ),
        );

        // Sizes, not timed.
        let mut bytes = 0usize;
        for (value, proof) in &proofs {
            if value.is_some() != present {
                bail!(
                    "{}: a {kind} key answered with value present = {}",
                    tree.name(),
                    value.is_some()
                );
            }
            bytes += tree.proof_len(proof)?;
        }
        let mean = bytes as f64 / proofs.len().max(1) as f64;
        println!(
            "  proof_bytes_{kind:<15} {mean:>12.1} bytes mean ({})",
            tree.proof_encoding()
        );
        out.push(
            &format!("proof_bytes_{kind}"),
            "bytes",
            Some(mean),
            tree.proof_encoding(),
        );

        let started = Stopwatch::start();
        for (key, (value, proof)) in keys.iter().zip(proofs) {
            tree.verify(key, value.as_deref(), proof)?;
        }
        let verified = started.elapsed();
        out.rate(
            &format!("proofs_verified_{kind}"),
            keys.len(),
            verified,
            &format!(
                "{} {kind}-key proofs checked against the latest root as a client would",
                keys.len()
            ),
        );
    }
    Ok(())
}
