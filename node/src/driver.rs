//! The consensus driver: runs the sans-IO engine on a tokio task.
//!
//! * Timers: the engine's `ScheduleTimeout`s go into a min-heap the task
//!   sleeps on (timers are never cancelled; stale ones are ignored by the
//!   engine).
//! * Safety: `Persist` is written to the ledger store's metadata (RocksDB,
//!   synced) before any later action of the same list runs, above all before
//!   the votes that follow are gossiped; on start the engine is restored
//!   from it.
//! * Proposals come from the mempool (bounded by the block size limit);
//!   proposals from others are executed against the parent state before the
//!   engine may prevote for them.
//! * Commit writes block, certificate, tree nodes and indexes in one atomic
//!   synced batch (the ledger's), updates the mempool, and at an epoch change
//!   updates the network allow-list.
//! * Pacing: the next height starts once transactions are waiting and
//!   `min_block_interval` has passed since the previous height started,
//!   shortened in proportion to how much of a block is waiting (half a
//!   block's worth starts at once, and so does a waiting revocation: the
//!   urgent lane does not wait out the interval), except that an empty "heartbeat" block
//!   is produced every `heartbeat_interval` so certified headers stay fresh
//!   for light clients. Counting from the start, not the commit, means a
//!   height that took longer than the interval (slow links) is followed at
//!   once: the interval spaces blocks out, it does not add to a height's
//!   time. A message for the next height from another validator starts it
//!   at once.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::{hash, Domain};
use keyreg_consensus::{
    decode_message, Action, CommitCertificate, Engine, Event, Evidence, Hash, Message, MessageBody,
    Payload, SigningKey, Timeout, TimeoutKind,
};
use keyreg_registry::block::{BLOCK_OVERHEAD_BYTES, MAX_BLOCK_BYTES, MAX_BLOCK_TXS};
use keyreg_registry::execute::BlockExecution;
use keyreg_registry::{tx_root, Block, CommittedBlock, LedgerError, LedgerStore};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The engine's value, decoded from gossip by `decode_message` (fuzzed with
/// this type in `keyreg_tests::fuzz::consensus_message`).
pub use keyreg_registry::wire::BlockValue;
use keyreg_registry::wire::CompactBlock;

use crate::config::{ConsensusConfig, PRUNE_INTERVAL};
use crate::epochs;
use crate::network::{peer_id_of, Topic, MAX_GOSSIP_PAYLOAD};
use crate::node::{now_ms, DriverInput, NodeError, Shared};
use crate::safety::SafetyStore;
use crate::sync;

/// How often the engine re-sends its own messages of the current round.
const REBROADCAST_MS: u64 = 2000;
/// Proposals with a timestamp further than this in the future are refused,
/// so a proposer cannot make headers look fresher than they are.
const MAX_FUTURE_DRIFT_MS: u64 = 15_000;
/// Most transactions drained into one proposal (the block byte limit
/// binds first).
const MAX_TXS_PER_PROPOSAL: usize = MAX_BLOCK_TXS;
/// Bytes of a proposal made while urgent transactions (revocations) wait,
/// at most. Under a flood blocks are full and take a second or more each
/// on shared cores, and a revocation waits for the height under way and
/// then its own: with a quarter of the transactions to fetch, execute and
/// write, its own height is short (the median visibility under a flood
/// halved, docs/benchmarks.md session 26). A quarter of a block is still
/// about what loopback saturation commits per height, so the heights stay
/// efficient; full blocks resume once no urgent transaction waits.
pub const URGENT_PROPOSAL_BYTES: usize = MAX_BLOCK_BYTES / 4;
/// Waiting transaction bytes (or count) that start the next height without
/// waiting out the block interval: half a block. Under a backlog a proposal
/// still takes up to a whole block, which keeps throughput on slow links,
/// where a height's link crossings bound the heights per second; pacing by
/// the whole block would hold moderate loads back longer than they need.
const PACE_FULL_BYTES: usize = (MAX_BLOCK_BYTES - BLOCK_OVERHEAD_BYTES) / 2;
const PACE_FULL_TXS: usize = MAX_TXS_PER_PROPOSAL / 2;
/// Bound on pending timers (the engine keeps a handful per round).
const MAX_TIMERS: usize = 4096;
/// Bound on actions run for one input (each round of rules yields a few).
const MAX_ACTIONS_PER_INPUT: usize = 10_000;
/// Pacing checks (mempool non-empty, heartbeat due).
const PACING_TICK: Duration = Duration::from_millis(20);
/// Compact proposals whose missing transactions are being fetched at once.
const MAX_FETCHES: usize = 4;
/// How long a compact proposal's fetch first waits for admission to get
/// through what queued before it (the gossiped copies of its missing
/// transactions, most often). Short next to a round's timeouts.
const ADMISSION_WAIT: Duration = Duration::from_millis(100);
/// Most blocks at the current height whose transaction ids are kept for
/// their validation (one proposal per round; more only from an
/// equivocating proposer, whose blocks are then hashed again).
const MAX_KNOWN_TX_IDS: usize = 8;

/// Identical consensus payloads are deduplicated for half the rebroadcast
/// interval, so the engine's rebroadcasts are not swallowed by gossipsub.
pub const DUPLICATE_WINDOW: Duration = Duration::from_millis(REBROADCAST_MS / 2);

fn engine_config(c: &ConsensusConfig) -> keyreg_consensus::Config {
    keyreg_consensus::Config {
        timeout_propose_ms: c.timeout_propose_ms,
        timeout_propose_delta_ms: c.timeout_propose_ms / 2,
        timeout_prevote_ms: c.timeout_vote_ms,
        timeout_prevote_delta_ms: c.timeout_vote_ms / 2,
        timeout_precommit_ms: c.timeout_vote_ms,
        timeout_precommit_delta_ms: c.timeout_vote_ms / 2,
        rebroadcast_interval_ms: REBROADCAST_MS,
        max_message_bytes: MAX_GOSSIP_PAYLOAD,
        ..keyreg_consensus::Config::default()
    }
}

/// When the next height may start (see the module docs).
struct PendingStart {
    /// When the height just committed started here (its commit, when this
    /// node did not start it: the first after start-up or sync).
    previous_start: Instant,
    latest: Instant,
}

/// What waits in the mempool, as pacing sees it.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    txs: usize,
    bytes: usize,
    /// Whether the urgent lane (revocations) holds anything.
    urgent: bool,
}

impl PendingStart {
    /// Whether the next height starts at `now`, with `waiting` in the
    /// mempool.
    fn is_due(&self, now: Instant, min_interval: Duration, waiting: Waiting) -> bool {
        // The interval is there to fill blocks at low load, not to idle
        // under load: it shrinks as the waiting transactions fill half a
        // block, and that much waits for nobody; nor does a revocation,
        // which the interval would only delay (a stolen device's key stays
        // usable until it is committed).
        let fill = if waiting.urgent {
            1.0
        } else {
            (waiting.bytes as f64 / PACE_FULL_BYTES as f64)
                .max(waiting.txs as f64 / PACE_FULL_TXS as f64)
                .min(1.0)
        };
        let wait = min_interval.mul_f64(1.0 - fill);
        now >= self.latest || (waiting.txs > 0 && now >= self.previous_start + wait)
    }
}

pub struct Driver {
    shared: Arc<Shared>,
    key: SigningKey,
    engine: Engine<BlockValue>,
    safety: SafetyStore,
    timers: BinaryHeap<Reverse<(Instant, Timeout)>>,
    /// Executions of proposals seen at the current height, by block hash,
    /// so a commit does not execute the block twice.
    executions: HashMap<Hash, BlockExecution>,
    /// The transaction ids of blocks at the current height that this node
    /// rebuilt from a compact proposal or checked from sync, by block hash:
    /// validation takes them instead of hashing every transaction again.
    /// Every block the engine sees has the transactions its header's root
    /// commits to (see [`Driver::apply_synced`]), so one hash names one
    /// transaction list. At most [`MAX_KNOWN_TX_IDS`].
    known_tx_ids: HashMap<Hash, Vec<Hash>>,
    pending_start: Option<PendingStart>,
    /// When this node started the current height (`None` until it does:
    /// the first height after start-up or sync is not timed).
    height_started: Option<Instant>,
    min_interval: Duration,
    heartbeat: Duration,
    /// 0: keep every tree version (see `StorageConfig`).
    keep_tree_versions: u64,
    sync_hints: mpsc::Sender<u64>,
    /// The driver's own input queue, for the answers of transaction fetches.
    inputs: mpsc::Sender<DriverInput>,
    /// Proposals (by value hash) whose missing transactions are being
    /// fetched; at most [`MAX_FETCHES`].
    fetching: HashSet<Hash>,
    pruning: Pruning,
}

/// Deletes old tree versions beside the driver, one step at a time
/// ([`Ledger::prune_step`], about 10 000 nodes, under the ledger's read
/// lock for that step only). A hundred heights of full blocks make over a
/// million nodes stale, seconds of deletes: done in one go under the
/// write lock, as before, they held up every reader and the driver itself
/// (docs/benchmarks.md, session 27).
#[derive(Default)]
struct Pruning {
    task: Option<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Pruning {
    /// Starts pruning down to version `oldest`, unless a pruning is still
    /// under way: the next one then deletes what this one would have.
    fn start(&mut self, shared: &Arc<Shared>, oldest: u64) {
        if self.task.as_ref().is_some_and(|task| !task.is_finished()) {
            tracing::debug!(oldest, "pruning still under way; this one skipped");
            return;
        }
        let (shared, stop) = (shared.clone(), self.stop.clone());
        self.task = Some(tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut deleted = 0;
            // Ends: a step that is not done deleted stale-index entries at
            // or below `oldest`, of which there are finitely many, and
            // nothing adds new ones there (new ones are above the head).
            while !stop.load(Ordering::SeqCst) {
                match shared.read_ledger().prune_step(oldest) {
                    Ok(step) => {
                        deleted += step.deleted;
                        shared.metrics.pruned_tree_nodes.inc_by(step.deleted);
                        if step.done {
                            observe_since(&shared.metrics.prune_seconds, started);
                            tracing::debug!(oldest, deleted, "pruned old tree versions");
                            return;
                        }
                    }
                    Err(e) => {
                        // Not fatal: what is left is deleted next time.
                        tracing::error!(oldest, error = %e, "pruning old tree versions failed");
                        return;
                    }
                }
            }
        }));
    }

    /// Stops a pruning under way after its current step and waits for it.
    async fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "pruning task failed");
            }
        }
    }
}

/// Runs the driver's heavy synchronous work (executing a block, the
/// synced writes) on this thread while the runtime moves its other tasks
/// (the network, the API's connections) to another worker: they are not held
/// up for the tens of milliseconds a full block takes. Needs tokio's
/// multi-thread runtime (keyreg-node's, and its tests'): on a current-thread
/// one `block_in_place` panics.
fn block_in_place<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

fn observe_since(histogram: &Histogram, started: Instant) {
    histogram.observe(started.elapsed().as_secs_f64());
}

fn consensus_error(e: impl std::fmt::Display) -> NodeError {
    NodeError::Consensus(e.to_string())
}

impl Driver {
    /// Builds the engine for the first height not in the ledger, restoring
    /// the persisted safety state if there is one.
    pub fn new(
        shared: Arc<Shared>,
        key: SigningKey,
        config: &ConsensusConfig,
        keep_tree_versions: u64,
        sync_hints: mpsc::Sender<u64>,
        inputs: mpsc::Sender<DriverInput>,
    ) -> Result<Self, NodeError> {
        let (engine, safety) = {
            let ledger = shared.read_ledger();
            let height = ledger.height() + 1;
            let set = ledger.validator_set().clone();
            let chain_id = ledger.chain_id();
            let (safety, state) = SafetyStore::load(ledger.store())?;
            let config = engine_config(config);
            let engine = match state {
                Some(state) => {
                    Engine::restore(config, Some(key.clone()), chain_id, height, set, state)
                }
                None => Engine::new(config, Some(key.clone()), chain_id, height, set),
            }
            .map_err(consensus_error)?;
            (engine, safety)
        };
        Ok(Driver {
            shared,
            key,
            engine,
            safety,
            timers: BinaryHeap::new(),
            executions: HashMap::new(),
            known_tx_ids: HashMap::new(),
            pending_start: None,
            height_started: None,
            min_interval: Duration::from_millis(config.min_block_interval_ms),
            heartbeat: Duration::from_millis(config.heartbeat_interval_ms),
            keep_tree_versions,
            sync_hints,
            inputs,
            fetching: HashSet::new(),
            pruning: Pruning::default(),
        })
    }

    /// Runs until shutdown; an error is fatal for the node (it can no longer
    /// vote safely or store what it committed). Returns once a pruning
    /// under way has stopped too, so the store is released with the node.
    pub async fn run(
        mut self,
        inputs: mpsc::Receiver<DriverInput>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), NodeError> {
        let result = self.drive(inputs, shutdown).await;
        self.pruning.stop().await;
        result
    }

    async fn drive(
        &mut self,
        mut inputs: mpsc::Receiver<DriverInput>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), NodeError> {
        let actions = self.engine.start();
        self.execute(actions).await?;
        let mut pacing = tokio::time::interval(PACING_TICK);
        pacing.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_timer = self
                .timers
                .peek()
                .map_or_else(|| Instant::now() + Duration::from_secs(3600), |t| t.0 .0);
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                input = inputs.recv() => match input {
                    // A commit may have left a full block waiting: start it
                    // now rather than at the next pacing tick.
                    Some(input) => {
                        self.on_input(input).await?;
                        self.maybe_start_height().await?;
                    }
                    None => return Ok(()),
                },
                _ = tokio::time::sleep_until(next_timer) => self.fire_timers().await?,
                _ = pacing.tick() => self.maybe_start_height().await?,
            }
        }
    }

    async fn on_input(&mut self, input: DriverInput) -> Result<(), NodeError> {
        match input {
            DriverInput::Consensus(bytes) => {
                match decode_message::<CompactBlock>(&bytes, MAX_GOSSIP_PAYLOAD) {
                    Ok(message) => self.on_message(message, true).await,
                    Err(e) => {
                        tracing::debug!(error = %e, "undecodable consensus message");
                        Ok(())
                    }
                }
            }
            DriverInput::Fetched { proposal, txs } => {
                if let Some(value_hash) = proposal.proposed_hash() {
                    self.fetching.remove(&value_hash);
                }
                self.shared.metrics.fetched_txs.inc_by(txs.len() as u64);
                self.shared
                    .keep_proposal_txs(txs.into_iter().map(|(hash, tx)| (hash, Cow::Owned(tx))));
                self.on_message(*proposal, false).await
            }
            DriverInput::Synced { blocks, done } => {
                let result = self.apply_synced(blocks).await?;
                // The sync task may have stopped; nothing else to tell.
                let _ = done.send(result);
                Ok(())
            }
        }
    }

    /// A gossiped message: a compact proposal is rebuilt into its block
    /// from the transactions this node holds, or, when some are missing and
    /// `may_fetch`, waits for them to be fetched.
    async fn on_message(
        &mut self,
        message: Message<CompactBlock>,
        may_fetch: bool,
    ) -> Result<(), NodeError> {
        // Someone started the next height: join now rather than waiting for
        // our own pacing.
        if self.pending_start.is_some() && message.height() == self.engine.height() + 1 {
            self.start_next_height().await?;
        }
        let Some(message) = self.rebuild(message, may_fetch) else {
            return Ok(());
        };
        let actions = self.engine.handle(Event::Message(message));
        self.execute(actions).await
    }

    /// `message` with a proposal's block rebuilt; `None` when it cannot be
    /// (yet).
    fn rebuild(
        &mut self,
        message: Message<CompactBlock>,
        may_fetch: bool,
    ) -> Option<Message<BlockValue>> {
        let txs = match &message.body {
            MessageBody::Vote(_) => Vec::new(),
            MessageBody::Proposal(proposal) => {
                if let Err(e) = proposal.value.check() {
                    tracing::debug!(error = %e, "malformed compact proposal");
                    return None;
                }
                let found = self.shared.pending_txs(&proposal.value.tx_hashes);
                if found.iter().any(Option::is_none) {
                    let mut missing: Vec<Hash> = proposal
                        .value
                        .tx_hashes
                        .iter()
                        .zip(&found)
                        .filter(|(_, tx)| tx.is_none())
                        .map(|(hash, _)| *hash)
                        .collect();
                    missing.sort_unstable();
                    missing.dedup();
                    if may_fetch {
                        self.fetch(message, missing);
                    } else {
                        tracing::debug!(
                            missing = missing.len(),
                            "no peer had a proposal's transactions"
                        );
                    }
                    return None;
                }
                found.into_iter().flatten().collect()
            }
        };
        let mut tx_ids = None;
        let Ok(message) = message.map_value(|compact| {
            let (block, ids) = compact.into_block_and_ids(txs);
            tx_ids = Some((block.hash(), ids));
            Ok::<_, std::convert::Infallible>(BlockValue(Arc::new(block)))
        });
        if let Some((block_hash, ids)) = tx_ids {
            self.keep_tx_ids(block_hash, ids);
        }
        Some(message)
    }

    /// Keeps the transaction ids of a block at the current height for its
    /// validation (see [`Driver::known_tx_ids`]).
    fn keep_tx_ids(&mut self, block_hash: Hash, tx_ids: Vec<Hash>) {
        if self.known_tx_ids.len() < MAX_KNOWN_TX_IDS {
            self.known_tx_ids.insert(block_hash, tx_ids);
        }
    }

    /// Fetches the transactions `missing` from a compact proposal, asking
    /// its proposer first and then the other validators; the answer comes
    /// back as [`DriverInput::Fetched`]. Only for a correctly signed
    /// proposal of the height being decided (or the next), and at most
    /// [`MAX_FETCHES`] at once.
    fn fetch(&mut self, proposal: Message<CompactBlock>, missing: Vec<Hash>) {
        let Some(value_hash) = proposal.proposed_hash() else {
            return;
        };
        let height = proposal.height();
        if self.fetching.contains(&value_hash)
            || self.fetching.len() >= MAX_FETCHES
            || !(self.engine.height()..=self.engine.height() + 1).contains(&height)
        {
            return;
        }
        let set = self.shared.read_ledger().validator_set().clone();
        if let Err(e) = proposal.verify(&self.shared.chain_id, &set) {
            tracing::debug!(error = %e, "compact proposal not fetched for");
            return;
        }
        let signer = proposal.signer();
        let others = set
            .validators()
            .iter()
            .map(|v| v.key)
            .filter(|key| *key != signer && *key != self.key.public());
        let peers: Vec<_> = std::iter::once(signer)
            .chain(others)
            .filter_map(|key| peer_id_of(&key).ok())
            .collect();
        self.fetching.insert(value_hash);
        let shared = self.shared.clone();
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            // Gossiped copies of the missing transactions may be waiting
            // for admission here, or in its current round: fetched now,
            // they would travel again and be checked twice.
            shared.arrivals.admitted_so_far(ADMISSION_WAIT).await;
            let missing = shared.lacking(missing);
            // Nothing left to fetch: answers at once, asking no peer.
            let txs = sync::fetch_transactions(&shared.network, &peers, missing).await;
            // Fails only when the driver has stopped.
            let proposal = Box::new(proposal);
            let _ = inputs.send(DriverInput::Fetched { proposal, txs }).await;
        });
    }

    /// Feeds synced blocks to the engine in order; each commit goes through
    /// the same path as a consensus commit (certificate verified against the
    /// current set, block re-executed, stored atomically).
    async fn apply_synced(
        &mut self,
        blocks: Vec<CommittedBlock>,
    ) -> Result<Result<u64, String>, NodeError> {
        for committed in blocks {
            let height = committed.block.header.height;
            if height <= self.shared.height() {
                continue;
            }
            if self.pending_start.is_some() {
                self.start_next_height().await?;
            }
            if height != self.engine.height() {
                return Ok(Err(format!(
                    "block {height} does not follow height {}",
                    self.shared.height()
                )));
            }
            // The certificate covers the header only: a peer could serve a
            // certified header with other transactions, and the engine
            // decides on the header's hash alone. Refuse them here, before
            // any cached execution of the real block could be paired with
            // them.
            let tx_ids = committed.block.tx_hashes();
            if tx_root(&tx_ids) != committed.block.header.tx_root {
                return Ok(Err(format!(
                    "block {height}: its transactions are not the ones its header commits to"
                )));
            }
            self.keep_tx_ids(committed.block.hash(), tx_ids);
            let actions = self.engine.handle(Event::CommittedBlock {
                height,
                value: BlockValue(Arc::new(committed.block)),
                certificate: committed.certificate,
            });
            self.execute(actions).await?;
            if self.shared.height() < height {
                return Ok(Err(format!("block {height}: certificate does not verify")));
            }
        }
        Ok(Ok(self.shared.height()))
    }

    async fn fire_timers(&mut self) -> Result<(), NodeError> {
        let now = Instant::now();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, timeout))) = self.timers.pop() else {
                break;
            };
            let before = self.engine_position();
            let actions = self.engine.handle(Event::Timeout(timeout));
            // Only a timeout that moved the engine on counts: one that fires
            // after its step was left is stale.
            let step = match timeout.kind {
                TimeoutKind::Propose => Some("propose"),
                TimeoutKind::Prevote => Some("prevote"),
                TimeoutKind::Precommit => Some("precommit"),
                TimeoutKind::Rebroadcast => None,
            };
            if let Some(step) = step.filter(|_| before != self.engine_position()) {
                self.shared.metrics.count_round_timeout(step);
            }
            self.execute(actions).await?;
        }
        Ok(())
    }

    async fn maybe_start_height(&mut self) -> Result<(), NodeError> {
        let Some(pending) = &self.pending_start else {
            return Ok(());
        };
        let waiting = {
            let mempool = self.shared.mempool();
            Waiting {
                txs: mempool.len(),
                bytes: mempool.bytes(),
                urgent: mempool.has_urgent(),
            }
        };
        if pending.is_due(Instant::now(), self.min_interval, waiting) {
            self.start_next_height().await?;
        }
        Ok(())
    }

    /// Where the engine stands: height, round and step.
    fn engine_position(&self) -> (u64, u32, keyreg_consensus::Step) {
        (
            self.engine.height(),
            self.engine.round(),
            self.engine.step(),
        )
    }

    async fn start_next_height(&mut self) -> Result<(), NodeError> {
        self.pending_start = None;
        self.height_started = Some(Instant::now());
        let set = self.shared.read_ledger().validator_set().clone();
        let actions = self.engine.start_height(set).map_err(consensus_error)?;
        self.execute(actions).await
    }

    /// Runs `actions` in order, and the actions their answers produce after
    /// them (the engine's ordering contract holds per list).
    async fn execute(&mut self, actions: Vec<Action<BlockValue>>) -> Result<(), NodeError> {
        let mut queue: VecDeque<Action<BlockValue>> = actions.into();
        let mut steps = 0usize;
        while let Some(action) = queue.pop_front() {
            steps += 1;
            assert!(
                steps <= MAX_ACTIONS_PER_INPUT,
                "consensus produced more than {MAX_ACTIONS_PER_INPUT} actions for one input"
            );
            match action {
                Action::Persist(state) => {
                    let started = Instant::now();
                    // Shared access: look-ups and admission go on reading
                    // while the synced write lasts.
                    block_in_place(|| {
                        self.safety
                            .persist(self.shared.read_ledger().store(), state)
                    })?;
                    observe_since(&self.shared.metrics.safety_persist_seconds, started);
                }
                Action::Broadcast(message) => {
                    let message = self.compact(message);
                    if let Err(e) = self
                        .shared
                        .network
                        .publish(Topic::Consensus, message.to_bytes())
                        .await
                    {
                        tracing::debug!(error = %e, "consensus message not gossiped");
                    }
                }
                Action::ScheduleTimeout { timeout, after_ms } => {
                    if self.timers.len() >= MAX_TIMERS {
                        tracing::error!(?timeout, "too many pending timers; timeout dropped");
                    } else {
                        let at = Instant::now() + Duration::from_millis(after_ms);
                        self.timers.push(Reverse((at, timeout)));
                    }
                }
                Action::RequestProposal { height, round } => {
                    if let Some(value) = self.propose(height) {
                        queue.extend(self.engine.handle(Event::ProposalValue {
                            height,
                            round,
                            value,
                        }));
                    }
                }
                Action::ValidateProposal { height, value, .. } => {
                    let valid = self.validate(height, &value.0);
                    queue.extend(self.engine.handle(Event::ValidationResult {
                        height,
                        value_hash: value.hash(),
                        valid,
                    }));
                }
                Action::Commit {
                    height,
                    value,
                    certificate,
                } => {
                    // The engine may still share the value: copy it then.
                    let block = Arc::unwrap_or_clone(value.0);
                    self.commit(height, block, certificate).await?
                }
                Action::Evidence(evidence) => self.record_evidence(&evidence)?,
                Action::NeedSync { height } => {
                    // A full queue already has a sync round coming.
                    let _ = self.sync_hints.try_send(height);
                }
            }
        }
        Ok(())
    }

    /// The wire form of an outgoing message: a proposal carries its block's
    /// transaction hashes, and this node keeps any of its transactions that
    /// are not in its mempool so that peers can fetch them here.
    fn compact(&self, message: Message<BlockValue>) -> Message<CompactBlock> {
        let Ok(message) = message.map_value(|BlockValue(block)| {
            // The execution of a block this node proposed or validated
            // already hashed its transactions.
            let tx_hashes = match self.executions.get(&block.hash()) {
                Some(execution) => execution.tx_hashes.clone(),
                None => block.tx_hashes(),
            };
            self.shared.keep_proposal_txs(
                tx_hashes
                    .iter()
                    .copied()
                    .zip(block.transactions.iter().map(Cow::Borrowed)),
            );
            Ok::<_, std::convert::Infallible>(CompactBlock {
                header: block.header.clone(),
                tx_hashes,
            })
        });
        message
    }

    /// Builds the next block from the mempool: its urgent transactions,
    /// then the oldest others; kept within [`URGENT_PROPOSAL_BYTES`] while
    /// urgent ones wait.
    fn propose(&mut self, height: u64) -> Option<BlockValue> {
        let txs = {
            let mempool = self.shared.mempool();
            let max_bytes = if mempool.has_urgent() {
                URGENT_PROPOSAL_BYTES
            } else {
                MAX_BLOCK_BYTES
            };
            mempool.reap(max_bytes, MAX_TXS_PER_PROPOSAL)
        };
        let ledger = self.shared.read_ledger();
        if ledger.height() + 1 != height {
            return None;
        }
        let timestamp_ms = now_ms().max(ledger.head().timestamp_ms + 1);
        // Every transaction comes from the mempool, which admits only those
        // that passed the stateless checks: their signatures are not
        // verified again, nor are they hashed again.
        let started = Instant::now();
        let proposal = block_in_place(|| {
            ledger.propose_hashed(txs, timestamp_ms, self.key.public(), |_| true)
        });
        observe_since(&self.shared.metrics.block_execute_seconds, started);
        match proposal {
            Ok((block, execution)) => {
                self.executions.insert(block.hash(), execution);
                Some(BlockValue(Arc::new(block)))
            }
            Err(e) => {
                tracing::error!(height, error = %e, "cannot build a proposal");
                None
            }
        }
    }

    /// Executes a proposed block against its parent state.
    fn validate(&mut self, height: u64, block: &Block) -> bool {
        if block.header.timestamp_ms > now_ms() + MAX_FUTURE_DRIFT_MS {
            tracing::warn!(height, "proposal timestamp is too far in the future");
            return false;
        }
        match self.validate_known(block) {
            Ok(execution) => {
                self.executions.insert(block.hash(), execution);
                true
            }
            Err(e) => {
                tracing::warn!(height, error = %e, "invalid proposal");
                false
            }
        }
    }

    /// Executes `block` against the head; its transactions already in the
    /// mempool passed the stateless checks on entry, so only the others'
    /// signatures are verified.
    fn validate_known(&mut self, block: &Block) -> Result<BlockExecution, LedgerError> {
        let started = Instant::now();
        let tx_ids = self
            .known_tx_ids
            .remove(&block.hash())
            .unwrap_or_else(|| block.tx_hashes());
        let checked = std::cell::Cell::new(0u64);
        let execution = block_in_place(|| {
            self.shared
                .read_ledger()
                .validate_hashed(block, tx_ids, |hash| {
                    let known = self.shared.mempool().contains(hash);
                    checked.set(checked.get() + u64::from(!known));
                    known
                })
        });
        observe_since(&self.shared.metrics.block_execute_seconds, started);
        self.shared.metrics.checked_txs.inc_by(checked.get());
        execution
    }

    async fn commit(
        &mut self,
        height: u64,
        block: Block,
        certificate: CommitCertificate,
    ) -> Result<(), NodeError> {
        let block_hash = block.hash();
        let execution = match self.executions.remove(&block_hash) {
            Some(execution) => execution,
            None => self.validate_known(&block)?,
        };
        let tx_hashes = execution.tx_hashes.clone();
        let committed = CommittedBlock {
            version: CommittedBlock::VERSION,
            block,
            certificate,
        };
        let started = Instant::now();
        // The block goes to disk under shared access, so look-ups and
        // admission are not held up by the synced write; only moving the
        // head takes the ledger exclusively. The driver is the only writer
        // of blocks, so no other block is written between the two steps
        // (a pruning step may be: it touches only versions older than the
        // kept ones).
        let durable = block_in_place(|| {
            self.shared
                .read_ledger()
                .write_commit(&committed, execution)
        })?;
        let (old_epoch, next_set) = {
            let mut ledger = self.shared.write_ledger();
            let old_epoch = ledger.validator_set().epoch;
            ledger.advance(&committed, durable)?;
            (old_epoch, ledger.validator_set().clone())
        };
        observe_since(&self.shared.metrics.block_commit_seconds, started);
        let height_started = self.height_started.take();
        if let Some(height_started) = height_started {
            observe_since(&self.shared.metrics.height_seconds, height_started);
        }
        self.executions.clear();
        self.known_tx_ids.clear();
        self.shared.clear_proposal_txs();
        self.shared.set_height(height);
        {
            let mut mempool = self.shared.mempool();
            mempool.remove(&tx_hashes);
            self.shared.metrics.mempool_size.set(mempool.len() as i64);
        }
        if self.keep_tree_versions > 0 && height.is_multiple_of(PRUNE_INTERVAL) {
            let oldest = self
                .shared
                .read_ledger()
                .oldest_to_keep(self.keep_tree_versions);
            self.pruning.start(&self.shared, oldest);
        }
        self.shared.metrics.commits.inc();
        self.shared
            .metrics
            .transactions
            .inc_by(tx_hashes.len() as u64);
        tracing::info!(height, txs = tx_hashes.len(), hash = %block_hash, "committed");

        if next_set.epoch != old_epoch {
            epochs::record(
                &self.shared.read_ledger(),
                next_set.epoch,
                height,
                &next_set,
            )?;
            self.shared
                .network
                .set_allowed(self.shared.allowed_keys(&next_set))
                .await?;
            self.dial_validators().await;
            tracing::info!(
                epoch = next_set.epoch,
                validators = next_set.len(),
                "epoch change"
            );
        }

        let now = Instant::now();
        let follower = next_set.index_of(&self.key.public()).is_none();
        self.pending_start = Some(PendingStart {
            previous_start: height_started.unwrap_or(now),
            // A follower (observer) never proposes: no reason to wait.
            latest: if follower { now } else { now + self.heartbeat },
        });
        Ok(())
    }

    /// Dials the validators of a new set at their registered addresses (the
    /// ones configured as persistent peers are redialed anyway).
    async fn dial_validators(&self) {
        let validators = match self.shared.read_ledger().validators() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the validator addresses");
                return;
            }
        };
        for v in validators {
            if v.key == self.key.public() {
                continue;
            }
            let (Ok(peer), Ok(addr)) = (peer_id_of(&v.key), v.address.parse::<libp2p::Multiaddr>())
            else {
                continue;
            };
            let addr = addr.with(libp2p::multiaddr::Protocol::P2p(peer));
            if let Err(e) = self.shared.network.dial(addr).await {
                tracing::debug!(error = %e, "dialing a validator failed");
            }
        }
    }

    fn record_evidence(&self, evidence: &Evidence) -> Result<(), NodeError> {
        let bytes = evidence.to_bytes();
        let id = hash(Domain::Payload, &bytes);
        let mut key = b"evidence/".to_vec();
        key.extend_from_slice(&evidence.height().to_be_bytes());
        key.extend_from_slice(&id.0);
        self.shared.read_ledger().store().put_meta(&key, &bytes)?;
        tracing::warn!(
            offender = %evidence.offender(),
            height = evidence.height(),
            "equivocation evidence recorded"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(200);
    const HEARTBEAT: Duration = Duration::from_secs(3);

    /// A height that started at `t0` and committed `took` later.
    fn committed_after(t0: Instant, took: Duration) -> PendingStart {
        PendingStart {
            previous_start: t0,
            latest: t0 + took + HEARTBEAT,
        }
    }

    fn waiting(txs: usize, bytes: usize) -> Waiting {
        Waiting {
            txs,
            bytes,
            urgent: false,
        }
    }

    #[test]
    fn a_waiting_revocation_starts_the_next_height_at_once() {
        let t0 = Instant::now();
        let took = Duration::from_millis(50);
        let pending = committed_after(t0, took);
        let revocation = Waiting {
            urgent: true,
            ..waiting(1, 300)
        };
        assert!(!pending.is_due(t0 + took, INTERVAL, waiting(1, 300)));
        assert!(pending.is_due(t0 + took, INTERVAL, revocation));
    }

    #[test]
    fn a_height_slower_than_the_interval_is_followed_at_once() {
        let t0 = Instant::now();
        let took = Duration::from_millis(450);
        let pending = committed_after(t0, took);
        // One small transaction waiting, right at the commit.
        assert!(pending.is_due(t0 + took, INTERVAL, waiting(1, 300)));
    }

    #[test]
    fn a_quick_height_waits_out_the_rest_of_the_interval() {
        let t0 = Instant::now();
        let took = Duration::from_millis(50);
        let pending = committed_after(t0, took);
        assert!(!pending.is_due(t0 + took, INTERVAL, waiting(1, 300)));
        assert!(!pending.is_due(t0 + Duration::from_millis(190), INTERVAL, waiting(1, 300)));
        assert!(pending.is_due(t0 + INTERVAL, INTERVAL, waiting(1, 300)));
    }

    #[test]
    fn the_interval_shrinks_as_half_a_block_fills() {
        let t0 = Instant::now();
        let took = Duration::from_millis(20);
        let pending = committed_after(t0, took);
        assert!(pending.is_due(t0 + took, INTERVAL, waiting(1, PACE_FULL_BYTES)));
        assert!(pending.is_due(t0 + took, INTERVAL, waiting(PACE_FULL_TXS, 0)));
        // A quarter of half a block waits 150 ms, not 200, from the start.
        let quarter = PACE_FULL_BYTES / 4;
        assert!(!pending.is_due(
            t0 + Duration::from_millis(140),
            INTERVAL,
            waiting(1, quarter)
        ));
        assert!(pending.is_due(
            t0 + Duration::from_millis(151),
            INTERVAL,
            waiting(1, quarter)
        ));
    }

    #[test]
    fn an_empty_mempool_waits_for_the_heartbeat() {
        let t0 = Instant::now();
        let took = Duration::from_millis(450);
        let pending = committed_after(t0, took);
        assert!(!pending.is_due(t0 + took + HEARTBEAT / 2, INTERVAL, waiting(0, 0)));
        assert!(pending.is_due(pending.latest, INTERVAL, waiting(0, 0)));
    }
}
