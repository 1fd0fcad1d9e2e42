//! The replayed chain: the state tree after the last audited block, the
//! set that certifies the next one, and the checks each block must pass.

use std::collections::BTreeSet;

use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::Hash;
use keyreg_consensus::validators::ValidatorSet;
use keyreg_consensus::verify_commit;
use keyreg_registry::block::MAX_BLOCK_BYTES;
use keyreg_registry::records::{governance_key, validator_key};
use keyreg_registry::state::StateChanges;
use keyreg_registry::tree::{MemNodeStore, Node, NodeKey, NodeReader, KEY_NIBBLES};
use keyreg_registry::tree_state::apply_changes;
use keyreg_registry::{
    execute_block_prechecked, Block, BlockError, CommittedBlock, DeviceName, DeviceRecord, Genesis,
    Header, OrgRecord, RecordReader, StateError, TreeState, TxError, TxResult,
};

use super::checkpoint::{Checkpoint, CheckpointError};
use super::history::{HistoryEvent, HistoryTracker};
use super::summary::{AuditSummary, Counters, DeviceCounts, OrgCounts, ValidatorSetChange};
use super::{AuditError, AuditObject};

/// A decoded block with what the verifier thread established about it.
pub(crate) struct PreparedBlock {
    /// The height this block must have (its position in the source).
    pub height: u64,
    pub committed: CommittedBlock,
    pub tx_hashes: Vec<Hash>,
    /// Each transaction's stateless checks, signatures included.
    pub stateless: Vec<TxResult>,
}

pub(crate) struct Replay {
    chain_id: String,
    genesis_hash: Hash,
    /// The state tree; only the version of `head` is kept.
    nodes: MemNodeStore,
    head: Header,
    /// The set that certifies block `head.height + 1`.
    validator_set: ValidatorSet,
    counters: Counters,
    history: Option<HistoryTracker>,
}

impl Replay {
    pub fn from_genesis(genesis: &Genesis) -> Result<Self, AuditError> {
        let initial = genesis.initial_state()?;
        let mut nodes = MemNodeStore::new();
        nodes.write_owned(initial.tree_batch);
        Ok(Replay {
            chain_id: genesis.chain_id.clone(),
            genesis_hash: genesis.hash(),
            nodes,
            head: initial.header,
            validator_set: initial.validator_set,
            counters: Counters::default(),
            history: None,
        })
    }

    /// Rebuilds the state from a checkpoint's leaves and accepts it only if
    /// it reproduces the checkpoint header's certified state root and
    /// validator-set hand-over.
    pub fn from_checkpoint(genesis: &Genesis, cp: Checkpoint) -> Result<Self, CheckpointError> {
        let genesis_hash = genesis.hash();
        if cp.chain_id != genesis.chain_id
            || cp.genesis_hash != genesis_hash
            || cp.header.chain_id != genesis.chain_id
        {
            return Err(CheckpointError::WrongChain {
                chain_id: cp.chain_id,
                genesis_hash: cp.genesis_hash,
            });
        }
        if let Some(index) = cp
            .leaves
            .windows(2)
            .position(|w| matches!(w, [a, b] if a.0 >= b.0))
        {
            return Err(CheckpointError::UnsortedLeaves { index: index + 1 });
        }
        let height = cp.header.height;
        let changes: StateChanges = cp.leaves.into_iter().map(|(k, v)| (k, Some(v))).collect();
        let batch = apply_changes(&MemNodeStore::new(), None, height, &changes)?;
        if batch.root != cp.header.state_root {
            return Err(CheckpointError::StateRoot {
                height,
                certified: cp.header.state_root,
                rebuilt: batch.root,
            });
        }
        let mut nodes = MemNodeStore::new();
        nodes.write_owned(batch);
        let derived = TreeState::new(&nodes, height).validator_set()?;
        if derived != cp.validator_set
            || cp.validator_set.hash() != cp.header.next_validator_set_hash
        {
            return Err(CheckpointError::ValidatorSet { height });
        }
        // Every change moves the epoch by exactly one from genesis's 0.
        if cp.counters.validator_set_changes != cp.validator_set.epoch {
            return Err(CheckpointError::Counters { height });
        }
        Ok(Replay {
            chain_id: genesis.chain_id.clone(),
            genesis_hash,
            nodes,
            head: cp.header,
            validator_set: cp.validator_set,
            counters: cp.counters,
            history: None,
        })
    }

    /// Also records the history of `name` (from genesis only).
    pub fn tracking(mut self, name: DeviceName) -> Self {
        self.history = Some(HistoryTracker::new(name));
        self
    }

    pub fn height(&self) -> u64 {
        self.head.height
    }

    pub fn head_hash(&self) -> Hash {
        self.head.hash()
    }

    pub fn into_history(self) -> Vec<HistoryEvent> {
        self.history
            .map(HistoryTracker::into_events)
            .unwrap_or_default()
    }

    /// Checks `b` as the next block and applies it (see the module docs of
    /// `audit` for the order of the checks).
    pub fn audit_block(&mut self, b: PreparedBlock) -> Result<(), AuditError> {
        let height = b.height;
        let block = &b.committed.block;
        let header = &block.header;
        // 1. The hash chain. The tx root is the last check of
        // check_against_parent: a mismatch there is reported after the
        // certificate and the transactions' own checks, which name it better.
        let tx_root_mismatch = match block.check_against_parent(&self.chain_id, &self.head) {
            Ok(()) => None,
            Err(BlockError::TxRoot { expected, found }) => Some((expected, found)),
            Err(e) => return Err(block_divergence(height, e)),
        };
        // 2. The certificate, by the set this block's epoch hands it.
        let block_hash = header.hash();
        verify_commit(
            &self.chain_id,
            &self.validator_set,
            height,
            &block_hash,
            &b.committed.certificate,
        )
        .map_err(|e| {
            AuditError::divergence(
                height,
                AuditObject::Certificate,
                format!(
                    "a quorum of epoch {} precommitting {block_hash}",
                    self.validator_set.epoch
                ),
                e,
            )
        })?;
        // 3, 4. A certified transaction that fails its stateless checks is
        // merely rejected (execution agrees); one that does not belong to
        // the certified tx root is the divergence.
        if let Some((computed, certified)) = tx_root_mismatch {
            if let Some((index, error)) = first_stateless_failure(&b.stateless) {
                let object = match error {
                    TxError::BadSignature { .. } => AuditObject::TransactionSignature(index),
                    _ => AuditObject::Transaction(index),
                };
                return Err(AuditError::divergence(
                    height,
                    object,
                    "a valid transaction",
                    format!("{error} (and tx_root {computed} instead of {certified})"),
                ));
            }
            return Err(AuditError::divergence(
                height,
                AuditObject::TxRoot,
                computed,
                certified,
            ));
        }
        // 5. Authorisation and state, by re-execution.
        // The window's batch already verified every signature: execution
        // reuses those results instead of verifying them again.
        let execution = execute_block_prechecked(
            &self.nodes,
            &block.transactions,
            b.tx_hashes.clone(),
            b.stateless,
            height,
            header.timestamp_ms,
        )?;
        execution
            .check_header(header)
            .map_err(|e| block_divergence(height, e))?;
        let next = execution.next_validator_set;
        let expected_epoch = self.validator_set.epoch + u64::from(header.changes_validators());
        if next.epoch != expected_epoch {
            return Err(AuditError::divergence(
                height,
                AuditObject::NextValidatorSetEpoch,
                expected_epoch,
                next.epoch,
            ));
        }
        for (tx, result) in block.transactions.iter().zip(&execution.results) {
            self.counters.transactions.count(&tx.body, result.is_err());
        }
        if header.changes_validators() {
            self.counters.record_set_change(ValidatorSetChange {
                height,
                epoch: next.epoch,
                validators: next.len() as u32,
                set_hash: header.next_validator_set_hash,
            });
        }
        let touched = match &mut self.history {
            Some(tracker) => tracker.observe(block, &b.tx_hashes, &execution.results)?,
            None => false,
        };
        self.nodes.write_owned(execution.tree_batch);
        self.nodes.prune(height);
        self.head = b.committed.block.header;
        self.validator_set = next;
        if let (true, Some(tracker)) = (touched, &self.history) {
            let record = TreeState::new(&self.nodes, height).device(tracker.name())?;
            tracker.check_state(height, record.as_ref())?;
        }
        Ok(())
    }

    /// Every state leaf, sorted by key.
    fn leaves(&self) -> Result<Vec<(Hash, Vec<u8>)>, StateError> {
        state_leaves(&self.nodes, self.head.height)
    }

    pub fn checkpoint(&self) -> Result<Checkpoint, AuditError> {
        Ok(Checkpoint {
            chain_id: self.chain_id.clone(),
            genesis_hash: self.genesis_hash,
            header: self.head.clone(),
            validator_set: self.validator_set.clone(),
            counters: self.counters.clone(),
            leaves: self.leaves()?,
        })
    }

    /// The summary, with organisation and device counts read from the state.
    pub fn summary(&self, resumed_from: Option<u64>) -> Result<AuditSummary, AuditError> {
        let state = TreeState::new(&self.nodes, self.head.height);
        let governance = state.governance()?;
        let validator_keys: BTreeSet<Hash> =
            (0..governance.validator_count).map(validator_key).collect();
        let mut organisations = OrgCounts::default();
        let mut devices = DeviceCounts::default();
        for (key, value) in self.leaves()? {
            if key == governance_key() || validator_keys.contains(&key) {
                continue;
            }
            // A record is what its key says it is: a decodable record whose
            // own name hashes to the leaf's key.
            if let Ok(device) = DeviceRecord::from_bytes(&value) {
                if device.name.state_key() == key {
                    let counter = if device.is_active() {
                        &mut devices.active
                    } else {
                        &mut devices.revoked
                    };
                    *counter += 1;
                    continue;
                }
            }
            match OrgRecord::from_bytes(&value) {
                Ok(org) if org.id.state_key() == key => {
                    let counter = if org.is_active() {
                        &mut organisations.active
                    } else {
                        &mut organisations.removed
                    };
                    *counter += 1;
                }
                _ => {
                    return Err(AuditError::State(StateError::Invariant(format!(
                        "state leaf {key} is no known record"
                    ))))
                }
            }
        }
        Ok(AuditSummary {
            chain_id: self.chain_id.clone(),
            genesis_hash: self.genesis_hash,
            head_height: self.head.height,
            head_hash: self.head.hash(),
            state_root: self.head.state_root,
            resumed_from,
            blocks: self.head.height,
            transactions: self.counters.transactions.clone(),
            organisations,
            devices,
            epoch: self.validator_set.epoch,
            validators: self.validator_set.len() as u32,
            validator_set_changes: self.counters.validator_set_changes,
            recent_validator_set_changes: self.counters.recent_set_changes.clone(),
        })
    }
}

fn first_stateless_failure(results: &[TxResult]) -> Option<(u32, &TxError)> {
    results
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.as_ref().err().map(|e| (i as u32, e)))
}

/// Names the header field a [`BlockError`] is about.
fn block_divergence(height: u64, error: BlockError) -> AuditError {
    match error {
        BlockError::Version(v) => {
            AuditError::divergence(height, AuditObject::BlockVersion, Block::VERSION, v)
        }
        BlockError::WrongChain { expected, found } => {
            AuditError::divergence(height, AuditObject::ChainId, expected, found)
        }
        BlockError::Height { expected, found } => {
            AuditError::divergence(height, AuditObject::Height, expected, found)
        }
        BlockError::PrevHash { expected, found } => {
            AuditError::divergence(height, AuditObject::PrevHash, expected, found)
        }
        BlockError::Timestamp { parent, found } => AuditError::divergence(
            height,
            AuditObject::Timestamp,
            format!("after the parent's {parent}"),
            found,
        ),
        BlockError::TxRoot { expected, found } => {
            AuditError::divergence(height, AuditObject::TxRoot, expected, found)
        }
        BlockError::Epoch { expected, found } => {
            AuditError::divergence(height, AuditObject::Epoch, expected, found)
        }
        BlockError::ValidatorSetHash { expected, found } => {
            AuditError::divergence(height, AuditObject::ValidatorSetHash, expected, found)
        }
        BlockError::NextValidatorSetHash { expected, found } => {
            AuditError::divergence(height, AuditObject::NextValidatorSetHash, expected, found)
        }
        BlockError::StateRoot { expected, found } => {
            AuditError::divergence(height, AuditObject::StateRoot, expected, found)
        }
        BlockError::TooLarge { size } => AuditError::divergence(
            height,
            AuditObject::BlockSize,
            format!("at most {MAX_BLOCK_BYTES} bytes"),
            format!("{size} bytes"),
        ),
        BlockError::UnknownProposer(key) => AuditError::divergence(
            height,
            AuditObject::Proposer,
            "a validator of the block's epoch",
            key,
        ),
    }
}

/// Every leaf of tree `version`, in key order (a depth-first walk in nibble
/// order; the depth is bounded by the key length).
pub(crate) fn state_leaves<R: NodeReader + ?Sized>(
    reader: &R,
    version: u64,
) -> Result<Vec<(Hash, Vec<u8>)>, StateError> {
    let mut leaves = Vec::new();
    let mut stack = vec![NodeKey::root(version)];
    while let Some(key) = stack.pop() {
        let node = reader
            .get_node(&key)?
            .ok_or_else(|| StateError::Tree(format!("node {key:?} is missing")))?;
        match node {
            Node::Empty => {}
            Node::Leaf(leaf) => leaves.push((leaf.key, leaf.value)),
            Node::Internal(_) if key.path.len() >= KEY_NIBBLES => {
                return Err(StateError::Tree(format!(
                    "internal node {key:?} at full depth"
                )))
            }
            Node::Internal(internal) => {
                let children: Vec<NodeKey> = internal
                    .children()
                    .map(|(nibble, child)| NodeKey {
                        version: child.version,
                        path: key.path.child(nibble),
                    })
                    .collect();
                // Reversed so the smallest nibble is walked first.
                stack.extend(children.into_iter().rev());
            }
        }
    }
    debug_assert!(leaves.windows(2).all(|w| matches!(w, [a, b] if a.0 < b.0)));
    Ok(leaves)
}
