//! One device's history, collected while the replay checks every block.

use keyreg_consensus::crypto::{Hash, PublicKey};
use keyreg_registry::{
    AgreementKey, Authority, Block, DeviceName, DeviceRecord, Header, TxBody, TxInclusionProof,
    TxResult,
};
use serde::Serialize;

use super::AuditError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    Registered,
    Rotated,
    Revoked,
}

impl std::fmt::Display for HistoryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HistoryKind::Registered => "registered",
            HistoryKind::Rotated => "rotated",
            HistoryKind::Revoked => "revoked",
        })
    }
}

/// A change applied to a device, with its proof: `inclusion` proves
/// `tx_hash` is transaction `index` under `header.tx_root`, and the replay
/// verified `header`'s commit certificate (and everything before it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryEvent {
    pub height: u64,
    pub index: u32,
    pub tx_hash: Hash,
    pub kind: HistoryKind,
    /// Who authorised a rotation or revocation (registrations: an admin).
    pub authority: Option<Authority>,
    /// The device's key version and keys after the event.
    pub key_version: u64,
    pub signing_key: PublicKey,
    pub agreement_key: AgreementKey,
    pub revoked: bool,
    pub header: Header,
    pub inclusion: TxInclusionProof,
}

impl HistoryEvent {
    /// Re-checks the inclusion proof against the header's tx root.
    pub fn inclusion_verifies(&self) -> bool {
        self.inclusion.verify(&self.header.tx_root, &self.tx_hash)
    }
}

pub(crate) struct HistoryTracker {
    name: DeviceName,
    events: Vec<HistoryEvent>,
}

impl HistoryTracker {
    pub fn new(name: DeviceName) -> Self {
        HistoryTracker {
            name,
            events: Vec::new(),
        }
    }

    pub fn name(&self) -> &DeviceName {
        &self.name
    }

    pub fn into_events(self) -> Vec<HistoryEvent> {
        self.events
    }

    fn error(&self, height: u64, reason: impl Into<String>) -> AuditError {
        AuditError::History {
            name: self.name.clone(),
            height,
            reason: reason.into(),
        }
    }

    /// Records the applied transactions of `block` that change the device;
    /// returns whether there was any.
    pub fn observe(
        &mut self,
        block: &Block,
        tx_hashes: &[Hash],
        results: &[TxResult],
    ) -> Result<bool, AuditError> {
        let height = block.header.height;
        let mut touched = false;
        for (index, (tx, result)) in block.transactions.iter().zip(results).enumerate() {
            if result.is_err() {
                continue;
            }
            let previous = self.events.last();
            let (kind, authority, key_version, signing_key, agreement_key) = match &tx.body {
                TxBody::RegisterDevice(reg) if reg.name == self.name => (
                    HistoryKind::Registered,
                    None,
                    0,
                    reg.signing_key,
                    reg.agreement_key,
                ),
                TxBody::RegisterLot { devices, .. } => {
                    match devices.iter().find(|reg| reg.name == self.name) {
                        Some(reg) => (
                            HistoryKind::Registered,
                            None,
                            0,
                            reg.signing_key,
                            reg.agreement_key,
                        ),
                        None => continue,
                    }
                }
                TxBody::RotateDevice(rot) if rot.name == self.name => (
                    HistoryKind::Rotated,
                    Some(rot.authority),
                    rot.expected_key_version + 1,
                    rot.new_signing_key,
                    rot.new_agreement_key,
                ),
                TxBody::RevokeDevice(rev) if rev.name == self.name => {
                    let Some(previous) = previous else {
                        return Err(self.error(height, "revoked before any registration"));
                    };
                    (
                        HistoryKind::Revoked,
                        Some(rev.authority),
                        previous.key_version,
                        previous.signing_key,
                        previous.agreement_key,
                    )
                }
                _ => continue,
            };
            let tx_hash = tx_hashes
                .get(index)
                .copied()
                .ok_or_else(|| self.error(height, "transaction hash missing"))?;
            let inclusion = TxInclusionProof::build(tx_hashes, index)
                .filter(|p| p.verify(&block.header.tx_root, &tx_hash))
                .ok_or_else(|| self.error(height, "inclusion proof does not verify"))?;
            self.events.push(HistoryEvent {
                height,
                index: index as u32,
                tx_hash,
                kind,
                authority,
                key_version,
                signing_key,
                agreement_key,
                revoked: kind == HistoryKind::Revoked,
                header: block.header.clone(),
                inclusion,
            });
            touched = true;
        }
        Ok(touched)
    }

    /// The last event must describe the device record the block left.
    pub fn check_state(
        &self,
        height: u64,
        record: Option<&DeviceRecord>,
    ) -> Result<(), AuditError> {
        let (Some(last), Some(record)) = (self.events.last(), record) else {
            return Err(self.error(height, "an event was recorded but the device has no record"));
        };
        let agrees = last.signing_key == record.signing_key
            && last.agreement_key == record.agreement_key
            && last.key_version == record.key_version
            && last.revoked != record.is_active();
        if !agrees {
            return Err(self.error(height, format!("recorded {last:?}, state holds {record:?}")));
        }
        Ok(())
    }
}
