//! Audit checkpoints: the replayed state after some block, so a later run
//! continues instead of starting from genesis.
//!
//! The file uses the registry's record framing (magic [`CHECKPOINT_MAGIC`]):
//! a canonical head record (chain, the last audited header, the set that
//! certifies the next block, the running counts, the number of leaves),
//! then one record per state leaf in key order. Nothing in it is trusted:
//! a resume rebuilds the state tree from the leaves and proceeds only if the
//! root equals the header's certified state root and the stored set is the
//! one that state and header hand over to; the next block then has to link
//! to the header and be certified by that set.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use bincode::{Decode, Encode};
use keyreg_consensus::codec::{decode, encode, Canonical, CodecError};
use keyreg_consensus::crypto::Hash;
use keyreg_consensus::validators::ValidatorSet;
use keyreg_registry::export::{FrameError, FramedReader, FramedWriter};
use keyreg_registry::tree::MAX_VALUE_LEN;
use keyreg_registry::{Header, StateError};
use thiserror::Error;

use super::summary::Counters;

pub const CHECKPOINT_MAGIC: [u8; 8] = *b"KRAUDITC";
const CHECKPOINT_FORMAT_VERSION: u8 = 1;
/// The head record (a header, a set of at most 256 validators, counters
/// with a bounded list) and every leaf record fit well within this.
const MAX_CHECKPOINT_RECORD_BYTES: usize = 1 << 20;
const _: () = assert!(MAX_VALUE_LEN + 1024 <= MAX_CHECKPOINT_RECORD_BYTES);

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
struct CheckpointHead {
    version: u8,
    chain_id: String,
    genesis_hash: Hash,
    header: Header,
    validator_set: ValidatorSet,
    counters: Counters,
    leaf_count: u64,
}

impl Canonical for CheckpointHead {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

/// The replay's state after block `header.height`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub chain_id: String,
    pub genesis_hash: Hash,
    /// The last audited header.
    pub header: Header,
    /// The set that certifies block `header.height + 1`.
    pub validator_set: ValidatorSet,
    pub counters: Counters,
    /// Every state leaf (tree key, record bytes), sorted by key.
    pub leaves: Vec<(Hash, Vec<u8>)>,
}

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("record does not decode: {0}")]
    Decode(#[from] CodecError),
    #[error("the checkpoint has no head record")]
    MissingHead,
    #[error("the head record announces {claimed} leaves, the file holds {found}")]
    LeafCount { claimed: u64, found: u64 },
    #[error(
        "the checkpoint is for chain {chain_id:?} (genesis {genesis_hash}), not the pinned one"
    )]
    WrongChain {
        chain_id: String,
        genesis_hash: Hash,
    },
    #[error("leaf {index} is not above the one before it")]
    UnsortedLeaves { index: usize },
    #[error(
        "the leaves rebuild state root {rebuilt}, but header {height} certifies {certified}: \
         the checkpoint was altered"
    )]
    StateRoot {
        height: u64,
        certified: Hash,
        rebuilt: Hash,
    },
    #[error("the validator set does not match the state and header {height}")]
    ValidatorSet { height: u64 },
    #[error("the counters do not match the validator epoch at height {height}")]
    Counters { height: u64 },
    #[error("rebuilding the state: {0}")]
    State(#[from] StateError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `cp` to `path` atomically: a temporary file in the same directory,
/// synced, then renamed over `path`.
pub fn save_checkpoint(path: &Path, cp: &Checkpoint) -> Result<(), CheckpointError> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let file = File::create(&tmp).map_err(io_error(&tmp))?;
    let mut frames = FramedWriter::new(
        BufWriter::new(file),
        &CHECKPOINT_MAGIC,
        CHECKPOINT_FORMAT_VERSION,
        MAX_CHECKPOINT_RECORD_BYTES,
    )?;
    let head = CheckpointHead {
        version: CheckpointHead::VERSION,
        chain_id: cp.chain_id.clone(),
        genesis_hash: cp.genesis_hash,
        header: cp.header.clone(),
        validator_set: cp.validator_set.clone(),
        counters: cp.counters.clone(),
        leaf_count: cp.leaves.len() as u64,
    };
    frames.record(&head.to_bytes())?;
    for leaf in &cp.leaves {
        frames.record(&encode(leaf))?;
    }
    let file = frames
        .finish()?
        .into_inner()
        .map_err(|e| CheckpointError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
    file.sync_all().map_err(io_error(&tmp))?;
    fs::rename(&tmp, path).map_err(io_error(path))?;
    // Make the rename itself durable.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(dir))?;
    }
    Ok(())
}

/// Reads a checkpoint (its contents are checked when a replay resumes from it).
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let file = File::open(path).map_err(io_error(path))?;
    let mut frames = FramedReader::open(
        BufReader::new(file),
        &CHECKPOINT_MAGIC,
        "keyreg audit checkpoint",
        CHECKPOINT_FORMAT_VERSION,
        MAX_CHECKPOINT_RECORD_BYTES,
    )?;
    let head_bytes = frames.next_record()?.ok_or(CheckpointError::MissingHead)?;
    let head = CheckpointHead::from_bytes(&head_bytes)?;
    let mut leaves = Vec::new();
    while let Some(record) = frames.next_record()? {
        if leaves.len() as u64 >= head.leaf_count {
            return Err(CheckpointError::LeafCount {
                claimed: head.leaf_count,
                found: leaves.len() as u64 + 1,
            });
        }
        leaves.push(decode::<(Hash, Vec<u8>)>(&record)?);
    }
    if leaves.len() as u64 != head.leaf_count {
        return Err(CheckpointError::LeafCount {
            claimed: head.leaf_count,
            found: leaves.len() as u64,
        });
    }
    Ok(Checkpoint {
        chain_id: head.chain_id,
        genesis_hash: head.genesis_hash,
        header: head.header,
        validator_set: head.validator_set,
        counters: head.counters,
        leaves,
    })
}
