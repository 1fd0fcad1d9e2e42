//! Ledger storage: blocks, certificates, tree nodes, the transaction index
//! and the node's own metadata.
//!
//! [`LedgerStore::write_block`] is the one way a block enters a store: the
//! block, its certificate, its tree nodes and stale-node index entries, its
//! transaction-index entries, its head value index entries and the new head.
//! A crash never leaves a mixture of two heads: the in-memory store writes
//! them at once; the RocksDB store makes the block durable first and its
//! derived data (tree, indexes) afterwards, lost in a crash back to a
//! consistent earlier height, and [`LedgerStore::stored_head`] tells
//! [`Ledger::open`](crate::Ledger::open) which blocks to execute again.
//!
//! It runs in two steps, so that readers need not wait for the disk:
//! [`write_block_durably`](LedgerStore::write_block_durably) takes shared
//! access and does the writing (the synced write of the block, the batch of
//! its tree and indexes), while the head stays where it was;
//! [`advance_head`](LedgerStore::advance_head) then takes exclusive access
//! only to move the head in memory. Between the two, readers of the head
//! read the previous head's tree (its nodes are not touched: a block writes
//! nodes of its own version only), and the transaction index may already
//! answer for the new block: a transaction already reads as committed,
//! which is what admission wants to know. The head value index is ahead of
//! the head then, so [`LedgerStore::has_head_index`] is false from before
//! it changes until the head moves, and executions begun in the window read
//! through the tree. (One begun just before may still read a few of the new
//! values: only admission's dry runs run beside the writer, and a dry run
//! that sees the block being committed judges by the newer state.) Only one
//! writer (the node's driver) runs the two steps, one block at a time.
//! Pruning steps ([`LedgerStore::prune_tree_step`]) may run between them,
//! also under shared access: they delete only nodes of versions older than
//! the kept ones and their stale-index entries, never the head's or the new
//! block's.
//!
//! The head value index holds every state key's value at the head version,
//! beside the tree: execution reads a record with one point read instead of
//! a walk down the tree (proofs still come from the tree). It is written in
//! the same batch as the tree and tagged with the head it matches; a store
//! whose tag is not its head (created before the index existed, or written
//! by a version that did not keep it) has none and reads through the tree.

mod mem;
#[cfg(feature = "rocksdb")]
mod rocks;
#[cfg(feature = "rocksdb")]
mod top_nodes;

use bincode::{Decode, Encode};
use keyreg_consensus::certificate::CommitCertificate;
use keyreg_consensus::codec::{Canonical, CodecError};
use keyreg_consensus::crypto::Hash;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::block::{Block, CommittedBlock, Header};
use crate::execute::TxResult;
use crate::state::StateChanges;
use crate::tree::{NodeReader, TreeBatch};

pub use mem::MemLedgerStore;
#[cfg(feature = "rocksdb")]
pub use rocks::{RocksLedgerStore, FLUSH_EVERY_BLOCKS};

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("storage backend: {0}")]
    Backend(String),
    #[error("stored {what} does not decode: {source}")]
    Corrupt {
        what: &'static str,
        source: CodecError,
    },
    #[error("write out of order: {0}")]
    Order(String),
}

/// Where a committed transaction is, and what it did.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct TxLocation {
    pub version: u8,
    pub height: u64,
    pub index: u32,
    pub result: TxResult,
}

impl Canonical for TxLocation {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

/// A ledger's durable state. Implementations: [`MemLedgerStore`] and, with
/// feature `rocksdb`, `RocksLedgerStore`.
pub trait LedgerStore: NodeReader {
    /// Height of the newest block whose tree and indexes are stored (0:
    /// genesis only); `None` for an empty store.
    fn head(&self) -> Result<Option<u64>, StoreError>;
    /// Height of the newest durable block, `>= head`. Above `head` are
    /// certified blocks stored before a crash took their derived data
    /// (tree nodes, indexes); [`Ledger::open`](crate::Ledger::open) executes
    /// them again and writes them with [`write_block`](Self::write_block).
    fn stored_head(&self) -> Result<Option<u64>, StoreError> {
        self.head()
    }
    /// The genesis hash the store was initialised with.
    fn genesis_hash(&self) -> Result<Option<Hash>, StoreError>;
    fn header(&self, height: u64) -> Result<Option<Header>, StoreError>;
    fn block(&self, height: u64) -> Result<Option<Block>, StoreError>;
    /// `None` for height 0 (genesis is trusted by its hash).
    fn certificate(&self, height: u64) -> Result<Option<CommitCertificate>, StoreError>;
    fn tx_location(&self, tx_hash: &Hash) -> Result<Option<TxLocation>, StoreError>;
    /// Whether each of `tx_hashes` is in the transaction index (committed),
    /// in order: a store may answer them in one batched read.
    fn are_committed(&self, tx_hashes: &[&Hash]) -> Result<Vec<bool>, StoreError> {
        tx_hashes
            .iter()
            .map(|hash| Ok(self.tx_location(hash)?.is_some()))
            .collect()
    }
    /// Initialises an empty store with the genesis header, tree version 0
    /// and its records (`state`, for the head value index).
    fn write_genesis(
        &mut self,
        genesis_hash: &Hash,
        header: &Header,
        tree: TreeBatch,
        state: &StateChanges,
    ) -> Result<(), StoreError>;
    /// Appends the block at `head + 1` with its tree nodes, its writes
    /// (`changes`, for the head value index), per-transaction results and
    /// transaction hashes (in block order), atomically and durably. The tree
    /// update is the store's to keep (an in-memory store keeps its nodes).
    /// Both steps of the module docs, one after the other.
    fn write_block(
        &mut self,
        committed: &CommittedBlock,
        mut tree: TreeBatch,
        changes: &StateChanges,
        results: &[TxResult],
        tx_hashes: &[Hash],
    ) -> Result<(), StoreError> {
        self.write_block_durably(committed, &mut tree, changes, results, tx_hashes)?;
        self.advance_head(committed, tree, changes, results, tx_hashes)
    }
    /// The first step of [`write_block`](Self::write_block), under shared
    /// access: makes the block at `head + 1` and its derived data durable
    /// (as far as the store is durable at all; the in-memory store only
    /// checks the append here) without moving the head. `tree`'s new nodes
    /// may be reordered. [`advance_head`](Self::advance_head) with the same
    /// arguments must follow before another block is written (pruning
    /// steps may run in between: see the module docs).
    fn write_block_durably(
        &self,
        committed: &CommittedBlock,
        tree: &mut TreeBatch,
        changes: &StateChanges,
        results: &[TxResult],
        tx_hashes: &[Hash],
    ) -> Result<(), StoreError>;
    /// The second step of [`write_block`](Self::write_block): the block
    /// written by [`write_block_durably`](Self::write_block_durably)
    /// becomes the head.
    fn advance_head(
        &mut self,
        committed: &CommittedBlock,
        tree: TreeBatch,
        changes: &StateChanges,
        results: &[TxResult],
        tx_hashes: &[Hash],
    ) -> Result<(), StoreError>;
    /// Whether the head value index matches the head (see the module docs).
    fn has_head_index(&self) -> bool;
    /// The value under `key` at the head version, from the head value
    /// index; only meaningful when [`has_head_index`](Self::has_head_index).
    fn head_value(&self, key: &Hash) -> Result<Option<Vec<u8>>, StoreError>;
    /// The node's own durable key/value pairs (e.g. consensus safety state);
    /// written synchronously, in a namespace of their own. Shared access:
    /// a synced write of the safety state does not hold up readers.
    fn put_meta(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.write_meta(&[(key, value)], &[])
    }
    /// Puts and deletes of the node's own pairs, all or none (one
    /// synchronous write).
    fn write_meta(&self, puts: &[(&[u8], &[u8])], deletes: &[&[u8]]) -> Result<(), StoreError>;
    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// One step of deleting the tree nodes that no version
    /// `>= oldest_kept_version` uses: at most about [`PRUNE_CHUNK`] of them,
    /// so a caller under shared access can let writers in between steps.
    /// From the first step on, versions below `oldest_kept_version` read as
    /// pruned ([`oldest_tree_version`](Self::oldest_tree_version)), before
    /// any of their nodes goes. A reader that began on such a version just
    /// before may find a node missing: an error, never a wrong answer.
    fn prune_tree_step(&self, oldest_kept_version: u64) -> Result<PruneStep, StoreError>;
    /// Every step of [`prune_tree_step`](Self::prune_tree_step) at once.
    /// Returns how many nodes were deleted.
    fn prune_tree(&self, oldest_kept_version: u64) -> Result<u64, StoreError> {
        let mut deleted = 0;
        loop {
            let step = self.prune_tree_step(oldest_kept_version)?;
            deleted += step.deleted;
            if step.done {
                return Ok(deleted);
            }
        }
    }
    /// The oldest tree version still readable (0 until pruned).
    fn oldest_tree_version(&self) -> Result<u64, StoreError>;
}

/// Stale tree nodes deleted per step of [`LedgerStore::prune_tree_step`],
/// about: a step ends after the version that reaches it, so it holds at
/// most one version's stale nodes more (bounds the step's memory and how
/// long it keeps writers waiting: about 10 ms of RocksDB deletes).
pub const PRUNE_CHUNK: usize = 10_000;

/// What one [`LedgerStore::prune_tree_step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PruneStep {
    /// Tree nodes deleted by this step.
    pub deleted: u64,
    /// Whether nothing is left to delete for that oldest kept version.
    pub done: bool,
}

/// The checks every store makes before appending a block.
fn check_append(
    head: Option<u64>,
    committed: &CommittedBlock,
    tree: &TreeBatch,
    results: &[TxResult],
    tx_hashes: &[Hash],
) -> Result<(), StoreError> {
    let height = committed.block.header.height;
    let Some(head) = head else {
        return Err(StoreError::Order("store has no genesis".into()));
    };
    if height != head + 1 || tree.version != height {
        return Err(StoreError::Order(format!(
            "block {height} / tree version {} after head {head}",
            tree.version
        )));
    }
    if tree.root != committed.block.header.state_root {
        return Err(StoreError::Order(
            "tree batch root differs from the header's state root".into(),
        ));
    }
    let count = committed.block.transactions.len();
    if results.len() != count || tx_hashes.len() != count {
        return Err(StoreError::Order(format!(
            "{} results and {} hashes for {count} transactions",
            results.len(),
            tx_hashes.len()
        )));
    }
    Ok(())
}

#[cfg(feature = "rocksdb")]
fn decode_stored<T: Canonical>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    T::from_bytes(bytes).map_err(|source| StoreError::Corrupt { what, source })
}
