//! `keyreg-node export`: the ledger as an export file for offline audit, in
//! the format of `keyreg_registry::export` (magic `KRLEDGER`, a canonical
//! `ExportHeader` naming the chain, genesis hash and head, one canonical
//! `CommittedBlock` per height, and a checksummed end marker), which
//! `keyreg audit --file` reads.

use std::io::BufWriter;
use std::path::Path;

use keyreg_registry::export::{ExportError, ExportHeader, ExportWriter};
use keyreg_registry::{Ledger, LedgerError};

use crate::node::Store;

#[derive(Debug, thiserror::Error)]
pub enum ExportFileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Format(#[from] ExportError),
    #[error("block {0} is missing below the head")]
    Missing(u64),
}

/// Writes every committed block of `ledger` to `path` (synced); returns the
/// height exported up to.
pub fn export(ledger: &Ledger<Store>, path: &Path) -> Result<u64, ExportFileError> {
    let io = |source| ExportFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let head = ledger.head();
    let header = ExportHeader {
        version: <ExportHeader as keyreg_consensus::codec::Canonical>::VERSION,
        chain_id: ledger.chain_id().to_string(),
        genesis_hash: ledger.genesis_hash(),
        head_height: head.height,
        head_hash: head.hash(),
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut writer = ExportWriter::new(BufWriter::new(file), header)?;
    for height in 1..=head.height {
        let block = ledger
            .committed_block(height)?
            .ok_or(ExportFileError::Missing(height))?;
        writer.write(&block)?;
    }
    let file = writer
        .finish()?
        .into_inner()
        .map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(head.height)
}
