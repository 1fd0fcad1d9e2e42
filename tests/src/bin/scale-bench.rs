//! A registry of up to 10^7 devices in RocksDB (see docs/benchmarks.md):
//! disk size, node memory, look-up latency and proof size as it grows.
//!
//! `cargo run --release -p keyreg-tests --bin scale-bench -- [--checkpoints 100000,1000000,10000000]
//!  [--lookups 2000] [--keep-tree-versions N] [--dir PATH] [--csv PATH] [--node-bin PATH]`
//!
//! Generates a one-validator testnet (`keyreg-node testnet --validators 1`)
//! and fills node 0's RocksDB ledger with certified blocks of lot
//! registrations (`demo/scale-<i>`, distinct keys, one metadata entry),
//! written through `Ledger::commit` exactly as the node writes them. At each
//! checkpoint it measures the ledger's size on disk, then starts the node on
//! it and measures its resident memory and the latency of `GET
//! /v1/devices/{name}` (present and absent names, one at a time), verifies
//! every proof it got and records proof sizes, and stops the node before
//! loading on.
//!
//! Old tree versions are pruned as the node prunes them (every
//! `PRUNE_INTERVAL` heights, in steps of about `PRUNE_CHUNK` nodes),
//! keeping `--keep-tree-versions` (default: the node's default); each
//! pruning is timed, and so is its longest step (what a node's commit or
//! reader may wait for). The bench's blocks are full (~2 000 registrations), so
//! each version holds more changed nodes than a typical block's would.
//! Only the load skips something the node does: the registrations' signatures
//! (signed here, one proof of possession per device and one admin signature
//! per lot) are not verified again on execution (`already_passed`), since
//! that would measure Ed25519, not the store (`sig-bench` does that).

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use keyreg_client::keys::AdminKey;
use keyreg_client::node::NodeClient;
use keyreg_consensus::codec::{try_encode, Canonical};
use keyreg_consensus::crypto::{hash, Domain, SigningKey};
use keyreg_node::config::{StorageConfig, PRUNE_INTERVAL};
use keyreg_node::keys::read_key_file;
use keyreg_registry::names::DeviceName;
use keyreg_registry::records::{AgreementKey, Metadata};
use keyreg_registry::testkit::certify;
use keyreg_registry::tx::{DeviceRegistration, Transaction, TxBody, MAX_LOT_SIZE, MAX_TX_BYTES};
use keyreg_registry::{verify_device_proof, CommittedBlock, Genesis, Ledger, RocksLedgerStore};
use keyreg_tests::bench::{
    default_node_bin, disk_bytes, ms, percentile, rss_bytes, wait_for_height, LocalTestnet,
};

/// Devices generated (in parallel) per round of blocks.
const DEVICES_PER_ROUND: u64 = 40_000;
/// Room for a lot transaction's envelope (org, signature, header).
const LOT_ENVELOPE_RESERVE: usize = 4 * 1024;
/// Look-ups before measuring, so the node's caches are in their steady state.
const WARM_UP_LOOKUPS: usize = 200;

struct Args {
    checkpoints: Vec<u64>,
    lookups: usize,
    keep_tree_versions: u64,
    dir: Option<PathBuf>,
    csv: Option<PathBuf>,
    node_bin: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        checkpoints: vec![100_000, 1_000_000, 10_000_000],
        lookups: 2000,
        keep_tree_versions: StorageConfig::default().keep_tree_versions,
        dir: None,
        csv: None,
        node_bin: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--checkpoints" => {
                args.checkpoints = value
                    .split(',')
                    .map(|n| n.trim().parse::<u64>())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--checkpoints {value:?}"))?;
            }
            "--lookups" => args.lookups = value.parse()?,
            "--keep-tree-versions" => args.keep_tree_versions = value.parse()?,
            "--dir" => args.dir = Some(PathBuf::from(value)),
            "--csv" => args.csv = Some(PathBuf::from(value)),
            "--node-bin" => args.node_bin = Some(PathBuf::from(value)),
            _ => bail!("unknown flag {flag}"),
        }
    }
    ensure!(
        args.checkpoints.windows(2).all(|w| w[0] < w[1]) && args.checkpoints.first() > Some(&0),
        "--checkpoints must be increasing and positive"
    );
    ensure!(args.lookups > 0, "--lookups must be positive");
    Ok(args)
}

/// One row of the results.
struct Checkpoint {
    devices: u64,
    height: u64,
    load_seconds: f64,
    disk_bytes: u64,
    rss_bytes: u64,
    lookup_p50: Duration,
    lookup_p99: Duration,
    absent_p99: Duration,
    /// Mean canonical size of a present device's `DeviceProof` (record,
    /// tree proof, header, certificate) and of its tree proof alone.
    proof_bytes: usize,
    tree_proof_bytes: usize,
}

const CSV_HEADER: &str = "devices,disk_bytes,rss_bytes,lookup_p50_us,lookup_p99_us,proof_bytes";

fn main() {
    if let Err(e) = run() {
        eprintln!("scale-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    let node_bin = args.node_bin.clone().map_or_else(default_node_bin, Ok)?;
    let mut net = LocalTestnet::generate(&node_bin, 1, args.dir.as_deref())?;
    let genesis = Genesis::from_json(&std::fs::read_to_string(net.dir().join("genesis.json"))?)?;
    let validator = read_key_file(&net.home(0).join("node.key"), None)?;
    let admin = AdminKey::load(&net.dir().join("demo-admin.key"))?;
    let data = net.home(0).join("data");
    println!(
        "scale-bench: ledger in {}; checkpoints {:?}; {} look-ups each; keeping {} tree versions",
        data.display(),
        args.checkpoints,
        args.lookups,
        args.keep_tree_versions
    );
    let mut csv = match &args.csv {
        Some(path) => {
            let mut file = std::fs::File::create(path)?;
            writeln!(file, "{CSV_HEADER}")?;
            Some(file)
        }
        None => None,
    };
    let mut loaded = 0u64;
    let mut load_seconds = 0.0;
    for &target in &args.checkpoints {
        let started = Instant::now();
        let height = load(
            &genesis,
            &data,
            &validator,
            &admin,
            loaded,
            target,
            args.keep_tree_versions,
        )?;
        load_seconds += started.elapsed().as_secs_f64();
        loaded = target;
        let row = measure(
            &mut net,
            &genesis,
            &data,
            loaded,
            height,
            load_seconds,
            args.lookups,
        )
        .with_context(|| format!("measuring at {loaded} devices\n{}", net.log_tails()))?;
        print_row(&row);
        if let Some(file) = csv.as_mut() {
            writeln!(
                file,
                "{},{},{},{:.0},{:.0},{}",
                row.devices,
                row.disk_bytes,
                row.rss_bytes,
                row.lookup_p50.as_secs_f64() * 1e6,
                row.lookup_p99.as_secs_f64() * 1e6,
                row.proof_bytes
            )?;
        }
    }
    Ok(())
}

fn device_name(i: u64) -> anyhow::Result<DeviceName> {
    Ok(DeviceName::new(&format!("demo/scale-{i}"))?)
}

/// Device `i`'s registration: its own Ed25519 key (from a seed), an X25519
/// public key and a next-key commitment (random-looking bytes: the bench
/// never opens sessions), one metadata entry, and its proof of possession.
fn registration(chain_id: &str, i: u64) -> anyhow::Result<DeviceRegistration> {
    let seed = hash(Domain::BatchSeed, &i.to_le_bytes());
    let key = SigningKey::from_seed(seed.0);
    let agreement = AgreementKey(hash(Domain::Handshake, &seed.0).0);
    let commitment = hash(Domain::Transaction, &seed.0);
    let metadata = Metadata::from([("fw".to_string(), format!("1.{}", i % 100))]);
    Ok(DeviceRegistration::new_signed(
        chain_id,
        device_name(i)?,
        &key,
        agreement,
        Some(commitment),
        None,
        metadata,
    ))
}

/// Registrations of devices `from..to`, generated on every core.
fn registrations(chain_id: &str, from: u64, to: u64) -> anyhow::Result<Vec<DeviceRegistration>> {
    let threads = thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let per_thread = (to - from).div_ceil(threads);
    thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let start = (from + t * per_thread).min(to);
                let end = (start + per_thread).min(to);
                scope.spawn(move || (start..end).map(|i| registration(chain_id, i)).collect())
            })
            .collect();
        let mut all = Vec::with_capacity((to - from) as usize);
        for handle in handles {
            let part: anyhow::Result<Vec<_>> = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a generator thread panicked"))?;
            all.extend(part?);
        }
        Ok(all)
    })
}

/// Lot transactions of `devices`, each within the lot and size limits.
fn lots(
    chain_id: &str,
    admin: &AdminKey,
    devices: Vec<DeviceRegistration>,
) -> anyhow::Result<Vec<Transaction>> {
    let mut largest = 1;
    for device in &devices {
        largest = largest.max(try_encode(device)?.len());
    }
    let per_lot = MAX_LOT_SIZE.min((MAX_TX_BYTES - LOT_ENVELOPE_RESERVE) / largest);
    let mut txs = Vec::new();
    let mut devices = devices.into_iter().peekable();
    while devices.peek().is_some() {
        let lot: Vec<_> = devices.by_ref().take(per_lot).collect();
        let body = TxBody::RegisterLot {
            org: admin.org.clone(),
            devices: lot,
        };
        txs.push(Transaction::new(chain_id, body).signed_by(&[&admin.signing]));
    }
    Ok(txs)
}

/// Appends certified blocks registering devices `from..to`; returns the
/// head height.
fn load(
    genesis: &Genesis,
    data: &Path,
    validator: &SigningKey,
    admin: &AdminKey,
    from: u64,
    to: u64,
    keep_tree_versions: u64,
) -> anyhow::Result<u64> {
    let mut ledger = Ledger::open(RocksLedgerStore::open(data)?, genesis)?;
    let chain_id = ledger.chain_id().to_string();
    let progress_every = ((to - from) / 10).max(DEVICES_PER_ROUND);
    let mut next_report = from + progress_every;
    let started = Instant::now();
    // Each pruning: how long it took, the nodes it deleted, and its longest
    // step (the node prunes in steps beside its commits; a step is what a
    // commit may wait for).
    let mut prunes: Vec<(Duration, u64, Duration)> = Vec::new();
    let mut next = from;
    while next < to {
        let end = (next + DEVICES_PER_ROUND).min(to);
        let mut pending: VecDeque<Transaction> =
            lots(&chain_id, admin, registrations(&chain_id, next, end)?)?.into();
        while !pending.is_empty() {
            let set = ledger.validator_set().clone();
            let timestamp_ms = now_ms().max(ledger.head().timestamp_ms + 1);
            let (block, execution) = ledger.propose(
                pending.iter().cloned().collect(),
                timestamp_ms,
                validator.public(),
                // Signed above by this process; see the module comment.
                |_| true,
            )?;
            ensure!(
                !block.transactions.is_empty(),
                "a lot does not fit in a block"
            );
            if let Some(rejected) = execution.results.iter().find_map(|r| r.clone().err()) {
                bail!("a lot was rejected: {rejected}");
            }
            pending.drain(..block.transactions.len());
            let certificate = certify(&chain_id, &set, std::slice::from_ref(validator), &block);
            let committed = CommittedBlock {
                version: CommittedBlock::VERSION,
                block,
                certificate,
            };
            ledger.commit(&committed, execution)?;
            if keep_tree_versions > 0 && ledger.height().is_multiple_of(PRUNE_INTERVAL) {
                let oldest = ledger.oldest_to_keep(keep_tree_versions);
                let pruning = Instant::now();
                let (mut deleted, mut longest_step) = (0, Duration::ZERO);
                // Ends: each step that is not done deletes stale entries at
                // or below `oldest`, and nothing adds any there.
                loop {
                    let step_started = Instant::now();
                    let step = ledger.prune_step(oldest)?;
                    longest_step = longest_step.max(step_started.elapsed());
                    deleted += step.deleted;
                    if step.done {
                        break;
                    }
                }
                prunes.push((pruning.elapsed(), deleted, longest_step));
            }
        }
        next = end;
        if next >= next_report || next == to {
            let rate = (next - from) as f64 / started.elapsed().as_secs_f64();
            println!(
                "  loaded {next} devices (height {}, {rate:.0} devices/s)",
                ledger.height()
            );
            next_report += progress_every;
        }
    }
    if let Some((longest, _, _)) = prunes.iter().max() {
        let deleted: u64 = prunes.iter().map(|(_, deleted, _)| deleted).sum();
        let took: Duration = prunes.iter().map(|(took, _, _)| *took).sum();
        let longest_step = prunes
            .iter()
            .map(|(_, _, step)| *step)
            .max()
            .unwrap_or_default();
        println!(
            "  pruning: {} times, {deleted} tree nodes deleted in {:.0} ms ({:.2} us a node), the longest pruning {:.0} ms, the longest step {:.1} ms",
            prunes.len(),
            ms(took),
            took.as_secs_f64() * 1e6 / deleted.max(1) as f64,
            ms(*longest),
            ms(longest_step),
        );
    }
    print_column_families(ledger.store())?;
    Ok(ledger.height())
}

/// What each column family's tables hold (the memtables not counted):
/// where the disk goes, and what compression saves there.
fn print_column_families(store: &RocksLedgerStore) -> anyhow::Result<()> {
    let sizes = store.column_family_sizes()?;
    let rows: Vec<String> = sizes
        .iter()
        .filter(|cf| cf.entries > 0)
        .map(|cf| {
            format!(
                "{} {} entries, {:.1} MiB raw, {:.1} MiB stored",
                cf.name,
                cf.entries,
                cf.raw_bytes as f64 / (1 << 20) as f64,
                cf.stored_bytes as f64 / (1 << 20) as f64
            )
        })
        .collect();
    if rows.is_empty() {
        println!("  tables by column family: none yet (everything is in the memtables)");
    } else {
        println!("  tables by column family: {}", rows.join("; "));
    }
    Ok(())
}

/// Starts the node on the loaded ledger, measures, stops it.
fn measure(
    net: &mut LocalTestnet,
    genesis: &Genesis,
    data: &Path,
    devices: u64,
    height: u64,
    load_seconds: f64,
    lookups: usize,
) -> anyhow::Result<Checkpoint> {
    let disk_bytes = disk_bytes(data)?;
    net.start(0)?;
    let node = net.nodes.first().context("no node")?.clone();
    wait_for_height(
        std::slice::from_ref(&node),
        height,
        Duration::from_secs(120),
    )?;
    let set = genesis.validator_set()?;
    let chain_id = genesis.chain_id.clone();
    // xorshift64*: the same names at every checkpoint size.
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ devices;
    let mut pick = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for _ in 0..WARM_UP_LOOKUPS {
        node.device_proof(&device_name(pick() % devices)?)?;
    }
    let mut present = Vec::with_capacity(lookups);
    let mut absent = Vec::with_capacity(lookups / 4);
    let (mut proof_total, mut tree_proof_total) = (0usize, 0usize);
    for n in 0..lookups + lookups / 4 {
        let is_present = n < lookups;
        let i = pick() % devices;
        let name = device_name(if is_present { i } else { devices + i })?;
        let (proof, took) = timed_lookup(&node, &name)?;
        let record = verify_device_proof(&chain_id, &set, &proof)
            .with_context(|| format!("the proof of {name} does not verify"))?;
        ensure!(
            record.is_some() == is_present,
            "{name}: expected {}",
            if is_present { "a record" } else { "absence" }
        );
        if is_present {
            present.push(took);
            proof_total += proof.to_bytes().len();
            tree_proof_total += proof.proof.to_bytes().len();
        } else {
            absent.push(took);
        }
    }
    let pid = *net.pids().first().context("the node is not running")?;
    let rss_bytes = rss_bytes(pid)?;
    net.stop(0)?;
    present.sort();
    absent.sort();
    Ok(Checkpoint {
        devices,
        height,
        load_seconds,
        disk_bytes,
        rss_bytes,
        lookup_p50: percentile(&present, 0.5),
        lookup_p99: percentile(&present, 0.99),
        absent_p99: percentile(&absent, 0.99),
        proof_bytes: proof_total / lookups,
        tree_proof_bytes: tree_proof_total / lookups,
    })
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn timed_lookup(
    node: &NodeClient,
    name: &DeviceName,
) -> anyhow::Result<(keyreg_registry::DeviceProof, Duration)> {
    let started = Instant::now();
    let proof = node.device_proof(name)?;
    Ok((proof, started.elapsed()))
}

fn print_row(row: &Checkpoint) {
    println!(
        "devices {:>9}  height {:>5}  load {:>6.0} s  disk {:>7.1} MiB ({:.0} B/device)  node RSS {:>6.1} MiB  \
         look-up p50 {:.2} ms p99 {:.2} ms (absent p99 {:.2} ms)  proof {} B (tree proof {} B)",
        row.devices,
        row.height,
        row.load_seconds,
        row.disk_bytes as f64 / (1 << 20) as f64,
        row.disk_bytes as f64 / row.devices as f64,
        row.rss_bytes as f64 / (1 << 20) as f64,
        ms(row.lookup_p50),
        ms(row.lookup_p99),
        ms(row.absent_p99),
        row.proof_bytes,
        row.tree_proof_bytes
    );
}
