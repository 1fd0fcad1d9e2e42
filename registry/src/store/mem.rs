//! An in-memory ledger store (tests, simulations, ephemeral nodes).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use keyreg_consensus::certificate::CommitCertificate;
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::Hash;

use super::{check_append, LedgerStore, PruneStep, StoreError, TxLocation};
use crate::block::{Block, CommittedBlock, Header};
use crate::execute::TxResult;
use crate::state::StateChanges;
use crate::tree::{MemNodeStore, Node, NodeKey, NodeReader, TreeBatch, TreeError};

#[derive(Debug, Default)]
pub struct MemLedgerStore {
    /// Behind a lock, as `meta`: pruning runs under shared access.
    nodes: RwLock<MemNodeStore>,
    blocks: Vec<Block>,
    certificates: BTreeMap<u64, CommitCertificate>,
    txs: HashMap<Hash, TxLocation>,
    /// Behind a lock: metadata is written under shared access.
    meta: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    genesis_hash: Option<Hash>,
    oldest_tree_version: AtomicU64,
    /// The head value index.
    head_values: HashMap<Hash, Vec<u8>>,
}

impl Clone for MemLedgerStore {
    fn clone(&self) -> Self {
        MemLedgerStore {
            nodes: RwLock::new(self.nodes().clone()),
            blocks: self.blocks.clone(),
            certificates: self.certificates.clone(),
            txs: self.txs.clone(),
            meta: Mutex::new(self.meta().clone()),
            genesis_hash: self.genesis_hash,
            oldest_tree_version: AtomicU64::new(self.oldest_tree_version.load(Ordering::SeqCst)),
            head_values: self.head_values.clone(),
        }
    }
}

impl MemLedgerStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn apply_to_head_index(&mut self, changes: &StateChanges) {
        for (key, value) in changes {
            match value {
                Some(value) => self.head_values.insert(*key, value.clone()),
                None => self.head_values.remove(key),
            };
        }
    }

    // As for `meta`: a poisoned lock's map is whole (one insert or removal
    // at a time).
    fn nodes(&self) -> RwLockReadGuard<'_, MemNodeStore> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn nodes_mut(&self) -> RwLockWriteGuard<'_, MemNodeStore> {
        self.nodes.write().unwrap_or_else(|p| p.into_inner())
    }

    fn meta(&self) -> MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // Each write is a few map operations that cannot leave the map
        // half-changed, so a poisoned lock's map is still whole.
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of stored tree nodes (to observe pruning).
    pub fn tree_node_count(&self) -> usize {
        self.nodes().node_count()
    }
}

impl NodeReader for MemLedgerStore {
    fn get_node(&self, key: &NodeKey) -> Result<Option<Node>, TreeError> {
        self.nodes().get_node(key)
    }
}

impl LedgerStore for MemLedgerStore {
    fn head(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.blocks.last().map(|b| b.header.height))
    }

    fn genesis_hash(&self) -> Result<Option<Hash>, StoreError> {
        Ok(self.genesis_hash)
    }

    fn header(&self, height: u64) -> Result<Option<Header>, StoreError> {
        Ok(self.block(height)?.map(|b| b.header))
    }

    fn block(&self, height: u64) -> Result<Option<Block>, StoreError> {
        let index = usize::try_from(height).unwrap_or(usize::MAX);
        Ok(self.blocks.get(index).cloned())
    }

    fn certificate(&self, height: u64) -> Result<Option<CommitCertificate>, StoreError> {
        Ok(self.certificates.get(&height).cloned())
    }

    fn tx_location(&self, tx_hash: &Hash) -> Result<Option<TxLocation>, StoreError> {
        Ok(self.txs.get(tx_hash).cloned())
    }

    fn write_genesis(
        &mut self,
        genesis_hash: &Hash,
        header: &Header,
        tree: TreeBatch,
        state: &StateChanges,
    ) -> Result<(), StoreError> {
        if !self.blocks.is_empty() || header.height != 0 || tree.version != 0 {
            return Err(StoreError::Order("genesis into a non-empty store".into()));
        }
        self.nodes_mut().write_owned(tree);
        self.apply_to_head_index(state);
        self.blocks.push(Block {
            version: Block::VERSION,
            header: header.clone(),
            transactions: Vec::new(),
        });
        self.genesis_hash = Some(*genesis_hash);
        Ok(())
    }

    /// Nothing is durable here: only the checks, so that a bad append fails
    /// in the same step as in a durable store.
    fn write_block_durably(
        &self,
        committed: &CommittedBlock,
        tree: &mut TreeBatch,
        _changes: &StateChanges,
        results: &[TxResult],
        tx_hashes: &[Hash],
    ) -> Result<(), StoreError> {
        check_append(self.head()?, committed, tree, results, tx_hashes)
    }

    fn advance_head(
        &mut self,
        committed: &CommittedBlock,
        tree: TreeBatch,
        changes: &StateChanges,
        results: &[TxResult],
        tx_hashes: &[Hash],
    ) -> Result<(), StoreError> {
        check_append(self.head()?, committed, &tree, results, tx_hashes)?;
        self.apply_to_head_index(changes);
        let height = committed.block.header.height;
        for (index, (tx_hash, result)) in tx_hashes.iter().zip(results).enumerate() {
            // The first commit of a hash wins; a later copy was a rejected replay.
            self.txs.entry(*tx_hash).or_insert_with(|| TxLocation {
                version: TxLocation::VERSION,
                height,
                index: index as u32,
                result: result.clone(),
            });
        }
        self.nodes_mut().write_owned(tree);
        self.certificates
            .insert(height, committed.certificate.clone());
        self.blocks.push(committed.block.clone());
        Ok(())
    }

    fn write_meta(&self, puts: &[(&[u8], &[u8])], deletes: &[&[u8]]) -> Result<(), StoreError> {
        let mut meta = self.meta();
        for (key, value) in puts {
            meta.insert(key.to_vec(), value.to_vec());
        }
        for key in deletes {
            meta.remove(*key);
        }
        Ok(())
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta().get(key).cloned())
    }

    /// All at once: memory is fast, and tests want one step.
    fn prune_tree_step(&self, oldest_kept_version: u64) -> Result<PruneStep, StoreError> {
        self.oldest_tree_version
            .fetch_max(oldest_kept_version, Ordering::SeqCst);
        let deleted = self.nodes_mut().prune(oldest_kept_version);
        Ok(PruneStep {
            deleted: deleted as u64,
            done: true,
        })
    }

    fn oldest_tree_version(&self) -> Result<u64, StoreError> {
        Ok(self.oldest_tree_version.load(Ordering::SeqCst))
    }

    fn has_head_index(&self) -> bool {
        true
    }

    fn head_value(&self, key: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.head_values.get(key).cloned())
    }
}
