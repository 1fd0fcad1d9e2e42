//! End-to-end figures of a loopback testnet (see docs/benchmarks.md):
//! throughput at saturation, commit latency at low and half load, verified
//! look-ups, and how fast a revocation becomes provable.
//!
//! `cargo run --release -p keyreg-tests --bin net-bench -- [--validators 4] [--txs 4000]
//!  [--rate 20] [--threads 4] [--batch 1] [--latency-seconds 10] [--lookup-seconds 5]
//!  [--revocations 100] [--revocation-rate 10] [--bound-seconds 2] [--warm-up-txs 0]
//!  [--link-delay-ms 0]
//!  [--node-bin PATH] [--keep-dir DIR]`
//!
//! `--keep-dir` puts the testnet in DIR (which must not exist) and keeps it,
//! with each node's log (`node<i>.log`, filtered by `KEYREG_BENCH_NODE_LOG`).
//!
//! Needs `keyreg-node` built in the same target directory
//! (`cargo build --release -p keyreg-node`), or `--node-bin`.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use keyreg_client::keys::{AdminKey, DeviceKeys};
use keyreg_client::light::TrustAnchor;
use keyreg_client::node::{NodeClient, MAX_SUBMIT_BATCH};
use keyreg_client::txs::{register_device, revoke};
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::{BatchVerifier, Domain, Hash, SigningKey};
use keyreg_registry::names::DeviceName;
use keyreg_registry::records::{DeviceStatus, Metadata};
use keyreg_registry::tx::{Authority, Transaction};
use keyreg_registry::{verify_device_proof, DeviceProof};
use keyreg_tests::bench::{
    add_thread_cpu_seconds, cpu_seconds, default_node_bin, ms, percentile, wait_for_height,
    FreshMemory, LocalTestnet,
};

/// How often the commit watcher and the revocation poller look (the
/// granularity of every latency figure).
const POLL: Duration = Duration::from_millis(20);
/// Longest any phase may wait for its transactions to commit.
const COMMIT_DEADLINE: Duration = Duration::from_secs(120);
/// Most iterations of a client-side verification timing loop.
const MAX_VERIFY_ITERATIONS: usize = 200_000;

struct Args {
    validators: usize,
    txs: usize,
    rate: f64,
    threads: usize,
    /// Transactions per submission request at saturation and half load
    /// (1: `POST /v1/transactions`; more: `POST /v1/transactions/batch`).
    batch: usize,
    latency_seconds: f64,
    lookup_seconds: f64,
    revocations: usize,
    revocation_rate: f64,
    bound_seconds: f64,
    /// Registrations committed, unmeasured, before the throughput phase:
    /// nodes that hold a registry and have flushed their memtables already,
    /// as long-running ones have, instead of fresh ones.
    warm_up_txs: usize,
    /// One-way delay of every link between two nodes (0: plain loopback).
    link_delay_ms: u64,
    node_bin: Option<PathBuf>,
    /// Where the testnet goes (its homes and the nodes' logs), kept after
    /// the run; a temporary directory, removed at the end, when unset.
    keep_dir: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        validators: 4,
        txs: 4000,
        rate: 20.0,
        threads: 4,
        batch: 1,
        latency_seconds: 10.0,
        lookup_seconds: 5.0,
        revocations: 100,
        revocation_rate: 10.0,
        bound_seconds: 2.0,
        warm_up_txs: 0,
        link_delay_ms: 0,
        node_bin: None,
        keep_dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag} {value}");
        match flag.as_str() {
            "--validators" => args.validators = value.parse().with_context(bad)?,
            "--txs" => args.txs = value.parse().with_context(bad)?,
            "--rate" => args.rate = value.parse().with_context(bad)?,
            "--threads" => args.threads = value.parse().with_context(bad)?,
            "--batch" => args.batch = value.parse().with_context(bad)?,
            "--latency-seconds" => args.latency_seconds = value.parse().with_context(bad)?,
            "--lookup-seconds" => args.lookup_seconds = value.parse().with_context(bad)?,
            "--revocations" => args.revocations = value.parse().with_context(bad)?,
            "--revocation-rate" => args.revocation_rate = value.parse().with_context(bad)?,
            "--bound-seconds" => args.bound_seconds = value.parse().with_context(bad)?,
            "--warm-up-txs" => args.warm_up_txs = value.parse().with_context(bad)?,
            "--link-delay-ms" => args.link_delay_ms = value.parse().with_context(bad)?,
            "--node-bin" => args.node_bin = Some(PathBuf::from(value)),
            "--keep-dir" => args.keep_dir = Some(PathBuf::from(value)),
            _ => bail!("unknown flag {flag}"),
        }
    }
    if !(1..=32).contains(&args.validators) {
        bail!("--validators must be 1..=32");
    }
    if !(1..=64).contains(&args.threads) || args.txs == 0 || args.txs > 1_000_000 {
        bail!("--threads must be 1..=64 and --txs 1..=1000000");
    }
    if Duration::from_millis(args.link_delay_ms) > keyreg_tests::delay::MAX_DELAY {
        bail!(
            "--link-delay-ms must be at most {}",
            keyreg_tests::delay::MAX_DELAY.as_millis()
        );
    }
    if args.warm_up_txs > 1_000_000 {
        bail!("--warm-up-txs must be 0..=1000000");
    }
    if !(1..=keyreg_client::node::MAX_SUBMIT_BATCH).contains(&args.batch) {
        bail!(
            "--batch must be 1..={}",
            keyreg_client::node::MAX_SUBMIT_BATCH
        );
    }
    let positive = |x: f64| x.is_finite() && x > 0.0 && x <= 100_000.0;
    if ![
        args.rate,
        args.latency_seconds,
        args.lookup_seconds,
        args.revocation_rate,
        args.bound_seconds,
    ]
    .into_iter()
    .all(positive)
    {
        bail!("rates and durations must be positive and at most 100000");
    }
    if args.revocations == 0 || 2 * args.revocations > args.txs {
        bail!(
            "--revocations must be 1..=--txs/2 (two phases revoke devices registered at saturation)"
        );
    }
    Ok(args)
}

/// CPU seconds used so far: by the nodes' threads (summed over the nodes,
/// by thread name) and by this process.
struct CpuReading {
    node_threads: BTreeMap<String, f64>,
    bench: f64,
}

impl CpuReading {
    fn take(net: &LocalTestnet) -> anyhow::Result<Self> {
        let mut node_threads = BTreeMap::new();
        for pid in net.pids() {
            add_thread_cpu_seconds(pid, &mut node_threads)?;
        }
        Ok(CpuReading {
            node_threads,
            bench: cpu_seconds("self")?,
        })
    }

    fn nodes(&self) -> f64 {
        self.node_threads.values().sum()
    }
}

/// Prints how the nodes' CPU time between two readings split by thread
/// name: RocksDB's flushes and compactions run on threads of their own,
/// off the request path, but on the same cores.
fn print_thread_split(before: &CpuReading, after: &CpuReading) {
    let total = after.nodes() - before.nodes();
    let mut rows: Vec<(&str, f64)> = after
        .node_threads
        .iter()
        .map(|(name, seconds)| {
            let earlier = before.node_threads.get(name).copied().unwrap_or(0.0);
            (name.as_str(), seconds - earlier)
        })
        .filter(|(_, seconds)| *seconds > 0.0)
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let shares: Vec<String> = rows
        .iter()
        .map(|(name, seconds)| {
            format!(
                "{name} {seconds:.2} s ({:.1} %)",
                100.0 * seconds / total.max(1e-9)
            )
        })
        .collect();
    println!("  nodes' CPU by thread: {}", shares.join(", "));
}

/// Pre-signed registrations of `demo/bench-<tag>-<i>`.
fn registrations(
    chain_id: &str,
    admin: &AdminKey,
    tag: &str,
    count: usize,
) -> anyhow::Result<Vec<(DeviceName, Transaction)>> {
    (0..count)
        .map(|i| {
            let name = DeviceName::from_parts(&admin.org, &format!("bench-{tag}-{i}"))?;
            let keys = DeviceKeys::generate(name.clone())?;
            let tx = register_device(chain_id, admin, &keys, None, Metadata::new());
            Ok((name, tx))
        })
        .collect()
}

/// Pre-signed registrations whose names are not needed afterwards.
fn registration_txs(
    chain_id: &str,
    admin: &AdminKey,
    tag: &str,
    count: usize,
) -> anyhow::Result<Vec<Transaction>> {
    Ok(registrations(chain_id, admin, tag, count)?
        .into_iter()
        .map(|(_, tx)| tx)
        .collect())
}

/// First time each transaction was seen in a committed block, by watching
/// one node's head every [`POLL`].
struct CommitWatcher {
    seen: Arc<Mutex<HashMap<Hash, Instant>>>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<anyhow::Result<()>>>,
}

impl CommitWatcher {
    fn start(node: NodeClient) -> anyhow::Result<Self> {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut next = node.status()?.height + 1;
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let handle = thread::spawn(move || -> anyhow::Result<()> {
            while !stop2.load(Ordering::Relaxed) {
                let head = node.status()?.height;
                // Bounded: each page advances `next` by at least one block.
                while next <= head {
                    let page = node.blocks(next, 100)?;
                    let now = Instant::now();
                    let Some(last) = page.blocks.last() else {
                        bail!("empty block page at {next} below head {head}");
                    };
                    next = last.block.header.height + 1;
                    let mut seen = seen2.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    for block in &page.blocks {
                        for tx in &block.block.transactions {
                            seen.entry(tx.hash()).or_insert(now);
                        }
                    }
                }
                thread::sleep(POLL);
            }
            Ok(())
        });
        Ok(CommitWatcher {
            seen,
            stop,
            handle: Some(handle),
        })
    }

    /// Waits until every hash is seen (or `within` passes); returns the
    /// commit time of each hash, `None` for those never seen.
    /// When each of `hashes` was first seen committed, waiting (up to
    /// `within`) for those a node accepted (`Some` in `accepted`): the
    /// others may never commit.
    fn wait_all(
        &self,
        hashes: &[Hash],
        accepted: &[Option<Instant>],
        within: Duration,
    ) -> anyhow::Result<Vec<Option<Instant>>> {
        let start = Instant::now();
        loop {
            let seen = self.seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let times: Vec<_> = hashes.iter().map(|h| seen.get(h).copied()).collect();
            drop(seen);
            let all_seen = times
                .iter()
                .zip(accepted)
                .all(|(seen, accepted)| seen.is_some() || accepted.is_none());
            if all_seen || start.elapsed() >= within {
                return Ok(times);
            }
            if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
                bail!("the commit watcher stopped");
            }
            thread::sleep(POLL);
        }
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(result)) => result.context("commit watcher"),
            Some(Err(_)) => bail!("commit watcher panicked"),
            None => Ok(()),
        }
    }
}

/// What a load run did.
struct Load {
    start: Instant,
    /// First submission attempt of each transaction; `None` if never accepted.
    submitted: Vec<Option<Instant>>,
    busy_retries: usize,
    failures: Vec<String>,
}

/// One load thread's accepted submissions (index, first attempt) and failures.
type ThreadOutcome = (Vec<(usize, Instant)>, Vec<String>);

/// Submits `txs` from `threads` threads, round-robin over `nodes`, `batch`
/// per request (`POST /v1/transactions` when 1, `/v1/transactions/batch`
/// otherwise); paced at `rate` tx/s when given, as fast as accepted
/// otherwise. A 503 `busy` backs off (10 ms doubling to 200 ms) and retries
/// until `deadline`.
#[allow(clippy::too_many_arguments)]
fn run_load(
    nodes: &[NodeClient],
    txs: &[Transaction],
    threads: usize,
    batch: usize,
    rate: Option<f64>,
    deadline: Duration,
    stop: &AtomicBool,
) -> Load {
    let next = AtomicUsize::new(0);
    let busy = AtomicUsize::new(0);
    let start = Instant::now();
    let results: Vec<ThreadOutcome> = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    let mut failures = Vec::new();
                    loop {
                        let i = next.fetch_add(batch, Ordering::Relaxed);
                        if i >= txs.len() || stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let chunk = i..(i + batch).min(txs.len());
                        if let Some(rate) = rate {
                            let due = start + Duration::from_secs_f64(i as f64 / rate);
                            thread::sleep(due.saturating_duration_since(Instant::now()));
                        }
                        if start.elapsed() >= deadline {
                            failures.push(format!("tx {i}: load deadline passed"));
                            break;
                        }
                        let node = &nodes[(i / batch) % nodes.len()];
                        let first_attempt = Instant::now();
                        let mut pause = Duration::from_millis(10);
                        // What is still to submit: a whole request refused
                        // busy (503), or the transactions of a batch refused
                        // busy (full mempool), are retried after a pause.
                        let mut pending: Vec<usize> = chunk.collect();
                        // Ends: every retry sleeps, and the deadline stops it.
                        while !pending.is_empty() {
                            let outcome = if batch == 1 {
                                node.submit(&txs[pending[0]]).map(|hash| vec![Ok(hash)])
                            } else {
                                node.submit_batch(pending.iter().map(|&k| &txs[k]))
                            };
                            let retry = match outcome {
                                Ok(verdicts) => {
                                    let mut busy_ones = Vec::new();
                                    for (k, verdict) in pending.iter().copied().zip(verdicts) {
                                        match verdict {
                                            Ok(_) => done.push((k, first_attempt)),
                                            Err(e) if e.is_busy() => busy_ones.push(k),
                                            Err(e) => failures.push(format!("tx {k}: {e}")),
                                        }
                                    }
                                    busy_ones
                                }
                                Err(e) if e.is_busy() => pending.clone(),
                                Err(e) => {
                                    failures
                                        .push(format!("txs {pending:?} at {}: {e}", node.url()));
                                    Vec::new()
                                }
                            };
                            pending = retry;
                            if pending.is_empty() {
                                break;
                            }
                            if start.elapsed() + pause >= deadline {
                                failures
                                    .push(format!("txs {pending:?}: still busy at the deadline"));
                                break;
                            }
                            busy.fetch_add(1, Ordering::Relaxed);
                            thread::sleep(pause);
                            pause = (pause * 2).min(Duration::from_millis(200));
                        }
                    }
                    (done, failures)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| (Vec::new(), vec!["load thread panicked".into()]))
            })
            .collect()
    });
    let mut submitted = vec![None; txs.len()];
    let mut failures = Vec::new();
    for (done, failed) in results {
        for (i, at) in done {
            submitted[i] = Some(at);
        }
        failures.extend(failed);
    }
    Load {
        start,
        submitted,
        busy_retries: busy.into_inner(),
        failures,
    }
}

/// Signatures per transaction of a registration (admin + device).
const SIGNATURES_PER_REGISTRATION: usize = 2;
/// Signatures per batch when measuring the verification bound.
const BOUND_BATCH: usize = 1024;
/// The probe of what a new page costs ([`FreshMemory`]) touches this many
/// segments of this many bytes: 2 GiB, more than the 1 GiB of freed memory
/// a kernel seen here let wait before reporting it to the host; about 8 s
/// at the slowest seen (15.5 us a page).
const FRESH_MEMORY_SEGMENTS: usize = 8;
const FRESH_MEMORY_SEGMENT_BYTES: usize = 256 << 20;

/// The verification bound, measured before the nodes start: batch-verified
/// Ed25519 signatures per second on every core for about `seconds`, divided
/// by the signatures each transaction costs the whole testnet (every
/// validator verifies every signature). Same method as `sig-bench`.
fn verification_bound(seconds: f64, validators: usize) -> (f64, f64) {
    let corpus: Vec<_> = (0..BOUND_BATCH)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let key = SigningKey::from_seed(seed);
            let message = format!("bound transaction {i}").into_bytes();
            let signature = key.sign(Domain::Transaction, &message);
            (key.public(), message, signature)
        })
        .collect();
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let budget = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let batches: usize = thread::scope(|s| {
        let workers: Vec<_> = (0..cores)
            .map(|_| {
                s.spawn(|| {
                    let mut batches = 0usize;
                    while start.elapsed() < budget {
                        let mut batch = BatchVerifier::with_capacity(BOUND_BATCH);
                        for (key, message, signature) in &corpus {
                            batch.queue(*key, Domain::Transaction, message, *signature);
                        }
                        assert!(batch.verify().is_ok(), "the corpus is validly signed");
                        batches += 1;
                    }
                    batches
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    let signatures_per_second = (batches * BOUND_BATCH) as f64 / start.elapsed().as_secs_f64();
    let tx_per_second = signatures_per_second / (validators * SIGNATURES_PER_REGISTRATION) as f64;
    (signatures_per_second, tx_per_second)
}

/// The commit rate between the moments a tenth and nine tenths of the
/// transactions were first seen committed: saturation without the run's
/// fill (nothing commits before the first block) and drain (the last
/// blocks' latency). Transactions seen at the 10 % mark's sighting belong
/// to the block that closes the window's start, so only those seen after it
/// count. `None` when the window is empty (a single sighting).
fn steady_rate(commits: &mut [Instant]) -> Option<(f64, Duration)> {
    commits.sort_unstable();
    let (&start, &end) = (
        commits.get(commits.len() / 10)?,
        commits.get(commits.len() * 9 / 10)?,
    );
    let window = end.checked_duration_since(start).filter(|w| !w.is_zero())?;
    let inside = commits.iter().filter(|&&t| t > start && t <= end).count();
    Some((inside as f64 / window.as_secs_f64(), window))
}

struct LatencyRun {
    offered: f64,
    committed: usize,
    total: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    busy_retries: usize,
    failures: usize,
}

/// Commit latencies (submit -> first seen committed) of a paced load.
fn latency_run(
    net: &LocalTestnet,
    watcher: &CommitWatcher,
    txs: &[Transaction],
    rate: f64,
    threads: usize,
    batch: usize,
) -> anyhow::Result<LatencyRun> {
    let stop = AtomicBool::new(false);
    let deadline = Duration::from_secs_f64(txs.len() as f64 / rate) + COMMIT_DEADLINE;
    let load = run_load(&net.nodes, txs, threads, batch, Some(rate), deadline, &stop);
    let hashes: Vec<Hash> = txs.iter().map(Transaction::hash).collect();
    let committed = watcher.wait_all(&hashes, &load.submitted, COMMIT_DEADLINE)?;
    let mut latencies: Vec<Duration> = load
        .submitted
        .iter()
        .zip(&committed)
        .filter_map(|(s, c)| Some(c.as_ref()?.saturating_duration_since(*s.as_ref()?)))
        .collect();
    latencies.sort();
    Ok(LatencyRun {
        offered: rate,
        committed: latencies.len(),
        total: txs.len(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or_default(),
        busy_retries: load.busy_retries,
        failures: load.failures.len(),
    })
}

fn print_latency(label: &str, run: &LatencyRun) {
    println!(
        "{label}: offered {:.0} tx/s, {}/{} committed, commit latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (busy retries {}, failed submissions {})",
        run.offered,
        run.committed,
        run.total,
        ms(run.p50),
        ms(run.p99),
        ms(run.max),
        run.busy_retries,
        run.failures
    );
}

/// Mean time of `work` over about `seconds` (at most [`MAX_VERIFY_ITERATIONS`]).
fn mean_time(
    seconds: f64,
    mut work: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let budget = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < budget && (n as usize) < MAX_VERIFY_ITERATIONS {
        work()?;
        n += 1;
    }
    Ok(start.elapsed() / n.max(1))
}

fn is_revoked(proof: &DeviceProof) -> bool {
    matches!(
        proof.record.as_ref().map(|r| &r.status),
        Some(DeviceStatus::Revoked { .. })
    )
}

/// Polls every pending revocation (index into `revocations`, submission
/// time) every [`POLL`], each time on the next node, until its proof verifies
/// and shows it revoked; stops when all are resolved and no more will come,
/// or at `deadline`. Returns the visibility delays, the look-up errors and
/// how long each look-up took (a pass waits for all of its look-ups, so
/// slow ones delay the others' next look).
fn poll_revocations(
    nodes: &[NodeClient],
    anchor: &TrustAnchor,
    revocations: &[(DeviceName, Transaction)],
    pending: &Mutex<Vec<(usize, Instant)>>,
    submissions_done: &AtomicBool,
    deadline: Instant,
) -> anyhow::Result<(Vec<Duration>, usize, Vec<Duration>)> {
    let mut visible = Vec::new();
    let mut poll_errors = 0usize;
    let mut lookups = Vec::new();
    let mut pass = 0usize;
    while Instant::now() < deadline {
        let snapshot: Vec<(usize, Instant)> = pending
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        if snapshot.is_empty() && submissions_done.load(Ordering::Relaxed) {
            break;
        }
        let mut resolved = Vec::new();
        for (i, at) in &snapshot {
            let (name, _) = &revocations[*i];
            let lookup_start = Instant::now();
            let proof = nodes[(i + pass) % nodes.len()].device_proof(name);
            lookups.push(lookup_start.elapsed());
            match proof {
                Ok(proof) => {
                    verify_device_proof(&anchor.chain_id, &anchor.validator_set, &proof)?;
                    if is_revoked(&proof) {
                        visible.push(at.elapsed());
                        resolved.push(*i);
                    }
                }
                Err(_) => poll_errors += 1,
            }
        }
        pending
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .retain(|(i, _)| !resolved.contains(i));
        pass += 1;
        thread::sleep(POLL);
    }
    Ok((visible, poll_errors, lookups))
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("net-bench: {e:#}");
            std::process::exit(2);
        }
    };
    let node_bin = match args.node_bin.clone().map_or_else(default_node_bin, Ok) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("net-bench: {e:#}");
            std::process::exit(2);
        }
    };
    // Before the nodes start, so they do not compete with it.
    let bound = verification_bound(args.bound_seconds, args.validators);
    let fresh = FreshMemory::measure(FRESH_MEMORY_SEGMENTS, FRESH_MEMORY_SEGMENT_BYTES);
    let started = LocalTestnet::generate(&node_bin, args.validators, args.keep_dir.as_deref())
        .and_then(|mut net| {
            if args.link_delay_ms > 0 {
                net.delay_links(Duration::from_millis(args.link_delay_ms))?;
            }
            net.start_all()?;
            Ok(net)
        });
    let net = match started {
        Ok(net) => net,
        Err(e) => {
            eprintln!("net-bench: {e:#}");
            std::process::exit(1);
        }
    };
    if let Err(e) = run(&args, &net, bound, &fresh) {
        eprintln!("net-bench: {e:#}\n{}", net.log_tails());
        drop(net);
        std::process::exit(1);
    }
}

/// A saturation load: `txs` submitted as fast as they are accepted.
struct Saturation {
    load: Load,
    submit_end: Instant,
    hashes: Vec<Hash>,
    /// When `watcher` first saw each transaction committed.
    committed: Vec<Option<Instant>>,
}

fn saturate(
    args: &Args,
    nodes: &[NodeClient],
    watcher: &CommitWatcher,
    txs: &[Transaction],
) -> anyhow::Result<Saturation> {
    let hashes: Vec<Hash> = txs.iter().map(Transaction::hash).collect();
    let never = AtomicBool::new(false);
    let load = run_load(
        nodes,
        txs,
        args.threads,
        args.batch,
        None,
        COMMIT_DEADLINE,
        &never,
    );
    let submit_end = Instant::now();
    let committed = watcher.wait_all(&hashes, &load.submitted, COMMIT_DEADLINE)?;
    Ok(Saturation {
        load,
        submit_end,
        hashes,
        committed,
    })
}

/// Commits `--warm-up-txs` registrations at saturation, unmeasured.
fn warm_up(
    args: &Args,
    nodes: &[NodeClient],
    watcher: &CommitWatcher,
    chain_id: &str,
    admin: &AdminKey,
) -> anyhow::Result<()> {
    let txs = registration_txs(chain_id, admin, "warm", args.warm_up_txs)?;
    let Saturation {
        load, committed, ..
    } = saturate(args, nodes, watcher, &txs)?;
    let count = committed.iter().flatten().count();
    ensure!(
        count == txs.len(),
        "warm-up: {count} of {} registrations committed ({} failed submissions)",
        txs.len(),
        load.failures.len()
    );
    println!(
        "warm-up (not measured): {count} registrations committed in {:.2} s",
        load.start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `bound`: (signatures/s, tx/s) from [`verification_bound`].
fn run(
    args: &Args,
    net: &LocalTestnet,
    bound: (f64, f64),
    fresh: &FreshMemory,
) -> anyhow::Result<()> {
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "net-bench: {} validators on loopback, {cores} cores shared by the nodes and this load generator",
        args.validators
    );
    if args.link_delay_ms > 0 {
        println!(
            "  every link between two nodes delayed {} ms each way (round trip {} ms); HTTP clients reach their node directly",
            args.link_delay_ms,
            2 * args.link_delay_ms
        );
    }
    println!(
        "verification bound (before the nodes started): {:.0} signatures/s batch-verified on {cores} cores = {:.0} tx/s at {} validators x {SIGNATURES_PER_REGISTRATION} signatures",
        bound.0, bound.1, args.validators
    );
    println!("new memory (before the nodes started): {}", fresh.summary());
    wait_for_height(&net.nodes, 2, Duration::from_secs(90))?;
    let anchor = TrustAnchor::from_genesis_file(&net.dir().join("genesis.json"))?;
    let admin = AdminKey::load(&net.dir().join("demo-admin.key"))?;
    let chain_id = anchor.chain_id.clone();
    let nodes = &net.nodes;

    // 2. Throughput at saturation.
    let saturation = registrations(&chain_id, &admin, "sat", args.txs)?;
    let txs: Vec<Transaction> = saturation.iter().map(|(_, tx)| tx.clone()).collect();
    let watcher = CommitWatcher::start(nodes[0].clone())?;
    if args.warm_up_txs > 0 {
        warm_up(args, nodes, &watcher, &chain_id, &admin)?;
    }
    let batching_before = metrics_texts(nodes);
    let cpu_before = CpuReading::take(net)?;
    let (link_bytes_before, links) = net.link_bytes();
    let Saturation {
        load,
        submit_end,
        hashes,
        committed,
    } = saturate(args, nodes, &watcher, &txs)?;
    let cpu_after = CpuReading::take(net)?;
    let committed_count = committed.iter().flatten().count();
    let last_commit = committed
        .iter()
        .flatten()
        .max()
        .copied()
        .context("nothing committed")?;
    let span = last_commit.saturating_duration_since(load.start);
    let throughput = committed_count as f64 / span.as_secs_f64();
    let accepted = load.submitted.iter().flatten().count();
    println!(
        "throughput: {committed_count}/{} committed in {:.2} s = {throughput:.0} tx/s (submitting took {:.2} s, {accepted} accepted, {} busy retries, {} failed)",
        txs.len(),
        span.as_secs_f64(),
        submit_end.duration_since(load.start).as_secs_f64(),
        load.busy_retries,
        load.failures.len()
    );
    let node_cpu = cpu_after.nodes() - cpu_before.nodes();
    let bench_cpu = cpu_after.bench - cpu_before.bench;
    let per_node_cpu_second = committed_count as f64 / node_cpu.max(1e-9);
    println!(
        "  CPU while submitting and committing: nodes {node_cpu:.2} s ({per_node_cpu_second:.0} tx per node-CPU-second), load generator {bench_cpu:.2} s, over {:.2} s of wall clock",
        span.as_secs_f64()
    );
    print_thread_split(&cpu_before, &cpu_after);
    if links > 0 {
        let carried = net.link_bytes().0.saturating_sub(link_bytes_before) as f64;
        let seconds = span.as_secs_f64().max(1e-9);
        // A link per node and peer it dials, so two per pair of nodes.
        let pairs = (links / 2).max(1) as f64;
        println!(
            "  between the nodes: {:.1} MB through the delayed links = {:.2} MB/s per pair of nodes (both ways together) on average",
            carried / 1e6,
            carried / 1e6 / seconds / pairs
        );
    }
    // The machine's speed drifts (shared VMs): the bound is measured again
    // now, with the nodes idle, and the ratio uses the higher of the two.
    let after = verification_bound(args.bound_seconds, args.validators);
    let higher = bound.1.max(after.1);
    println!(
        "  = {:.3}x the verification bound (the higher of {:.0} tx/s before the nodes started and {:.0} tx/s measured again now, nodes idle; {:.3}x the lower)",
        throughput / higher.max(1e-9),
        bound.1,
        after.1,
        throughput / bound.1.min(after.1).max(1e-9)
    );
    let mut commit_times: Vec<Instant> = committed.iter().flatten().copied().collect();
    if let Some((rate, window)) = steady_rate(&mut commit_times) {
        println!(
            "  steady state, between the sightings of the 10 % and 90 % marks: {rate:.0} tx/s over {:.2} s = {:.3}x the bound (the higher reading)",
            window.as_secs_f64(),
            rate / higher.max(1e-9)
        );
    }
    // The same bound per core-second: what the nodes' CPU time would buy if
    // it all went to the one batch verification per validator.
    let bound_per_core_second = higher / cores as f64;
    println!(
        "  per CPU-second: {per_node_cpu_second:.0} tx per node-CPU-second against {bound_per_core_second:.0} per core-second = {:.3}x (the nodes held {:.2} of the {cores} cores)",
        per_node_cpu_second / bound_per_core_second.max(1e-9),
        node_cpu / span.as_secs_f64().max(1e-9)
    );
    let batching_after = metrics_texts(nodes);
    print_batching(&batching_before, &batching_after);
    print_stages(
        &stage_histograms(&batching_before),
        &stage_histograms(&batching_after),
    );
    println!(
        "  consensus round timeouts at saturation, all nodes together: {}",
        timeouts_between(&batching_before, &batching_after)
    );
    println!(
        "  proposal transactions the validators had to fetch (not gossiped to them in time): {}",
        fetched_between(&batching_before, &batching_after)
    );
    let checked = metric_total(&batching_after, "keyreg_checked_txs_total", "").saturating_sub(
        metric_total(&batching_before, "keyreg_checked_txs_total", ""),
    );
    println!(
        "  signature checks per committed transaction per validator: {:.3} ({checked} transactions checked on all nodes; 1 when none is checked twice)",
        checked as f64 / (committed_count.max(1) * nodes.len()) as f64
    );
    for f in load.failures.iter().take(5) {
        println!("  failure: {f}");
    }
    // Registrations must have executed, not merely been included.
    for hash in hashes.iter().step_by((hashes.len() / 20).max(1)) {
        let status = nodes[0].tx_status(hash)?.context("committed tx unknown")?;
        if status.status != "committed" {
            bail!(
                "transaction {hash} is {}: {:?}",
                status.status,
                status.error
            );
        }
    }

    // Latency at low load and at half the saturation rate.
    let low_count = ((args.rate * args.latency_seconds).ceil() as usize).max(1);
    let low_txs: Vec<Transaction> = registration_txs(&chain_id, &admin, "low", low_count)?;
    let low = latency_run(net, &watcher, &low_txs, args.rate, args.threads, 1)?;
    print_latency("latency, low load", &low);
    let half_rate = (throughput / 2.0).max(1.0);
    let half_count = ((half_rate * args.latency_seconds).ceil() as usize).max(1);
    let half_txs: Vec<Transaction> = registration_txs(&chain_id, &admin, "half", half_count)?;
    let metrics_before = metrics_texts(nodes);
    let half = latency_run(
        net,
        &watcher,
        &half_txs,
        half_rate,
        args.threads,
        args.batch,
    )?;
    print_latency("latency, half saturation", &half);
    let metrics_after = metrics_texts(nodes);
    print_stages(
        &stage_histograms(&metrics_before),
        &stage_histograms(&metrics_after),
    );
    print_phase_rounds(&metrics_before, &metrics_after);

    lookup_phase(args, nodes, &anchor, &saturation)?;
    // The flood's revocations name other devices than the first phase's.
    let revoked = committed.iter().flatten().count().min(args.revocations);
    for (skip, background) in [
        (0, Background::Paced(half_rate)),
        (revoked, Background::Saturating(throughput)),
    ] {
        let registered = (saturation.as_slice(), committed.as_slice());
        revocation_phase(args, nodes, &anchor, &admin, registered, skip, background)?;
    }
    watcher.finish()
}

/// The sum over `nodes` of a counter from `GET /metrics` (0 where a node
/// does not answer).
/// Every node's `/metrics` text, fetched once (nodes that do not answer
/// are left out).
fn metrics_texts(nodes: &[NodeClient]) -> Vec<String> {
    nodes
        .iter()
        .filter_map(|node| {
            ureq::get(&format!("{}/metrics", node.url()))
                .call()
                .ok()?
                .into_string()
                .ok()
        })
        .collect()
}

/// The sum over `texts` of every series of metric `name` whose labels
/// contain `labels` (`""`: all of them).
fn metric_total(texts: &[String], name: &str, labels: &str) -> u64 {
    texts
        .iter()
        .flat_map(|text| text.lines())
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (series, value) = rest.rsplit_once(' ')?;
            let labelled = series.is_empty() || series.starts_with('{');
            (labelled && series.contains(labels)).then(|| value.parse::<u64>().ok())?
        })
        .sum()
}

/// What slowed heights down between two readings of every node's metrics:
/// rounds that timed out, and proposal transactions fetched from a peer.
fn print_phase_rounds(before: &[String], after: &[String]) {
    println!(
        "  consensus round timeouts meanwhile, all nodes together: {}; proposal transactions fetched: {}",
        timeouts_between(before, after),
        fetched_between(before, after)
    );
}

fn fetched_between(before: &[String], after: &[String]) -> u64 {
    let fetched = |texts| metric_total(texts, "keyreg_fetched_txs_total", "");
    fetched(after).saturating_sub(fetched(before))
}

/// The steps whose timeouts `keyreg_round_timeouts_total` counts.
const ROUND_STEPS: [&str; 3] = ["propose", "prevote", "precommit"];

/// The round timeouts between two readings of every node's metrics, by
/// step: "propose 0, prevote 0, precommit 0" when no round failed.
fn timeouts_between(before: &[String], after: &[String]) -> String {
    let (before, after) = (round_timeouts(before), round_timeouts(after));
    ROUND_STEPS
        .iter()
        .zip(after.iter().zip(&before))
        .map(|(step, (after, before))| format!("{step} {}", after.saturating_sub(*before)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Round timeouts so far over all nodes, by step (as [`ROUND_STEPS`]).
fn round_timeouts(texts: &[String]) -> [u64; 3] {
    ROUND_STEPS.map(|step| {
        metric_total(
            texts,
            "keyreg_round_timeouts_total",
            &format!("step=\"{step}\""),
        )
    })
}

/// The nodes' timing histograms of a height's stages, in pipeline order.
const STAGES: [(&str, &str); 4] = [
    ("keyreg_block_execute_seconds", "execute a proposal"),
    ("keyreg_safety_persist_seconds", "persist before a vote"),
    ("keyreg_block_commit_seconds", "commit (synced write)"),
    ("keyreg_height_seconds", "height start to commit"),
];

/// A Prometheus histogram summed over nodes: cumulative counts by upper
/// bound (ascending), and the number of observations.
#[derive(Clone, Debug, Default, PartialEq)]
struct Histogram {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn add_line(&mut self, name: &str, line: &str) {
        let Some(rest) = line.strip_prefix(name) else {
            return;
        };
        let mut parts = rest.rsplitn(2, ' ');
        let (Some(value), Some(series)) = (parts.next(), parts.next()) else {
            return;
        };
        let Ok(value) = value.parse::<f64>() else {
            return;
        };
        if series == "_sum" {
            self.sum += value;
        } else if series == "_count" {
            self.count += value as u64;
        } else if let Some(le) = series
            .strip_prefix("_bucket{le=\"")
            .and_then(|b| b.strip_suffix("\"}"))
        {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            match self.buckets.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, n)) => *n += value as u64,
                None => self.buckets.push((bound, value as u64)),
            }
        }
    }

    /// What was observed after `earlier`.
    fn since(&self, earlier: &Histogram) -> Histogram {
        let before = |bound: f64| {
            earlier
                .buckets
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0, |(_, n)| *n)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|&(b, n)| (b, n.saturating_sub(before(b))))
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count.saturating_sub(earlier.count),
        }
    }

    /// The upper bound of the bucket holding quantile `q`.
    fn quantile_bound(&self, q: f64) -> f64 {
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        self.buckets
            .iter()
            .find(|(_, n)| *n >= rank)
            .map_or(f64::INFINITY, |(b, _)| *b)
    }
}

/// The histogram `name` summed over the nodes' metrics `texts`.
fn summed_histogram(texts: &[String], name: &str) -> Histogram {
    let mut histogram = Histogram::default();
    for line in texts.iter().flat_map(|t| t.lines()) {
        histogram.add_line(name, line);
    }
    histogram.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    histogram
}

fn stage_histograms(texts: &[String]) -> Vec<Histogram> {
    STAGES
        .iter()
        .map(|(name, _)| summed_histogram(texts, name))
        .collect()
}

/// How the throughput phase batched: transactions per admission round
/// (one batch verification) and per committed block, over all nodes.
fn print_batching(before: &[String], after: &[String]) {
    let rounds = summed_histogram(after, ADMISSION_ROUNDS)
        .since(&summed_histogram(before, ADMISSION_ROUNDS));
    let increase =
        |name| metric_total(after, name, "").saturating_sub(metric_total(before, name, ""));
    let blocks = increase("keyreg_commits_total");
    let txs = increase("keyreg_transactions_total");
    println!(
        "  batching, all nodes: {} admission rounds of mean {:.0} transactions (p50 <= {:.0}, p99 <= {:.0}); {blocks} block commits of mean {:.0} transactions",
        rounds.count,
        rounds.sum / rounds.count.max(1) as f64,
        rounds.quantile_bound(0.5),
        rounds.quantile_bound(0.99),
        txs as f64 / blocks.max(1) as f64,
    );
}

const ADMISSION_ROUNDS: &str = "keyreg_admission_round_transactions";

fn print_stages(before: &[Histogram], after: &[Histogram]) {
    println!("  where the nodes' heights spent their time meanwhile (all nodes; bucket bounds):");
    for ((_, label), (before, after)) in STAGES.iter().zip(before.iter().zip(after)) {
        let h = after.since(before);
        if h.count == 0 {
            continue;
        }
        println!(
            "    {label:<24} {:>6} times, mean {:>6.1} ms, p50 <= {:>5.0} ms, p99 <= {:>5.0} ms, max <= {:>5.0} ms",
            h.count,
            h.sum / h.count as f64 * 1e3,
            h.quantile_bound(0.5) * 1e3,
            h.quantile_bound(0.99) * 1e3,
            h.quantile_bound(1.0) * 1e3,
        );
    }
}

/// Item 4: client-side verification cost of a look-up, and one node's serving rate.
fn lookup_phase(
    args: &Args,
    nodes: &[NodeClient],
    anchor: &TrustAnchor,
    saturation: &[(DeviceName, Transaction)],
) -> anyhow::Result<()> {
    let chain_id = anchor.chain_id.as_str();
    let (name, _) = &saturation[0];
    let proof = nodes[0].device_proof(name)?;
    let record = verify_device_proof(chain_id, &anchor.validator_set, &proof)?
        .context("a registered device has no record")?;
    let record_bytes = record.to_bytes();
    let cold = mean_time(1.0, || {
        verify_device_proof(chain_id, &anchor.validator_set, &proof)?;
        Ok(())
    })?;
    let warm = mean_time(1.0, || {
        proof.proof.verify(
            &proof.header.state_root,
            &name.state_key(),
            Some(&record_bytes),
        )?;
        Ok(())
    })?;
    let fetch_and_verify = mean_time(2.0, || {
        let p = nodes[0].device_proof(name)?;
        verify_device_proof(chain_id, &anchor.validator_set, &p)?;
        Ok(())
    })?;
    println!(
        "verified look-up, client side: cold (certificate + proof) {:.1} us, header already verified (proof only) {:.1} us; GET + decode + cold verify, one thread: {:.2} ms",
        cold.as_secs_f64() * 1e6,
        warm.as_secs_f64() * 1e6,
        ms(fetch_and_verify)
    );
    let served = AtomicUsize::new(0);
    let errors = AtomicUsize::new(0);
    let lookup_budget = Duration::from_secs_f64(args.lookup_seconds);
    let lookup_start = Instant::now();
    thread::scope(|s| {
        for t in 0..args.threads {
            let (served, errors, saturation) = (&served, &errors, &saturation);
            s.spawn(move || {
                let mut i = t;
                while lookup_start.elapsed() < lookup_budget {
                    let (name, _) = &saturation[i % saturation.len()];
                    match nodes[0].device_proof(name) {
                        Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                    i += args.threads;
                }
            });
        }
    });
    let lookup_rate = served.into_inner() as f64 / lookup_start.elapsed().as_secs_f64();
    println!(
        "look-ups served by one node over HTTP ({} client threads, {:.0} s, proofs decoded not verified): {lookup_rate:.0}/s ({} errors)",
        args.threads,
        args.lookup_seconds,
        errors.into_inner()
    );

    Ok(())
}

/// The registrations that run while revocations are measured.
#[derive(Clone, Copy)]
enum Background {
    /// At this many tx/s (half of saturation).
    Paced(f64),
    /// A flood: [`FLOOD_THREADS`] clients submitting full batches as fast
    /// as they are accepted, so the mempools hold a backlog of several
    /// blocks; pre-signed for a few seconds at this rate (the saturation
    /// rate). The revocations start [`FLOOD_LEAD`] into it.
    Saturating(f64),
}

/// Clients of the flood; each has a batch of [`MAX_SUBMIT_BATCH`] in flight.
const FLOOD_THREADS: usize = 64;
/// How long the flood runs before the first revocation, to build its backlog.
const FLOOD_LEAD: Duration = Duration::from_secs(1);

/// A revocation's submission: when it was first attempted (wall clock, as
/// block headers stamp their proposals) and how long the node took to
/// answer it (admission, busy retries included).
struct Submission {
    index: usize,
    at_unix_ms: u64,
    answered_after: Duration,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where a revocation's visibility went: how long its submission took to be
/// answered, and how long after it the block that holds it was proposed
/// (header timestamps; nodes and load generator share one clock here),
/// with the intervals between those blocks' proposals. What is left of the
/// visibility after the proposal is the height itself and the polling.
fn print_revocation_path(
    node: &NodeClient,
    revocations: &[(DeviceName, Transaction)],
    submissions: &[Submission],
) {
    let mut proposed_at: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut answered, mut included) = (Vec::new(), Vec::new());
    for submission in submissions {
        answered.push(submission.answered_after);
        let Some((_, tx)) = revocations.get(submission.index) else {
            continue;
        };
        let Ok(Some(height)) = node.tx_status(&tx.hash()).map(|s| s.and_then(|s| s.height)) else {
            continue;
        };
        let stamp = match proposed_at.entry(height) {
            Entry::Occupied(stamp) => *stamp.get(),
            Entry::Vacant(slot) => match node.block(height) {
                Ok(block) => *slot.insert(block.block.header.timestamp_ms),
                Err(_) => continue,
            },
        };
        included.push(Duration::from_millis(
            stamp.saturating_sub(submission.at_unix_ms),
        ));
    }
    answered.sort();
    included.sort();
    let stamps: Vec<u64> = proposed_at.values().copied().collect();
    let spacing = match (stamps.first(), stamps.last()) {
        (Some(first), Some(last)) if stamps.len() > 1 => {
            format!(
                ", {:.0} ms apart on average",
                last.saturating_sub(*first) as f64 / (stamps.len() - 1) as f64
            )
        }
        _ => String::new(),
    };
    println!(
        "  revocation path: submission answered p50 {:.0} ms, p99 {:.0} ms; block holding it proposed p50 {:.0} ms, p99 {:.0} ms after submission ({} of {} found, in {} blocks{spacing})",
        ms(percentile(&answered, 0.5)),
        ms(percentile(&answered, 0.99)),
        ms(percentile(&included, 0.5)),
        ms(percentile(&included, 0.99)),
        included.len(),
        submissions.len(),
        proposed_at.len(),
    );
}

/// Item 6: revocations of devices registered at saturation (`committed[i]` is
/// `Some` when `saturation[i]` committed; the first `skip` such are left
/// out), under a `background` of registrations: submission (its first
/// attempt: a busy refusal is retried) -> first verified proof showing
/// `Revoked`.
fn revocation_phase(
    args: &Args,
    nodes: &[NodeClient],
    anchor: &TrustAnchor,
    admin: &AdminKey,
    (saturation, committed): (&[(DeviceName, Transaction)], &[Option<Instant>]),
    skip: usize,
    kind: Background,
) -> anyhow::Result<()> {
    let chain_id = anchor.chain_id.as_str();
    let revocations: Vec<(DeviceName, Transaction)> = saturation
        .iter()
        .zip(committed)
        .filter(|(_, c)| c.is_some())
        .skip(skip)
        .take(args.revocations)
        .map(|((name, _), _)| {
            let tx = revoke(chain_id, name, "bench", Authority::Admin, &admin.signing);
            (name.clone(), tx)
        })
        .collect();
    let revocation_seconds = revocations.len() as f64 / args.revocation_rate;
    let (background_rate, background_seconds, prefix) = match kind {
        Background::Paced(rate) => (rate, revocation_seconds + 10.0, "bg"),
        Background::Saturating(rate) => (
            rate,
            FLOOD_LEAD.as_secs_f64() + revocation_seconds + 3.0,
            "bgs",
        ),
    };
    let (threads, batch, rate, lead) = match kind {
        Background::Paced(rate) => (args.threads, args.batch, Some(rate), Duration::ZERO),
        Background::Saturating(_) => (FLOOD_THREADS, MAX_SUBMIT_BATCH, None, FLOOD_LEAD),
    };
    let background_count = ((background_rate * background_seconds).ceil() as usize).max(1);
    let background: Vec<Transaction> = registration_txs(chain_id, admin, prefix, background_count)?;
    let (label, offered) = match kind {
        Background::Paced(rate) => ("", format!("{rate:.0} tx/s of registrations")),
        Background::Saturating(_) => (
            " at saturation",
            "registrations submitted as fast as accepted".to_string(),
        ),
    };
    let stop_background = AtomicBool::new(false);
    let pending: Mutex<Vec<(usize, Instant)>> = Mutex::new(Vec::new());
    let submissions_done = AtomicBool::new(false);
    let phase_deadline = lead + Duration::from_secs_f64(revocation_seconds) + COMMIT_DEADLINE;
    let metrics_before = metrics_texts(nodes);
    let phase_start = Instant::now();
    let (visible, revocation_failures) = thread::scope(|s| -> anyhow::Result<_> {
        let background_load = s.spawn(|| {
            run_load(
                nodes,
                &background,
                threads,
                batch,
                rate,
                phase_deadline,
                &stop_background,
            )
        });
        let submitter = s.spawn(|| {
            let mut failures = Vec::new();
            let mut answered = Vec::new();
            for (i, (_, tx)) in revocations.iter().enumerate() {
                let due =
                    phase_start + lead + Duration::from_secs_f64(i as f64 / args.revocation_rate);
                thread::sleep(due.saturating_duration_since(Instant::now()));
                let at = Instant::now();
                let at_unix_ms = unix_ms();
                let mut pause = Duration::from_millis(10);
                // Ends: every retry sleeps, and the phase deadline stops it.
                loop {
                    match nodes[i % nodes.len()].submit(tx) {
                        Ok(_) => match pending.lock() {
                            Ok(mut p) => {
                                p.push((i, at));
                                answered.push(Submission {
                                    index: i,
                                    at_unix_ms,
                                    answered_after: at.elapsed(),
                                });
                            }
                            Err(_) => failures.push("poisoned".to_string()),
                        },
                        Err(e) if e.is_busy() && phase_start.elapsed() + pause < phase_deadline => {
                            thread::sleep(pause);
                            pause = (pause * 2).min(Duration::from_millis(200));
                            continue;
                        }
                        Err(e) => failures.push(format!("revocation {i}: {e}")),
                    }
                    break;
                }
            }
            submissions_done.store(true, Ordering::Relaxed);
            (failures, answered)
        });
        let polled = poll_revocations(
            nodes,
            anchor,
            &revocations,
            &pending,
            &submissions_done,
            phase_start + phase_deadline,
        );
        stop_background.store(true, Ordering::Relaxed);
        let (mut failures, answered) = submitter
            .join()
            .unwrap_or_else(|_| (vec!["revocation submitter panicked".into()], Vec::new()));
        let (visible, poll_errors, mut lookups) = polled?;
        lookups.sort();
        println!(
            "  polling: {} look-ups (GET + verify), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            lookups.len(),
            ms(percentile(&lookups, 0.5)),
            ms(percentile(&lookups, 0.99)),
            ms(lookups.last().copied().unwrap_or_default())
        );
        if poll_errors > 0 {
            failures.push(format!("{poll_errors} look-up errors while polling"));
        }
        let background = background_load
            .join()
            .map_err(|_| anyhow::anyhow!("background load panicked"))?;
        println!(
            "  background load during revocations: {offered}, {} submitted, {} busy retries",
            background.submitted.iter().flatten().count(),
            background.busy_retries
        );
        print_phase_rounds(&metrics_before, &metrics_texts(nodes));
        print_revocation_path(&nodes[0], &revocations, &answered);
        Ok((visible, failures))
    })?;
    let mut visible = visible;
    visible.sort();
    println!(
        "revocation visibility{label} ({} revocations at {:.0}/s, under {offered}; verified proof shows Revoked, polled every {} ms): {}/{} visible, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        revocations.len(),
        args.revocation_rate,
        POLL.as_millis(),
        visible.len(),
        revocations.len(),
        ms(percentile(&visible, 0.5)),
        ms(percentile(&visible, 0.99)),
        ms(visible.last().copied().unwrap_or_default())
    );
    for f in revocation_failures.iter().take(5) {
        println!("  revocation issue: {f}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{steady_rate, Histogram};

    fn parsed(text: &str) -> Histogram {
        let mut h = Histogram::default();
        for line in text.lines() {
            h.add_line("keyreg_x_seconds", line);
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        h
    }

    #[test]
    fn histograms_sum_over_nodes_and_subtract_and_give_quantile_buckets() {
        let node = "keyreg_x_seconds_sum 0.5\nkeyreg_x_seconds_count 4\n\
                    keyreg_x_seconds_bucket{le=\"0.001\"} 1\n\
                    keyreg_x_seconds_bucket{le=\"0.002\"} 3\n\
                    keyreg_x_seconds_bucket{le=\"+Inf\"} 4\n\
                    keyreg_y_seconds_count 100\n";
        let earlier = parsed(node);
        let later = parsed(&format!("{node}{node}"));
        assert_eq!(later.count, 8);
        assert_eq!(later.buckets[1], (0.002, 6));
        let delta = later.since(&earlier);
        assert_eq!(delta, earlier);
        assert_eq!(delta.quantile_bound(0.25), 0.001);
        assert_eq!(delta.quantile_bound(0.5), 0.002);
        assert_eq!(delta.quantile_bound(1.0), f64::INFINITY);
    }

    #[test]
    fn the_steady_rate_leaves_out_fill_and_drain() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Twenty blocks of 50: a slow first block (fill, 1 s), eighteen
        // blocks every 100 ms (500 tx/s), and a late last block (drain).
        let mut commits: Vec<Instant> = Vec::new();
        commits.extend(std::iter::repeat_n(at(1_000), 50));
        for block in 1..=18 {
            commits.extend(std::iter::repeat_n(at(2_000 + 100 * block), 50));
        }
        commits.extend(std::iter::repeat_n(at(9_000), 50));
        commits.reverse();
        let (rate, window) = steady_rate(&mut commits).expect("a window");
        // The 10 % mark is block 2 (2 200 ms), the 90 % mark block 18
        // (3 800 ms): blocks 3..=18 commit 800 transactions in 1.6 s.
        assert_eq!(window, Duration::from_millis(1_600));
        assert!((rate - 500.0).abs() < 1e-9, "{rate}");
        // One sighting has no window.
        assert_eq!(steady_rate(&mut vec![t0; 50]), None);
    }
}
