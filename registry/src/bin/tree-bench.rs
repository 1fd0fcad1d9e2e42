//! State-tree throughput over the in-memory node store.
//!
//! `cargo run --release -p keyreg-registry --bin tree-bench -- --entries 1000000`
//!
//! Loads `--entries` records of `--value-len` bytes in batches of
//! `--load-batch`, then times `--update-batches` batches of `--batch` random
//! existing keys, `--proofs` proofs (half for absent keys) and their
//! verification, and prints one figure per line. Every batch is written to
//! a `MemNodeStore` and pruned to the latest version.

use std::process::ExitCode;
use std::time::Instant;

use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::{hash, Domain, Hash};
use keyreg_registry::tree::{MemNodeStore, SparseMerkleProof, StateTree, Update};

struct Options {
    entries: u64,
    load_batch: usize,
    batch: usize,
    update_batches: usize,
    proofs: usize,
    value_len: usize,
}

const USAGE: &str = "usage: tree-bench [--entries N] [--load-batch N] [--batch N] \
                     [--update-batches N] [--proofs N] [--value-len N]";

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        entries: 100_000,
        load_batch: 10_000,
        batch: 1000,
        update_batches: 200,
        proofs: 100_000,
        value_len: 300,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: {value:?} is not a number"))?;
        let as_usize = || usize::try_from(number).map_err(|_| format!("{flag} too large"));
        match flag.as_str() {
            "--entries" => options.entries = number,
            "--load-batch" => options.load_batch = as_usize()?.max(1),
            "--batch" => options.batch = as_usize()?.max(1),
            "--update-batches" => options.update_batches = as_usize()?,
            "--proofs" => options.proofs = as_usize()?,
            "--value-len" => options.value_len = as_usize()?.min(4096),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(options)
}

/// xorshift64*: reproducible key choice without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn device_key(i: u64) -> Hash {
    hash(
        Domain::DeviceName,
        format!("org{}/device-{i}", i % 97).as_bytes(),
    )
}

fn record(i: u64, generation: u64, len: usize) -> Vec<u8> {
    let seed = hash(
        Domain::Payload,
        &[i.to_le_bytes(), generation.to_le_bytes()].concat(),
    );
    seed.0.iter().copied().cycle().take(len).collect()
}

fn per_second(count: usize, seconds: f64) -> f64 {
    count as f64 / seconds.max(1e-9)
}

/// This thread's CPU time (Linux), so figures taken on a busy shared
/// machine can be compared: wall-clock rates there mostly measure the
/// neighbours.
fn thread_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(f64::NAN, |ns| ns as f64 / 1e9)
}

/// Wall-clock and CPU seconds since it started.
#[derive(Clone, Copy)]
struct Stopwatch {
    wall: Instant,
    cpu: f64,
}

#[derive(Clone, Copy, Default)]
struct Elapsed {
    wall: f64,
    cpu: f64,
}

impl std::ops::AddAssign for Elapsed {
    fn add_assign(&mut self, other: Elapsed) {
        self.wall += other.wall;
        self.cpu += other.cpu;
    }
}

impl Stopwatch {
    fn start() -> Self {
        Stopwatch {
            wall: Instant::now(),
            cpu: thread_cpu_seconds(),
        }
    }

    fn elapsed(&self) -> Elapsed {
        Elapsed {
            wall: self.wall.elapsed().as_secs_f64(),
            cpu: thread_cpu_seconds() - self.cpu,
        }
    }
}

/// "N/s (N/s per CPU-second)".
fn rates(count: usize, elapsed: Elapsed) -> String {
    format!(
        "{:.0}/s wall, {:.0}/s per CPU-second",
        per_second(count, elapsed.wall),
        per_second(count, elapsed.cpu)
    )
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let mut store = MemNodeStore::new();
    let mut version: Option<u64> = None;
    let mut next_version = 1u64;

    // Applies one batch; returns the time in apply, and in apply + write + prune.
    let mut commit = |store: &mut MemNodeStore, mut updates: Vec<Update>| -> (Elapsed, Elapsed) {
        updates.sort_unstable_by_key(|update| update.0);
        updates.dedup_by_key(|update| update.0);
        let started = Stopwatch::start();
        let batch = match StateTree::new(&*store).apply(version, next_version, &updates) {
            Ok(batch) => batch,
            Err(e) => panic!("apply failed: {e}"),
        };
        let applied = started.elapsed();
        store.write_owned(batch);
        // Keep only the latest version, as a validator that prunes eagerly would.
        store.prune(next_version);
        let total = started.elapsed();
        version = Some(next_version);
        next_version += 1;
        (applied, total)
    };

    let (mut load_apply, mut load_total) = (Elapsed::default(), Elapsed::default());
    let mut loaded = 0u64;
    while loaded < options.entries {
        let end = (loaded + options.load_batch as u64).min(options.entries);
        let updates = (loaded..end)
            .map(|i| (device_key(i), Some(record(i, 0, options.value_len))))
            .collect();
        let (apply, total) = commit(&mut store, updates);
        load_apply += apply;
        load_total += total;
        loaded = end;
    }
    println!("entries                     {}", options.entries);
    println!("value bytes                 {}", options.value_len);
    println!("stored nodes                {}", store.node_count());
    let loaded = options.entries as usize;
    println!(
        "load: inserts               {} (batches of {})",
        rates(loaded, load_total),
        options.load_batch
    );
    println!("load: inserts, apply only   {}", rates(loaded, load_apply));

    if options.entries == 0 {
        return ExitCode::SUCCESS;
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut update_apply, mut update_total) = (Elapsed::default(), Elapsed::default());
    let mut updated = 0usize;
    for generation in 1..=options.update_batches as u64 {
        let updates: Vec<Update> = (0..options.batch)
            .map(|_| {
                let i = rng.below(options.entries);
                (
                    device_key(i),
                    Some(record(i, generation, options.value_len)),
                )
            })
            .collect();
        updated += updates.len();
        let (apply, total) = commit(&mut store, updates);
        update_apply += apply;
        update_total += total;
    }
    println!(
        "update batches              {} of {} random existing keys",
        options.update_batches, options.batch
    );
    println!(
        "updates                     {}",
        rates(updated, update_total)
    );
    println!(
        "updates, apply only         {}",
        rates(updated, update_apply)
    );

    let Some(latest) = version else {
        return ExitCode::SUCCESS;
    };
    let tree = StateTree::new(&store);
    let root = match tree.root(latest) {
        Ok(root) => root,
        Err(e) => panic!("root: {e}"),
    };
    // Half the proofs are for present keys, half for absent ones.
    let queries: Vec<Hash> = (0..options.proofs)
        .map(|n| {
            let i = rng.below(options.entries);
            if n % 2 == 0 {
                device_key(i)
            } else {
                device_key(options.entries + i)
            }
        })
        .collect();
    let started = Stopwatch::start();
    let proofs: Vec<(Option<Vec<u8>>, SparseMerkleProof)> = queries
        .iter()
        .map(|key| match tree.get_with_proof(latest, key) {
            Ok(answer) => answer,
            Err(e) => panic!("proof: {e}"),
        })
        .collect();
    let generate = started.elapsed();
    let started = Stopwatch::start();
    let mut failures = 0usize;
    for (key, (value, proof)) in queries.iter().zip(&proofs) {
        if proof.verify(&root, key, value.as_deref()).is_err() {
            failures += 1;
        }
    }
    let verify = started.elapsed();
    let total_bytes: usize = proofs.iter().map(|(_, p)| p.to_bytes().len()).sum();
    let total_siblings: usize = proofs.iter().map(|(_, p)| p.siblings.len()).sum();
    let present = proofs.iter().filter(|(v, _)| v.is_some()).count();
    println!(
        "proofs                      {} ({present} of present keys)",
        proofs.len()
    );
    println!(
        "proofs generated            {}",
        rates(proofs.len(), generate)
    );
    println!(
        "proofs verified             {} ({failures} failed)",
        rates(proofs.len(), verify)
    );
    println!(
        "mean proof size             {:.1} bytes ({:.1} siblings)",
        total_bytes as f64 / proofs.len().max(1) as f64,
        total_siblings as f64 / proofs.len().max(1) as f64
    );
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
