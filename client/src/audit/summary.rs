//! What an audit found: counts over the whole chain (cumulative across
//! checkpoint resumes) and the state at the head.

use std::fmt;

use bincode::{Decode, Encode};
use keyreg_consensus::crypto::Hash;
use keyreg_registry::TxBody;
use serde::{Deserialize, Serialize};

/// Most recent validator-set changes a summary (and checkpoint) lists.
pub const MAX_LISTED_SET_CHANGES: usize = 64;

/// Transactions included in blocks, by kind (rejected ones too).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct TxCounts {
    pub total: u64,
    pub register_device: u64,
    pub register_lot: u64,
    pub rotate_device: u64,
    pub revoke_device: u64,
    pub governance: u64,
    /// Included but rejected by execution (they changed nothing).
    pub rejected: u64,
}

impl TxCounts {
    pub(crate) fn count(&mut self, body: &TxBody, rejected: bool) {
        self.total += 1;
        self.rejected += u64::from(rejected);
        let kind = match body {
            TxBody::RegisterDevice(_) => &mut self.register_device,
            TxBody::RegisterLot { .. } => &mut self.register_lot,
            TxBody::RotateDevice(_) => &mut self.rotate_device,
            TxBody::RevokeDevice(_) => &mut self.revoke_device,
            TxBody::Governance { .. } => &mut self.governance,
        };
        *kind += 1;
    }
}

/// A block that handed over to a new validator set.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct ValidatorSetChange {
    pub height: u64,
    /// Epoch of the new set (certifies `height + 1` on).
    pub epoch: u64,
    pub validators: u32,
    pub set_hash: Hash,
}

/// The running totals a replay keeps (and a checkpoint carries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Counters {
    pub transactions: TxCounts,
    pub validator_set_changes: u64,
    /// The last [`MAX_LISTED_SET_CHANGES`] changes, oldest first.
    pub recent_set_changes: Vec<ValidatorSetChange>,
}

impl Counters {
    pub(crate) fn record_set_change(&mut self, change: ValidatorSetChange) {
        self.validator_set_changes += 1;
        if self.recent_set_changes.len() == MAX_LISTED_SET_CHANGES {
            self.recent_set_changes.remove(0);
        }
        self.recent_set_changes.push(change);
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgCounts {
    pub active: u64,
    pub removed: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCounts {
    pub active: u64,
    pub revoked: u64,
}

/// The result of a clean audit (`--json` prints it as JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSummary {
    pub chain_id: String,
    pub genesis_hash: Hash,
    pub head_height: u64,
    pub head_hash: Hash,
    pub state_root: Hash,
    /// The checkpoint height this run continued from (counts still cover
    /// the whole chain).
    pub resumed_from: Option<u64>,
    /// Blocks after genesis (= `head_height`).
    pub blocks: u64,
    pub transactions: TxCounts,
    pub organisations: OrgCounts,
    pub devices: DeviceCounts,
    /// The epoch and size of the set that certifies the next block.
    pub epoch: u64,
    pub validators: u32,
    pub validator_set_changes: u64,
    pub recent_validator_set_changes: Vec<ValidatorSetChange>,
}

impl fmt::Display for AuditSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.transactions;
        writeln!(
            f,
            "audit OK: chain {} (genesis {})",
            self.chain_id, self.genesis_hash
        )?;
        writeln!(
            f,
            "  head           height {}, hash {}",
            self.head_height, self.head_hash
        )?;
        writeln!(f, "  state root     {}", self.state_root)?;
        if let Some(h) = self.resumed_from {
            writeln!(f, "  resumed from   checkpoint at height {h}")?;
        }
        writeln!(f, "  blocks         {}", self.blocks)?;
        writeln!(
            f,
            "  transactions   {} (register {}, lots {}, rotate {}, revoke {}, governance {}); {} rejected",
            t.total, t.register_device, t.register_lot, t.rotate_device, t.revoke_device,
            t.governance, t.rejected
        )?;
        writeln!(
            f,
            "  organisations  {} active, {} removed",
            self.organisations.active, self.organisations.removed
        )?;
        writeln!(
            f,
            "  devices        {} active, {} revoked",
            self.devices.active, self.devices.revoked
        )?;
        writeln!(
            f,
            "  validators     {} in epoch {}; {} validator-set change(s)",
            self.validators, self.epoch, self.validator_set_changes
        )?;
        for c in &self.recent_validator_set_changes {
            writeln!(
                f,
                "    at height {}: epoch {} with {} validators (set {})",
                c.height, c.epoch, c.validators, c.set_hash
            )?;
        }
        write!(
            f,
            "  equivocation   none recorded (the ledger format keeps no evidence)"
        )
    }
}
