//! The node: ledger, mempool, network, consensus driver, block sync and
//! HTTP API wired together, and their orderly start and stop.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use keyreg_consensus::codec::Canonical;
use keyreg_consensus::{Hash, Message, PublicKey, SigningKey, ValidatorSet};
use keyreg_registry::block::MAX_BLOCK_TXS;
use keyreg_registry::tx::MAX_TX_BYTES;
use keyreg_registry::wire::CompactBlock;
use keyreg_registry::{
    check_stateless_all, CommittedBlock, Genesis, HashedTx, Ledger, LedgerError, RocksLedgerStore,
    StoreError, Transaction, TxBody, TxError,
};
use libp2p::Multiaddr;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::admission::{self, Arrival, Arrivals};
use crate::config::{Config, DATA_DIR, GENESIS_FILE, KEY_FILE};
use crate::driver::{self, Driver};
use crate::epochs;
use crate::keys::{read_key_file, KeyFileError};
use crate::mempool::{Lane, Mempool, MempoolError, MempoolLimits, Origin, PoolTx};
use crate::metrics::Metrics;
use crate::network::{self, NetworkConfig, NetworkEvent, NetworkHandle, RelayVerdict};
use crate::{api, sync};

pub type Store = RocksLedgerStore;

const DRIVER_QUEUE: usize = 256;
const SYNC_HINT_QUEUE: usize = 16;

#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error("{path}: {reason}")]
    Genesis { path: PathBuf, reason: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    #[error("consensus: {0}")]
    Consensus(String),
    #[error("cannot bind the API on {addr}: {source}")]
    ApiBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The mempool holds transactions with their ids and sizes computed once.
impl PoolTx for HashedTx {
    fn tx_hash(&self) -> Hash {
        self.hash
    }
    fn encoded_len(&self) -> usize {
        self.size
    }
    fn urgent_key(&self) -> Option<Hash> {
        urgent_key(&self.tx)
    }
}

/// Revocations dry-run in one admission round, at most, to find the urgent
/// ones (about 100 µs each).
const MAX_DRY_RUNS_PER_ROUND: usize = 64;

/// A revocation may wait in the mempool's urgent lane, one per device.
fn urgent_key(tx: &Transaction) -> Option<Hash> {
    match &tx.body {
        TxBody::RevokeDevice(revocation) => Some(revocation.name.state_key()),
        _ => None,
    }
}

/// Why a submitted transaction was not accepted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SubmitError {
    #[error("transaction of {0} bytes exceeds the {MAX_TX_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("undecodable transaction: {0}")]
    Malformed(String),
    #[error("{0}")]
    Invalid(TxError),
    #[error("transaction is already known")]
    AlreadyKnown,
    #[error("mempool is full")]
    Busy,
    #[error("ledger: {0}")]
    Internal(String),
}

impl From<MempoolError> for SubmitError {
    fn from(e: MempoolError) -> Self {
        match e {
            MempoolError::AlreadyKnown => SubmitError::AlreadyKnown,
            MempoolError::Busy => SubmitError::Busy,
            MempoolError::TooLarge { size, .. } => SubmitError::TooLarge(size),
        }
    }
}

/// State shared by the driver, the sync tasks and the API.
pub struct Shared {
    pub chain_id: String,
    pub genesis_hash: Hash,
    pub public_key: PublicKey,
    pub observer_keys: Vec<PublicKey>,
    pub metrics: Metrics,
    pub network: NetworkHandle,
    ledger: RwLock<Ledger<Store>>,
    mempool: Mutex<Mempool<HashedTx>>,
    sync_lag: AtomicU64,
    height: AtomicU64,
    /// Transactions waiting for admission ([`admission`]).
    pub(crate) arrivals: Arrivals,
    /// Admitted transactions waiting to be gossiped ([`admission`]).
    tx_outbox: mpsc::Sender<(Vec<u8>, Lane)>,
    /// Transactions of this height's proposals that are not in the mempool
    /// (fetched for a compact proposal, or in a block restored from the
    /// safety state), kept so this node can serve them to peers that lack
    /// them too. Unverified; cleared at every commit.
    proposal_txs: Mutex<HashMap<Hash, Transaction>>,
}

/// Most transactions [`Shared::keep_proposal_txs`] holds: a few rounds'
/// worth of blocks whose transactions nobody gossiped.
const MAX_PROPOSAL_TXS: usize = 4 * MAX_BLOCK_TXS;

impl Shared {
    /// Read access to the ledger. A poisoned lock means a writer panicked
    /// mid-update of in-memory state; the store itself is atomic, so the
    /// data read stays consistent and serving it is safe.
    pub fn read_ledger(&self) -> RwLockReadGuard<'_, Ledger<Store>> {
        self.ledger.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write_ledger(&self) -> RwLockWriteGuard<'_, Ledger<Store>> {
        self.ledger.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn mempool(&self) -> MutexGuard<'_, Mempool<HashedTx>> {
        self.mempool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transactions named by `hashes`, in order, from the mempool and
    /// this height's proposals; `None` where this node has none.
    pub(crate) fn pending_txs(&self, hashes: &[Hash]) -> Vec<Option<Transaction>> {
        let mempool = self.mempool();
        let kept = self.proposal_txs();
        hashes
            .iter()
            .map(|hash| {
                mempool
                    .get(hash)
                    .map(|p| &p.tx)
                    .or_else(|| kept.get(hash))
                    .cloned()
            })
            .collect()
    }

    /// Those of `hashes` that neither the mempool nor this height's
    /// proposals hold.
    pub(crate) fn lacking(&self, hashes: Vec<Hash>) -> Vec<Hash> {
        let mempool = self.mempool();
        let kept = self.proposal_txs();
        hashes
            .into_iter()
            .filter(|hash| !mempool.contains(hash) && !kept.contains_key(hash))
            .collect()
    }

    /// Keeps proposal transactions the mempool lacks (bounded: beyond
    /// [`MAX_PROPOSAL_TXS`] they are not kept, and peers fetch them
    /// elsewhere).
    pub(crate) fn keep_proposal_txs<'a>(
        &self,
        txs: impl IntoIterator<Item = (Hash, Cow<'a, Transaction>)>,
    ) {
        let mempool = self.mempool();
        let mut kept = self.proposal_txs();
        for (hash, tx) in txs {
            if mempool.contains(&hash) || kept.contains_key(&hash) {
                continue;
            }
            if kept.len() >= MAX_PROPOSAL_TXS {
                tracing::debug!("proposal transaction cache full");
                break;
            }
            kept.insert(hash, tx.into_owned());
        }
    }

    pub(crate) fn clear_proposal_txs(&self) {
        self.proposal_txs().clear();
    }

    fn proposal_txs(&self) -> MutexGuard<'_, HashMap<Hash, Transaction>> {
        self.proposal_txs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn mempool_len(&self) -> usize {
        self.mempool().len()
    }

    /// Height of the latest committed block (no lock).
    pub fn height(&self) -> u64 {
        self.height.load(Ordering::Relaxed)
    }

    pub(crate) fn set_height(&self, height: u64) {
        self.height.store(height, Ordering::Relaxed);
        self.metrics.height.set(height as i64);
    }

    pub fn sync_lag(&self) -> u64 {
        self.sync_lag.load(Ordering::Relaxed)
    }

    pub(crate) fn set_sync_lag(&self, lag: u64) {
        self.sync_lag.store(lag, Ordering::Relaxed);
        self.metrics.sync_lag.set(lag as i64);
    }

    /// Behind the best known peer by more than the block in flight.
    pub fn is_syncing(&self) -> bool {
        self.sync_lag() > 1
    }

    /// Keys allowed on the network under `set`: its validators and the
    /// configured observers.
    pub fn allowed_keys(&self, set: &ValidatorSet) -> Vec<PublicKey> {
        let mut keys: BTreeSet<PublicKey> = set.validators().iter().map(|v| v.key).collect();
        keys.extend(self.observer_keys.iter().copied());
        keys.into_iter().collect()
    }

    /// Decodes and statelessly checks a batch of transactions (signatures
    /// batch-verified together), then admits the valid ones to the mempool,
    /// each within its origin's share of the limits. One verdict per input,
    /// in order, and the mempool lane of each (normal unless admitted
    /// urgent).
    pub fn submit_batch(
        &self,
        raw: &[(&[u8], Origin)],
    ) -> (Vec<Result<Hash, SubmitError>>, Vec<Lane>) {
        let mut verdicts: Vec<Result<Hash, SubmitError>> = Vec::with_capacity(raw.len());
        let mut admitted_lanes = vec![Lane::Normal; raw.len()];
        let mut decoded = Vec::new();
        for &(bytes, origin) in raw {
            match self.decode_and_precheck(bytes, origin) {
                Ok(tx) => {
                    verdicts.push(Ok(tx.hash));
                    decoded.push((verdicts.len() - 1, origin, tx));
                }
                Err(e) => verdicts.push(Err(e)),
            }
        }
        // Already committed ones are refused, all looked up in one read.
        let hashes: Vec<&Hash> = decoded.iter().map(|(_, _, tx)| &tx.hash).collect();
        let refusals: Vec<Option<SubmitError>> = match self.read_ledger().are_committed(&hashes) {
            Ok(committed) if committed.len() == hashes.len() => committed
                .into_iter()
                .map(|known| known.then_some(SubmitError::AlreadyKnown))
                .collect(),
            Ok(committed) => {
                let e = format!(
                    "transaction index answered {} of {} look-ups",
                    committed.len(),
                    hashes.len()
                );
                vec![Some(SubmitError::Internal(e)); hashes.len()]
            }
            Err(e) => vec![Some(SubmitError::Internal(e.to_string())); hashes.len()],
        };
        let mut refusals = refusals.into_iter();
        decoded.retain(|(slot, _, _)| match refusals.next().flatten() {
            None => true,
            Some(refusal) => {
                if let Some(verdict) = verdicts.get_mut(*slot) {
                    *verdict = Err(refusal);
                }
                false
            }
        });
        // The transactions move into one slice for the batch check and back
        // into their pool entries after it (no copies).
        let (entries, txs): (Vec<_>, Vec<Transaction>) = decoded
            .into_iter()
            .map(|(slot, origin, HashedTx { tx, hash, size })| ((slot, origin, hash, size), tx))
            .unzip();
        let checks = check_stateless_all(&self.chain_id, &txs);
        self.metrics.checked_txs.inc_by(txs.len() as u64);
        let lanes = self.lanes(&txs, &checks);
        let mut mempool = self.mempool();
        for ((((slot, origin, hash, size), tx), check), lane) in
            entries.into_iter().zip(txs).zip(checks).zip(lanes)
        {
            let verdict = match check {
                Err(e) => Err(SubmitError::Invalid(e)),
                Ok(()) => mempool
                    .insert(HashedTx { tx, hash, size }, origin, lane)
                    .map(|(hash, lane)| {
                        if let Some(admitted) = admitted_lanes.get_mut(slot) {
                            *admitted = lane;
                        }
                        hash
                    })
                    .map_err(SubmitError::from),
            };
            // `slot` indexes the verdict pushed for this input above.
            if let Some(slot) = verdicts.get_mut(slot) {
                *slot = verdict;
            }
        }
        self.metrics.mempool_size.set(mempool.len() as i64);
        (verdicts, admitted_lanes)
    }

    /// The mempool lane of each of `txs` (`checks`: their stateless
    /// verdicts): urgent for a revocation of a device with no urgent one
    /// waiting yet, if it would succeed at the head, which a dry run there
    /// tells (module docs of [`crate::mempool`]). At most
    /// [`MAX_DRY_RUNS_PER_ROUND`] dry runs, so revocations that would fail
    /// cannot make admission expensive, and a bulk of them (a fleet
    /// decommissioned) is urgent only in part. The ledger is read with the
    /// mempool unlocked: the driver holds the ledger while it takes the
    /// mempool, never the other way round.
    fn lanes(&self, txs: &[Transaction], checks: &[Result<(), TxError>]) -> Vec<Lane> {
        let mut lanes = vec![Lane::Normal; txs.len()];
        let candidates: Vec<(usize, Hash)> = {
            let mempool = self.mempool();
            txs.iter()
                .zip(checks)
                .enumerate()
                .filter_map(|(i, (tx, check))| {
                    let key = urgent_key(tx).filter(|_| check.is_ok())?;
                    (!mempool.urgent_key_taken(&key)).then_some((i, key))
                })
                .take(MAX_DRY_RUNS_PER_ROUND)
                .collect()
        };
        if candidates.is_empty() {
            return lanes;
        }
        let mut found = HashSet::new();
        let ledger = self.read_ledger();
        for (i, key) in candidates {
            if found.contains(&key) {
                continue;
            }
            if let (Some(tx), Some(lane)) = (txs.get(i), lanes.get_mut(i)) {
                if matches!(ledger.check_tx(tx), Ok(Ok(()))) {
                    *lane = Lane::Urgent;
                    found.insert(key);
                }
            }
        }
        lanes
    }

    fn decode_and_precheck(&self, bytes: &[u8], origin: Origin) -> Result<HashedTx, SubmitError> {
        if bytes.len() > MAX_TX_BYTES {
            return Err(SubmitError::TooLarge(bytes.len()));
        }
        let tx =
            Transaction::from_bytes(bytes).map_err(|e| SubmitError::Malformed(e.to_string()))?;
        // `from_bytes` accepted `bytes`, so they are the canonical encoding.
        let pooled = HashedTx::from_canonical(tx, bytes);
        self.mempool().precheck(&pooled, origin)?;
        Ok(pooled)
    }

    /// Submits a transaction's canonical bytes for admission to the mempool
    /// (checked in a batch with whatever else arrived meanwhile) and, once
    /// admitted, for gossip.
    pub async fn submit(&self, bytes: Vec<u8>) -> Result<Hash, SubmitError> {
        self.submit_many(vec![bytes])
            .await?
            .pop()
            .unwrap_or_else(|| Err(SubmitError::Internal("no verdict".into())))
    }

    /// [`Shared::submit`] for several transactions at once: one verdict per
    /// transaction, in order. `Err` when the admission queue is full (none
    /// of them was looked at) or the node is stopping.
    pub async fn submit_many(
        &self,
        txs: Vec<Vec<u8>>,
    ) -> Result<Vec<Result<Hash, SubmitError>>, SubmitError> {
        let (reply, verdicts) = oneshot::channel();
        self.arrivals
            .try_queue(Arrival::Submitted { txs, reply })
            .map_err(|_| SubmitError::Busy)?;
        verdicts
            .await
            .map_err(|_| SubmitError::Internal("the node is stopping".into()))
    }

    /// Queues an admitted transaction's bytes for gossip. A full queue
    /// skips the gossip: the transaction waits in this node's mempool and
    /// goes into its own next proposal.
    /// Queues an admitted submission for gossip; an urgent one goes out
    /// alone and at once (see [`admission::publish_batches`]).
    pub(crate) fn gossip_transaction(&self, bytes: Vec<u8>, lane: Lane) {
        if self.tx_outbox.try_send((bytes, lane)).is_err() {
            tracing::debug!("gossip queue full: transaction kept for this node's proposal");
        }
    }

    pub fn is_pending(&self, hash: &Hash) -> bool {
        self.mempool().contains(hash)
    }
}

/// What the driver is told by the other tasks.
pub enum DriverInput {
    /// A gossiped consensus message (undecoded, size-checked).
    Consensus(Vec<u8>),
    /// The transactions fetched for a compact proposal that named some this
    /// node lacked (possibly not all of them, or none), each with its hash.
    Fetched {
        proposal: Box<Message<CompactBlock>>,
        txs: Vec<(Hash, Transaction)>,
    },
    /// Committed blocks fetched by sync, in height order. `done` receives
    /// the ledger height after applying them, or why one was rejected.
    Synced {
        blocks: Vec<CommittedBlock>,
        done: oneshot::Sender<Result<u64, String>>,
    },
}

/// A started node. Dropping it leaves its tasks running until the runtime
/// ends; [`RunningNode::stop`] shuts it down in order.
pub struct RunningNode {
    pub shared: Arc<Shared>,
    pub api_addr: SocketAddr,
    pub p2p_addrs: Vec<Multiaddr>,
    shutdown: watch::Sender<bool>,
    driver: JoinHandle<Result<(), NodeError>>,
    tasks: Vec<JoinHandle<()>>,
    network_task: JoinHandle<()>,
}

impl RunningNode {
    /// This node's dialable address (first listen address plus `/p2p/<id>`).
    pub fn p2p_dial_addr(&self) -> Option<Multiaddr> {
        self.p2p_addrs.first().map(|a| {
            a.clone().with(libp2p::multiaddr::Protocol::P2p(
                self.shared.network.local_peer_id(),
            ))
        })
    }

    /// Resolves when the driver stops on its own (a fatal error).
    pub async fn wait_driver(&mut self) -> Result<(), NodeError> {
        match (&mut self.driver).await {
            Ok(result) => result,
            Err(e) => Err(NodeError::Consensus(format!("driver task failed: {e}"))),
        }
    }

    /// Stops every task, the network last, and waits for them, so the
    /// RocksDB handle is released when this returns.
    pub async fn stop(self) -> Result<(), NodeError> {
        let _ = self.shutdown.send(true);
        let driver_result = match self.driver.await {
            Ok(r) => r,
            Err(e) => Err(NodeError::Consensus(format!("driver task failed: {e}"))),
        };
        for task in self.tasks {
            let _ = task.await;
        }
        self.shared.network.shutdown().await;
        let _ = self.network_task.await;
        driver_result
    }
}

fn load_genesis(home: &Path) -> Result<Genesis, NodeError> {
    let path = home.join(GENESIS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| NodeError::Genesis {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Genesis::from_json(&text).map_err(|e| NodeError::Genesis {
        path,
        reason: e.to_string(),
    })
}

/// Opens the ledger under `<home>/data` and starts every task.
pub async fn start(home: &Path, config: Config) -> Result<RunningNode, NodeError> {
    let key = read_key_file(&home.join(KEY_FILE), config.keys.passphrase_file.as_deref())?;
    let genesis = load_genesis(home)?;
    let store = Store::open(&home.join(DATA_DIR))?;
    let ledger = Ledger::open(store, &genesis)?;
    if ledger.replayed_at_open() > 0 {
        tracing::info!(
            blocks = ledger.replayed_at_open(),
            height = ledger.height(),
            "executed again the stored blocks whose tree a crash lost"
        );
    }
    start_with(key, ledger, &genesis, config).await
}

async fn start_with(
    key: SigningKey,
    ledger: Ledger<Store>,
    genesis: &Genesis,
    config: Config,
) -> Result<RunningNode, NodeError> {
    let metrics = Metrics::new();
    epochs::repair(&ledger, genesis)?;
    let chain_id = ledger.chain_id().to_string();
    let set = ledger.validator_set().clone();
    let mut allowed: BTreeSet<PublicKey> = set.validators().iter().map(|v| v.key).collect();
    allowed.extend(config.p2p.observer_keys.iter().copied());
    let listen: Multiaddr =
        config
            .p2p
            .listen
            .parse()
            .map_err(|e| crate::config::ConfigError::Invalid {
                key: "p2p.listen",
                reason: format!("{e}"),
            })?;
    let persistent_peers = config
        .p2p
        .persistent_peers
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    let net = network::start(
        &key,
        NetworkConfig {
            chain_id: chain_id.clone(),
            listen: vec![listen],
            persistent_peers,
            allowed_keys: allowed.into_iter().collect(),
            duplicate_window: driver::DUPLICATE_WINDOW,
        },
    )
    .await?;
    let height = ledger.height();
    let (tx_outbox, tx_outbox_rx) = mpsc::channel(admission::QUEUE);
    let (arrivals, arrivals_rx) = Arrivals::new();
    let shared = Arc::new(Shared {
        chain_id,
        genesis_hash: ledger.genesis_hash(),
        public_key: key.public(),
        observer_keys: config.p2p.observer_keys.clone(),
        metrics,
        network: net.handle.clone(),
        ledger: RwLock::new(ledger),
        mempool: Mutex::new(Mempool::new(MempoolLimits {
            max_txs: config.mempool.max_txs,
            max_bytes: config.mempool.max_bytes,
            max_tx_bytes: MAX_TX_BYTES,
        })),
        sync_lag: AtomicU64::new(0),
        height: AtomicU64::new(0),
        arrivals,
        tx_outbox,
        proposal_txs: Mutex::new(HashMap::new()),
    });
    shared.set_height(height);

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (driver_tx, driver_rx) = mpsc::channel(DRIVER_QUEUE);
    let (hints_tx, hints_rx) = mpsc::channel(SYNC_HINT_QUEUE);

    let driver = Driver::new(
        shared.clone(),
        key,
        &config.consensus,
        config.storage.keep_tree_versions,
        hints_tx,
        driver_tx.clone(),
    )?;
    let driver = tokio::spawn(driver.run(driver_rx, shutdown_rx.clone()));

    let listener = TcpListener::bind(config.api.listen)
        .await
        .map_err(|source| NodeError::ApiBind {
            addr: config.api.listen,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| NodeError::ApiBind {
        addr: config.api.listen,
        source,
    })?;
    let router = api::router(shared.clone(), &config.api.limits);
    let mut api_shutdown = shutdown_rx.clone();
    let api_task = tokio::spawn(async move {
        let stop = async move {
            let _ = api_shutdown.changed().await;
        };
        if let Err(e) = api::serve(listener, router, stop).await {
            tracing::error!(error = %e, "API server failed");
        }
    });
    let events_task = tokio::spawn(route_network_events(
        shared.clone(),
        net.events,
        driver_tx.clone(),
        shutdown_rx.clone(),
    ));
    let gossip_task = tokio::spawn(admission::publish_batches(
        net.handle.clone(),
        tx_outbox_rx,
        shutdown_rx.clone(),
    ));
    let admission_task = tokio::spawn(admission::admit_arrivals(
        shared.clone(),
        arrivals_rx,
        shutdown_rx.clone(),
    ));
    let sync_task = tokio::spawn(sync::run(
        shared.clone(),
        net.handle.clone(),
        driver_tx,
        hints_rx,
        shutdown_rx,
    ));
    tracing::info!(
        peer_id = %net.handle.local_peer_id(),
        p2p = ?net.handle.listen_addrs(),
        api = %api_addr,
        height,
        "node started"
    );
    Ok(RunningNode {
        p2p_addrs: net.handle.listen_addrs().to_vec(),
        shared,
        api_addr,
        shutdown,
        driver,
        tasks: vec![
            api_task,
            events_task,
            sync_task,
            gossip_task,
            admission_task,
        ],
        network_task: net.task,
    })
}

/// The next item of `queue`, or `None` once the queue closes or shutdown is
/// signalled: the loop of every task that drains a queue.
pub(crate) async fn recv_or_shutdown<T>(
    queue: &mut mpsc::Receiver<T>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<T> {
    tokio::select! {
        item = queue.recv() => item,
        _ = shutdown.changed() => None,
    }
}

/// Dispatches network events: consensus gossip to the driver, transaction
/// batches to admission ([`admission`]), sync requests to the sync server.
async fn route_network_events(
    shared: Arc<Shared>,
    mut events: mpsc::Receiver<NetworkEvent>,
    driver: mpsc::Sender<DriverInput>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let Some(event) = recv_or_shutdown(&mut events, &mut shutdown).await else {
            return;
        };
        match event {
            NetworkEvent::Consensus { data, .. } => {
                if driver.send(DriverInput::Consensus(data)).await.is_err() {
                    return;
                }
            }
            NetworkEvent::Transactions { data, relay } => {
                // Full: the origin still proposes them in its own turn.
                if let Err(Arrival::Gossiped { relay, .. }) = shared
                    .arrivals
                    .try_queue(Arrival::Gossiped { batch: data, relay })
                {
                    tracing::debug!(from = %relay.from(), "transaction batch dropped: admission busy");
                    shared.metrics.gossip_batch(RelayVerdict::Ignore);
                    shared.network.relay(relay, RelayVerdict::Ignore);
                }
            }
            NetworkEvent::InboundRequest { id, data, .. } => {
                // Served off this loop; at most the network's bound on
                // unanswered requests run at once.
                let shared = shared.clone();
                tokio::spawn(async move {
                    let network = shared.network.clone();
                    match tokio::task::spawn_blocking(move || sync::serve(&shared, &data)).await {
                        // A failed respond means the network is stopping.
                        Ok(reply) => {
                            let _ = network.respond(id, reply).await;
                        }
                        Err(e) => tracing::error!(error = %e, "sync server task failed"),
                    }
                });
            }
            NetworkEvent::PeerConnected(_) | NetworkEvent::PeerDisconnected(_) => {
                shared
                    .metrics
                    .peers
                    .set(shared.network.connected_peers() as i64);
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
