//! The ledger auditor: replays a chain from its pinned genesis and checks
//! every block, as `keyreg audit` and `keyreg history` do.
//!
//! For every block, in order (the first failure is an
//! [`AuditError::Divergence`] naming height, object and what differed):
//!
//! 1. the hash chain: versions, chain id, height + 1, `prev_hash`, time,
//!    epoch and validator-set hash against the parent ([`Block::check_against_parent`]);
//! 2. the commit certificate against the validator set of the block's epoch
//!    ([`verify_commit`](keyreg_consensus::verify_commit));
//! 3. every transaction's signatures, batch-verified across the transactions
//!    of a whole window of blocks on a second thread while the previous
//!    window executes (see `pipeline`);
//! 4. the transaction root;
//! 5. authorisation and the state root, by re-executing with the registry's
//!    deterministic execution, and the validator-set hand-over (the next
//!    set's hash and epoch + 1);
//!
//! and finally that the head the source reported hashes to the replayed head.
//!
//! [`Block::check_against_parent`]: keyreg_registry::Block::check_against_parent

mod checkpoint;
mod history;
mod pipeline;
mod progress;
mod replay;
mod source;
mod summary;
pub mod synthetic;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;

use keyreg_consensus::crypto::Hash;
use keyreg_registry::{DeviceName, Genesis, GenesisError, StateError};
use serde::{Serialize, Serializer};
use thiserror::Error;

pub use checkpoint::{load_checkpoint, save_checkpoint, Checkpoint, CheckpointError};
pub use history::{HistoryEvent, HistoryKind};
pub use progress::{cli_progress, NoProgress, Progress, TerminalProgress};
pub use source::{
    BlockSource, ChainHead, FileSource, HttpSource, MemSource, SourceError, SourceInfo,
    MAX_PAGE_BLOCKS,
};
pub use summary::{AuditSummary, DeviceCounts, OrgCounts, TxCounts, ValidatorSetChange};

use replay::Replay;

/// Where the audit keeps its checkpoint.
#[derive(Clone, Debug)]
pub struct CheckpointOptions {
    pub path: PathBuf,
    /// Save after every block whose height is a multiple of this (and after the last).
    pub every: u64,
    /// Continue from the checkpoint when the file exists.
    pub resume: bool,
}

/// What to audit against and how.
#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// The pinned trust anchor.
    pub genesis: Genesis,
    /// Most blocks whose signatures are verified in one batch.
    pub window_blocks: usize,
    /// A window also closes once it holds this many transactions.
    pub window_txs: usize,
    pub checkpoint: Option<CheckpointOptions>,
}

impl AuditOptions {
    pub const DEFAULT_WINDOW_BLOCKS: usize = 64;
    pub const DEFAULT_WINDOW_TXS: usize = 4096;

    pub fn new(genesis: Genesis) -> Self {
        AuditOptions {
            genesis,
            window_blocks: Self::DEFAULT_WINDOW_BLOCKS,
            window_txs: Self::DEFAULT_WINDOW_TXS,
            checkpoint: None,
        }
    }
}

/// The part of a block where the replay diverged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditObject {
    /// The block's bytes do not decode as a canonical committed block.
    BlockEncoding,
    BlockVersion,
    ChainId,
    Height,
    PrevHash,
    Timestamp,
    Epoch,
    ValidatorSetHash,
    BlockSize,
    Certificate,
    /// A transaction whose signature does not verify (index in the block).
    TransactionSignature(u32),
    /// A transaction failing another stateless check (index in the block).
    Transaction(u32),
    TxRoot,
    StateRoot,
    NextValidatorSetHash,
    /// The set a block hands over to is not exactly one epoch later.
    NextValidatorSetEpoch,
    Proposer,
    /// The head the source reported.
    HeadHash,
}

impl fmt::Display for AuditObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditObject::BlockEncoding => f.write_str("block encoding"),
            AuditObject::BlockVersion => f.write_str("block.version"),
            AuditObject::ChainId => f.write_str("header.chain_id"),
            AuditObject::Height => f.write_str("header.height"),
            AuditObject::PrevHash => f.write_str("header.prev_hash"),
            AuditObject::Timestamp => f.write_str("header.timestamp_ms"),
            AuditObject::Epoch => f.write_str("header.epoch"),
            AuditObject::ValidatorSetHash => f.write_str("header.validator_set_hash"),
            AuditObject::BlockSize => f.write_str("block size"),
            AuditObject::Certificate => f.write_str("certificate"),
            AuditObject::TransactionSignature(i) => write!(f, "transaction {i} signature"),
            AuditObject::Transaction(i) => write!(f, "transaction {i}"),
            AuditObject::TxRoot => f.write_str("tx_root"),
            AuditObject::StateRoot => f.write_str("state_root"),
            AuditObject::NextValidatorSetHash => f.write_str("header.next_validator_set_hash"),
            AuditObject::NextValidatorSetEpoch => f.write_str("next validator set epoch"),
            AuditObject::Proposer => f.write_str("header.proposer"),
            AuditObject::HeadHash => f.write_str("head hash"),
        }
    }
}

impl Serialize for AuditObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Error)]
pub enum AuditError {
    /// The first place the chain differs from its replay.
    #[error("divergence at height {height}: {object}: expected {expected}, found {found}")]
    Divergence {
        height: u64,
        object: AuditObject,
        expected: String,
        found: String,
    },
    #[error(
        "the source serves chain {found_chain:?} with genesis {found_genesis}; \
         the pinned genesis is {expected_chain:?} ({expected_genesis})"
    )]
    WrongChain {
        expected_chain: String,
        expected_genesis: Hash,
        found_chain: String,
        found_genesis: Hash,
    },
    #[error("the source's head {source_head} is below the checkpoint's height {checkpoint}")]
    SourceBehindCheckpoint { source_head: u64, checkpoint: u64 },
    #[error("block source: {0}")]
    Source(#[from] SourceError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("pinned genesis: {0}")]
    Genesis(#[from] GenesisError),
    #[error("replay state: {0}")]
    State(#[from] StateError),
    #[error("device history of {name} at height {height} disagrees with the state: {reason}")]
    History {
        name: DeviceName,
        height: u64,
        reason: String,
    },
    #[error("the signature-verifying thread panicked")]
    VerifierPanicked,
}

impl AuditError {
    pub(crate) fn divergence(
        height: u64,
        object: AuditObject,
        expected: impl fmt::Display,
        found: impl fmt::Display,
    ) -> Self {
        AuditError::Divergence {
            height,
            object,
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}

/// Audits the chain `source` serves against `opts.genesis`, from genesis or
/// from the checkpoint, up to the head the source reports.
pub fn run_audit(
    opts: &AuditOptions,
    mut source: impl BlockSource,
    progress: &mut dyn Progress,
) -> Result<AuditSummary, AuditError> {
    let info = source.open()?;
    check_chain(&opts.genesis, &info)?;
    let resume_from = match &opts.checkpoint {
        Some(cp) if cp.resume && cp.path.exists() => Some(load_checkpoint(&cp.path)?),
        _ => None,
    };
    let (replay, resumed_from) = match resume_from {
        Some(checkpoint) => {
            let height = checkpoint.header.height;
            if info.head.height < height {
                return Err(AuditError::SourceBehindCheckpoint {
                    source_head: info.head.height,
                    checkpoint: height,
                });
            }
            (
                Replay::from_checkpoint(&opts.genesis, checkpoint)?,
                Some(height),
            )
        }
        None => (Replay::from_genesis(&opts.genesis)?, None),
    };
    let replay = pipeline::run(opts, source, &info, replay, progress)?;
    if let Some(cp) = &opts.checkpoint {
        save_checkpoint(&cp.path, &replay.checkpoint()?)?;
    }
    replay.summary(resumed_from)
}

/// Replays the whole chain (every check of [`run_audit`]) and returns every
/// registration, rotation and revocation of `name`, each with the inclusion
/// proof of its transaction under a header whose certificate the replay
/// verified.
pub fn device_history(
    mut source: impl BlockSource,
    genesis: &Genesis,
    name: &DeviceName,
    progress: &mut dyn Progress,
) -> Result<Vec<HistoryEvent>, AuditError> {
    let info = source.open()?;
    check_chain(genesis, &info)?;
    let opts = AuditOptions::new(genesis.clone());
    let replay = Replay::from_genesis(genesis)?.tracking(name.clone());
    let replay = pipeline::run(&opts, source, &info, replay, progress)?;
    Ok(replay.into_history())
}

fn check_chain(genesis: &Genesis, info: &SourceInfo) -> Result<(), AuditError> {
    let expected_genesis = genesis.hash();
    if info.chain_id != genesis.chain_id || info.genesis_hash != expected_genesis {
        return Err(AuditError::WrongChain {
            expected_chain: genesis.chain_id.clone(),
            expected_genesis,
            found_chain: info.chain_id.clone(),
            found_genesis: info.genesis_hash,
        });
    }
    Ok(())
}
