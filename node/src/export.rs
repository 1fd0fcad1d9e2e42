//! Ledger export for offline audit.
//!
//! File format (all integers little-endian):
//!
//! ```text
//! magic    8 bytes  "KRLEDGER"
//! u32      length of the header, then the canonical ExportHeader
//! repeated for heights 1..=last_height:
//!   u32    length of the block, then the canonical CommittedBlock
//! ```
//!
//! The header names the chain and the genesis hash the blocks build on; an
//! auditor replays the blocks from the genesis file with that hash,
//! verifying every certificate along the chain of validator sets.

use std::io::{BufWriter, Write};
use std::path::Path;

use bincode::{Decode, Encode};
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::Hash;
use keyreg_registry::{Ledger, LedgerError};

use crate::node::Store;

pub const MAGIC: &[u8; 8] = b"KRLEDGER";

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ExportHeader {
    pub version: u8,
    pub chain_id: String,
    pub genesis_hash: Hash,
    /// Blocks 1..=last_height follow.
    pub last_height: u64,
}

impl Canonical for ExportHeader {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("block {0} is missing below the head")]
    Missing(u64),
}

fn write_frame(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    // Every canonical object is below 16 MiB (the codec's limit).
    let len = u32::try_from(bytes.len())
        .map_err(|_| std::io::Error::other("object larger than 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

/// Writes every committed block of `ledger` to `path`; returns the height
/// exported up to.
pub fn export(ledger: &Ledger<Store>, path: &Path) -> Result<u64, ExportError> {
    let last_height = ledger.height();
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    out.write_all(MAGIC)?;
    let header = ExportHeader {
        version: ExportHeader::VERSION,
        chain_id: ledger.chain_id().to_string(),
        genesis_hash: ledger.genesis_hash(),
        last_height,
    };
    write_frame(&mut out, &header.to_bytes())?;
    for height in 1..=last_height {
        let block = ledger
            .committed_block(height)?
            .ok_or(ExportError::Missing(height))?;
        write_frame(&mut out, &block.to_bytes())?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(last_height)
}
