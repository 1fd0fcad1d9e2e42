//! The epoch index: for each epoch, its validator set and the height of its
//! handover block (the last block of the previous epoch, whose header's
//! `next_validator_set_hash` names the new set and which the old set
//! certified). Serves `GET /v1/epochs/{e}`, so light clients and auditors
//! can follow the chain of sets from genesis.
//!
//! Entries live in the store's node metadata and are written right after
//! the handover block commits. A crash between the two writes leaves the
//! entry missing; [`repair`] rebuilds missing entries from the headers at
//! start-up.

use bincode::{Decode, Encode};
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::ValidatorSet;
use keyreg_registry::{
    CommittedBlock, Genesis, Ledger, LedgerError, LedgerStore, RecordReader, StoreError,
};

use crate::node::{NodeError, Store};

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
struct EpochEntry {
    version: u8,
    /// Height of the handover block; 0 for epoch 0 (set from genesis).
    handover_height: u64,
    validator_set: ValidatorSet,
}

impl Canonical for EpochEntry {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

fn key(epoch: u64) -> Vec<u8> {
    let mut k = b"epoch/".to_vec();
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

fn load(ledger: &Ledger<Store>, epoch: u64) -> Result<Option<EpochEntry>, StoreError> {
    match ledger.store().get_meta(&key(epoch))? {
        None => Ok(None),
        Some(bytes) => {
            EpochEntry::from_bytes(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Corrupt {
                    what: "epoch index entry",
                    source,
                })
        }
    }
}

/// Records that `set` (epoch `epoch`) starts after block `handover_height`.
pub fn record(
    ledger: &Ledger<Store>,
    epoch: u64,
    handover_height: u64,
    set: &ValidatorSet,
) -> Result<(), NodeError> {
    let entry = EpochEntry {
        version: EpochEntry::VERSION,
        handover_height,
        validator_set: set.clone(),
    };
    ledger.store().put_meta(&key(epoch), &entry.to_bytes())?;
    Ok(())
}

/// Epoch `epoch`'s validator set and, for epochs after 0, its handover block.
pub fn lookup(
    ledger: &Ledger<Store>,
    epoch: u64,
) -> Result<Option<(ValidatorSet, Option<CommittedBlock>)>, LedgerError> {
    let Some(entry) = load(ledger, epoch)? else {
        return Ok(None);
    };
    if epoch == 0 {
        return Ok(Some((entry.validator_set, None)));
    }
    let handover = ledger
        .committed_block(entry.handover_height)?
        .ok_or(LedgerError::NotFound {
            what: "handover block",
            height: entry.handover_height,
        })?;
    Ok(Some((entry.validator_set, Some(handover))))
}

/// Writes the entries a crash may have left out: epoch 0 from `genesis`
/// (the ledger was opened from it; its tree version 0 may be pruned in a
/// store written by other means, such as `scale-bench`), and any epoch up
/// to the current one from the headers (scanning back from the head; a
/// missing entry is always for the newest epochs).
pub fn repair(ledger: &Ledger<Store>, genesis: &Genesis) -> Result<(), NodeError> {
    if load(ledger, 0)?.is_none() {
        let genesis_set = genesis.validator_set().map_err(LedgerError::from)?;
        record(ledger, 0, 0, &genesis_set)?;
    }
    let current = ledger.validator_set().epoch;
    let mut height = ledger.height();
    for epoch in (1..=current).rev() {
        if load(ledger, epoch)?.is_some() {
            break;
        }
        // The handover of `epoch` is the last block of `epoch - 1`.
        let handover = loop {
            let header = ledger.header(height)?.ok_or(LedgerError::NotFound {
                what: "header",
                height,
            })?;
            if header.epoch + 1 == epoch && header.changes_validators() {
                break height;
            }
            if height == 0 || header.epoch + 1 < epoch {
                return Err(NodeError::Consensus(format!(
                    "no handover block for epoch {epoch} in the ledger"
                )));
            }
            height -= 1;
        };
        let set = ledger
            .state_at(handover)?
            .validator_set()
            .map_err(LedgerError::from)?;
        record(ledger, epoch, handover, &set)?;
        tracing::info!(epoch, handover, "epoch index entry rebuilt");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyreg_registry::testkit::{commit_next, TestNet};

    #[test]
    fn repair_takes_epoch_0_from_the_genesis_when_version_0_is_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let net = TestNet::new("keyreg-test", 4, &["acme"], 1);
        let mut ledger = Ledger::open(Store::open(dir.path()).unwrap(), &net.genesis).unwrap();
        for _ in 0..3 {
            commit_next(&mut ledger, &net.validator_keys, Vec::new()).unwrap();
        }
        ledger.prune(1).unwrap();
        assert!(matches!(
            ledger.state_at(0),
            Err(LedgerError::Pruned { .. })
        ));
        // A store written without the node has no epoch index.
        assert_eq!(lookup(&ledger, 0).unwrap(), None);
        repair(&ledger, &net.genesis).unwrap();
        let (set, handover) = lookup(&ledger, 0).unwrap().unwrap();
        assert_eq!(set, net.genesis.validator_set().unwrap());
        assert!(handover.is_none());
    }
}
