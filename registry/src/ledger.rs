//! The ledger: a store plus the head it has reached, and the operations a
//! node performs on it (propose, validate, commit, prove, prune).

use keyreg_consensus::certificate::{verify_commit, CertificateError};
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::{Hash, PublicKey};
use keyreg_consensus::validators::ValidatorSet;
use thiserror::Error;

use crate::block::{
    tx_root, Block, BlockError, CommittedBlock, Header, BLOCK_OVERHEAD_BYTES, MAX_BLOCK_BYTES,
};
use crate::execute::{execute_block_over, execute_transactions, BlockExecution};
use crate::genesis::{Genesis, GenesisError};
use crate::lookup::DeviceProof;
use crate::names::{DeviceName, OrgId};
use crate::records::{DeviceRecord, GovernanceRecord, OrgRecord, ValidatorInfo};
use crate::state::{RecordReader, StateError, StateView};
use crate::store::{LedgerStore, PruneStep, StoreError, TxLocation};
use crate::tree_state::TreeState;
use crate::tx::{check_stateless_unless, HashedTx, Transaction, TxError};

#[derive(Debug, Error)]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Genesis(#[from] GenesisError),
    #[error("the store belongs to genesis {stored}, not {expected}")]
    GenesisMismatch { stored: Hash, expected: Hash },
    #[error("invalid block: {0}")]
    Block(#[from] BlockError),
    #[error("invalid commit certificate: {0}")]
    Certificate(#[from] CertificateError),
    #[error("the execution is for height {execution}, the block is {block}")]
    ExecutionMismatch { execution: u64, block: u64 },
    #[error("{ids} transaction ids given for a block of {txs} transactions")]
    TxIdCount { ids: usize, txs: usize },
    #[error("no {what} at height {height}")]
    NotFound { what: &'static str, height: u64 },
    #[error("height 0 has no certificate: proofs start at height 1")]
    NoCertifiedBlock,
    #[error("state of height {height} is pruned (oldest kept: {oldest})")]
    Pruned { height: u64, oldest: u64 },
    #[error("block {height} is not the block written durably, or not the next one")]
    NotWritten { height: u64 },
}

/// A block that [`Ledger::write_commit`] made durable, waiting for
/// [`Ledger::advance`] to make it the head.
#[must_use = "the block is durable but not the head until Ledger::advance"]
pub struct DurableCommit {
    header_hash: Hash,
    execution: BlockExecution,
}

/// A store and its head. All writes go through [`Ledger::commit`] (or its
/// two steps, [`Ledger::write_commit`] and [`Ledger::advance`]).
pub struct Ledger<S: LedgerStore> {
    store: S,
    chain_id: String,
    genesis_hash: Hash,
    head: Header,
    /// The set that certifies block `head.height + 1`.
    validator_set: ValidatorSet,
    /// Stored blocks executed again by [`open`](Self::open).
    replayed_at_open: u64,
}

/// The head state, read from a store's head value index.
struct HeadValues<'s, S: LedgerStore>(&'s S);

impl<S: LedgerStore> StateView for HeadValues<'_, S> {
    fn get(&self, key: &Hash) -> Result<Option<Vec<u8>>, StateError> {
        self.0
            .head_value(key)
            .map_err(|e| StateError::Index(e.to_string()))
    }
}

impl<S: LedgerStore> Ledger<S> {
    /// Opens `store`, initialising it from `genesis` when empty, and checks
    /// a non-empty store was built from this very genesis. Certified blocks
    /// stored beyond the head whose tree and indexes a crash lost
    /// ([`LedgerStore::stored_head`]) are validated and committed again, so
    /// the ledger opens at the newest durable block.
    pub fn open(mut store: S, genesis: &Genesis) -> Result<Self, LedgerError> {
        let genesis_hash = genesis.hash();
        let head_height = match store.head()? {
            None => {
                let initial = genesis.initial_state()?;
                store.write_genesis(
                    &genesis_hash,
                    &initial.header,
                    initial.tree_batch,
                    &initial.changes,
                )?;
                0
            }
            Some(height) => {
                let stored = store.genesis_hash()?.unwrap_or(Hash::ZERO);
                if stored != genesis_hash {
                    return Err(LedgerError::GenesisMismatch {
                        stored,
                        expected: genesis_hash,
                    });
                }
                height
            }
        };
        let head = store.header(head_height)?.ok_or(LedgerError::NotFound {
            what: "header",
            height: head_height,
        })?;
        let validator_set = TreeState::new(&store, head_height).validator_set()?;
        let stored_head = store.stored_head()?.unwrap_or(head_height);
        let mut ledger = Ledger {
            store,
            chain_id: genesis.chain_id.clone(),
            genesis_hash,
            head,
            validator_set,
            replayed_at_open: 0,
        };
        for height in head_height + 1..=stored_head {
            let committed = ledger
                .committed_block(height)?
                .ok_or(LedgerError::NotFound {
                    what: "stored block to replay",
                    height,
                })?;
            ledger.apply_committed(&committed)?;
            ledger.replayed_at_open += 1;
        }
        Ok(ledger)
    }

    /// How many stored blocks [`open`](Self::open) executed again because a
    /// crash had lost their tree and indexes (0 after a clean close).
    pub fn replayed_at_open(&self) -> u64 {
        self.replayed_at_open
    }

    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    pub fn genesis_hash(&self) -> Hash {
        self.genesis_hash
    }

    pub fn head(&self) -> &Header {
        &self.head
    }

    pub fn height(&self) -> u64 {
        self.head.height
    }

    /// The set that certifies the next block.
    pub fn validator_set(&self) -> &ValidatorSet {
        &self.validator_set
    }

    /// Also for the node's own metadata ([`LedgerStore::put_meta`], written
    /// under shared access); blocks go through [`Ledger::commit`].
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The state after block `height`.
    pub fn state_at(&self, height: u64) -> Result<TreeState<'_, S>, LedgerError> {
        let oldest = self.store.oldest_tree_version()?;
        if height < oldest {
            return Err(LedgerError::Pruned { height, oldest });
        }
        if height > self.head.height {
            return Err(LedgerError::NotFound {
                what: "state",
                height,
            });
        }
        Ok(TreeState::new(&self.store, height))
    }

    fn head_state(&self) -> TreeState<'_, S> {
        TreeState::new(&self.store, self.head.height)
    }

    pub fn device(&self, name: &DeviceName) -> Result<Option<DeviceRecord>, LedgerError> {
        Ok(self.head_state().device(name)?)
    }

    pub fn org(&self, org: &OrgId) -> Result<Option<OrgRecord>, LedgerError> {
        Ok(self.head_state().org(org)?)
    }

    pub fn governance(&self) -> Result<GovernanceRecord, LedgerError> {
        Ok(self.head_state().governance()?)
    }

    /// The set that certifies block `height + 1` (light clients check it
    /// against `header(height).next_validator_set_hash`).
    pub fn validator_set_after(&self, height: u64) -> Result<ValidatorSet, LedgerError> {
        Ok(self.state_at(height)?.validator_set()?)
    }

    /// The validators (with network addresses) that certify the next block.
    pub fn validators(&self) -> Result<Vec<ValidatorInfo>, LedgerError> {
        Ok(self.head_state().validators()?)
    }

    /// The mempool's admission check: stateless checks, the transaction
    /// index (an already committed transaction is a [`TxError::Replay`]), and
    /// a dry run against the head state.
    pub fn check_tx(&self, tx: &Transaction) -> Result<Result<(), TxError>, LedgerError> {
        if self.store.tx_location(&tx.hash())?.is_some() {
            return Ok(Err(TxError::Replay));
        }
        let dry_run = execute_transactions(
            &self.head_state(),
            &self.chain_id,
            std::slice::from_ref(tx),
            self.head.height + 1,
            self.head.timestamp_ms + 1,
        )?;
        Ok(dry_run.results.into_iter().next().unwrap_or(Ok(())))
    }

    /// Executes `txs` as the next block without writing anything. The
    /// transactions `already_passed` vouches for (by hash) skip the
    /// stateless checks (see [`check_stateless_unless`]); pass `|_| false`
    /// to check them all.
    pub fn execute(
        &self,
        txs: &[Transaction],
        timestamp_ms: u64,
        already_passed: impl Fn(&Hash) -> bool,
    ) -> Result<BlockExecution, LedgerError> {
        let tx_hashes = txs.iter().map(Transaction::hash).collect();
        self.execute_hashed(txs, tx_hashes, timestamp_ms, already_passed)
    }

    /// [`execute`](Self::execute) given the transactions' hashes.
    fn execute_hashed(
        &self,
        txs: &[Transaction],
        tx_hashes: Vec<Hash>,
        timestamp_ms: u64,
        already_passed: impl Fn(&Hash) -> bool,
    ) -> Result<BlockExecution, LedgerError> {
        let stateless = check_stateless_unless(&self.chain_id, txs, |i| {
            tx_hashes.get(i).is_some_and(&already_passed)
        });
        // Records are read from the head value index when the store keeps
        // one (the parent of the next block is the head), else from the tree.
        let index = HeadValues(&self.store);
        let tree = TreeState::new(&self.store, self.head.height);
        let parent: &dyn StateView = if self.store.has_head_index() {
            &index
        } else {
            &tree
        };
        Ok(execute_block_over(
            &self.store,
            parent,
            txs,
            tx_hashes,
            stateless,
            self.head.height + 1,
            timestamp_ms,
        )?)
    }

    /// Builds the next block from the longest prefix of `txs` that fits the
    /// block size limit, and its execution (`already_passed` as in
    /// [`execute`](Self::execute)).
    pub fn propose(
        &self,
        txs: Vec<Transaction>,
        timestamp_ms: u64,
        proposer: PublicKey,
        already_passed: impl Fn(&Hash) -> bool,
    ) -> Result<(Block, BlockExecution), LedgerError> {
        let hashed = txs.into_iter().map(HashedTx::new).collect();
        self.propose_hashed(hashed, timestamp_ms, proposer, already_passed)
    }

    /// [`propose`](Self::propose) from transactions whose ids and sizes
    /// were computed when they were admitted.
    pub fn propose_hashed(
        &self,
        mut txs: Vec<HashedTx>,
        timestamp_ms: u64,
        proposer: PublicKey,
        already_passed: impl Fn(&Hash) -> bool,
    ) -> Result<(Block, BlockExecution), LedgerError> {
        let mut size = BLOCK_OVERHEAD_BYTES;
        let fitting = txs
            .iter()
            .take_while(|tx| {
                size = size.saturating_add(tx.size);
                size <= MAX_BLOCK_BYTES
            })
            .count();
        txs.truncate(fitting);
        let (txs, tx_hashes): (Vec<Transaction>, Vec<Hash>) =
            txs.into_iter().map(|tx| (tx.tx, tx.hash)).unzip();
        let execution = self.execute_hashed(&txs, tx_hashes, timestamp_ms, already_passed)?;
        let header = Header {
            version: Header::VERSION,
            chain_id: self.chain_id.clone(),
            epoch: execution.validator_set.epoch,
            height: execution.height,
            prev_hash: self.head.hash(),
            timestamp_ms,
            proposer,
            tx_root: tx_root(&execution.tx_hashes),
            state_root: execution.state_root,
            validator_set_hash: execution.validator_set.hash(),
            next_validator_set_hash: execution.next_validator_set.hash(),
        };
        let block = Block {
            version: Block::VERSION,
            header,
            transactions: txs,
        };
        Ok((block, execution))
    }

    /// Checks a proposed next block against the head and by executing it.
    pub fn validate(&self, block: &Block) -> Result<BlockExecution, LedgerError> {
        self.validate_prechecked(block, |_| false)
    }

    /// [`validate`](Self::validate) for a caller that already ran the
    /// stateless checks on the transactions `already_passed` vouches for.
    pub fn validate_prechecked(
        &self,
        block: &Block,
        already_passed: impl Fn(&Hash) -> bool,
    ) -> Result<BlockExecution, LedgerError> {
        self.validate_hashed(block, block.tx_hashes(), already_passed)
    }

    /// [`validate_prechecked`](Self::validate_prechecked) given the ids of
    /// the block's transactions, in order. The caller vouches that they are
    /// those transactions' ids (it looked the transactions up by id, or
    /// hashed them); the header's transaction root is checked against them.
    pub fn validate_hashed(
        &self,
        block: &Block,
        tx_hashes: Vec<Hash>,
        already_passed: impl Fn(&Hash) -> bool,
    ) -> Result<BlockExecution, LedgerError> {
        if tx_hashes.len() != block.transactions.len() {
            return Err(LedgerError::TxIdCount {
                ids: tx_hashes.len(),
                txs: block.transactions.len(),
            });
        }
        block.check_against_parent_hashed(&self.chain_id, &self.head, &tx_hashes)?;
        let execution = self.execute_hashed(
            &block.transactions,
            tx_hashes,
            block.header.timestamp_ms,
            already_passed,
        )?;
        execution.check_header(&block.header)?;
        Ok(execution)
    }

    /// Appends a committed block, given its execution (from
    /// [`validate`](Self::validate) or [`propose`](Self::propose) of this
    /// block: its transactions' hashes are taken from the execution). Checks
    /// the block against the head, the execution against the header and the
    /// certificate against the current validator set, then writes
    /// everything in one atomic store write.
    pub fn commit(
        &mut self,
        committed: &CommittedBlock,
        execution: BlockExecution,
    ) -> Result<(), LedgerError> {
        let durable = self.write_commit(committed, execution)?;
        self.advance(committed, durable)
    }

    /// The first step of [`commit`](Self::commit), under shared access:
    /// the same checks, then the store's durable write
    /// ([`LedgerStore::write_block_durably`]). The head does not move, so
    /// readers (look-ups, admission, block sync) go on reading it while the
    /// block goes to disk. [`advance`](Self::advance) must follow before
    /// another block is written (pruning steps may run in between).
    pub fn write_commit(
        &self,
        committed: &CommittedBlock,
        mut execution: BlockExecution,
    ) -> Result<DurableCommit, LedgerError> {
        let header = &committed.block.header;
        if execution.height != header.height {
            return Err(LedgerError::ExecutionMismatch {
                execution: execution.height,
                block: header.height,
            });
        }
        if execution.tx_hashes.len() != committed.block.transactions.len() {
            return Err(LedgerError::ExecutionMismatch {
                execution: execution.height,
                block: header.height,
            });
        }
        committed.block.check_against_parent_hashed(
            &self.chain_id,
            &self.head,
            &execution.tx_hashes,
        )?;
        execution.check_header(header)?;
        verify_commit(
            &self.chain_id,
            &self.validator_set,
            header.height,
            &header.hash(),
            &committed.certificate,
        )?;
        self.store.write_block_durably(
            committed,
            &mut execution.tree_batch,
            &execution.changes,
            &execution.results,
            &execution.tx_hashes,
        )?;
        Ok(DurableCommit {
            header_hash: header.hash(),
            execution,
        })
    }

    /// The second step of [`commit`](Self::commit): `committed`, the block
    /// `durable` was written for, becomes the head. Takes exclusive access
    /// only to move the head in memory.
    pub fn advance(
        &mut self,
        committed: &CommittedBlock,
        durable: DurableCommit,
    ) -> Result<(), LedgerError> {
        let header = &committed.block.header;
        if durable.header_hash != header.hash() || header.height != self.head.height + 1 {
            return Err(LedgerError::NotWritten {
                height: header.height,
            });
        }
        let execution = durable.execution;
        self.store.advance_head(
            committed,
            execution.tree_batch,
            &execution.changes,
            &execution.results,
            &execution.tx_hashes,
        )?;
        self.head = header.clone();
        self.validator_set = execution.next_validator_set;
        Ok(())
    }

    /// Validates and commits a block received from elsewhere (catch-up, replay).
    pub fn apply_committed(&mut self, committed: &CommittedBlock) -> Result<(), LedgerError> {
        let execution = self.validate(&committed.block)?;
        self.commit(committed, execution)
    }

    pub fn block(&self, height: u64) -> Result<Option<Block>, LedgerError> {
        Ok(self.store.block(height)?)
    }

    pub fn header(&self, height: u64) -> Result<Option<Header>, LedgerError> {
        Ok(self.store.header(height)?)
    }

    /// Block `height` (>= 1) with its certificate.
    pub fn committed_block(&self, height: u64) -> Result<Option<CommittedBlock>, LedgerError> {
        let (Some(block), Some(certificate)) =
            (self.store.block(height)?, self.store.certificate(height)?)
        else {
            return Ok(None);
        };
        Ok(Some(CommittedBlock {
            version: CommittedBlock::VERSION,
            block,
            certificate,
        }))
    }

    pub fn tx_location(&self, tx_hash: &Hash) -> Result<Option<TxLocation>, LedgerError> {
        Ok(self.store.tx_location(tx_hash)?)
    }

    /// Whether each of `tx_hashes` is committed, in order (see
    /// [`LedgerStore::are_committed`]: RocksDB answers in one batched read).
    pub fn are_committed(&self, tx_hashes: &[&Hash]) -> Result<Vec<bool>, LedgerError> {
        Ok(self.store.are_committed(tx_hashes)?)
    }

    /// A proof of `name`'s record (or absence) at the head.
    pub fn device_proof(&self, name: &DeviceName) -> Result<DeviceProof, LedgerError> {
        self.device_proof_at(name, self.head.height)
    }

    /// A proof of `name`'s record (or absence) after block `height` (>= 1).
    pub fn device_proof_at(
        &self,
        name: &DeviceName,
        height: u64,
    ) -> Result<DeviceProof, LedgerError> {
        if height == 0 {
            return Err(LedgerError::NoCertifiedBlock);
        }
        let state = self.state_at(height)?;
        let header = self.store.header(height)?.ok_or(LedgerError::NotFound {
            what: "header",
            height,
        })?;
        let certificate = self
            .store
            .certificate(height)?
            .ok_or(LedgerError::NotFound {
                what: "certificate",
                height,
            })?;
        let (value, proof) = state.prove(&name.state_key())?;
        let record = value
            .map(|bytes| {
                DeviceRecord::from_bytes(&bytes).map_err(|e| StateError::Corrupt {
                    key: name.state_key(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        Ok(DeviceProof {
            version: DeviceProof::VERSION,
            name: name.clone(),
            record,
            proof,
            header,
            certificate,
        })
    }

    /// Keeps the tree versions of the last `keep_last` (>= 1) heights and
    /// deletes nodes only older versions use. Blocks are kept.
    pub fn prune(&self, keep_last: u64) -> Result<u64, LedgerError> {
        Ok(self.store.prune_tree(self.oldest_to_keep(keep_last))?)
    }

    /// The oldest tree version that keeping the last `keep_last` (>= 1)
    /// heights keeps.
    pub fn oldest_to_keep(&self, keep_last: u64) -> u64 {
        (self.head.height + 1).saturating_sub(keep_last.max(1))
    }

    /// One step of [`prune`](Self::prune) down to `oldest_kept_version`
    /// (from [`oldest_to_keep`](Self::oldest_to_keep), taken once for all
    /// the steps): at most about [`PRUNE_CHUNK`](crate::PRUNE_CHUNK) nodes,
    /// under shared access, so a node prunes between its commits instead
    /// of holding the ledger for the whole deletion.
    pub fn prune_step(&self, oldest_kept_version: u64) -> Result<PruneStep, LedgerError> {
        Ok(self.store.prune_tree_step(oldest_kept_version)?)
    }
}
