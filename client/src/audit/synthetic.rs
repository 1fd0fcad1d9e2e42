//! Synthetic, fully signed and certified ledgers for the auditor's tests
//! and bench, built with the registry's testkit. Every key derives from a
//! public label: nothing here is for production.

use std::collections::{BTreeMap, VecDeque};

use keyreg_consensus::crypto::SigningKey;
use keyreg_registry::testkit::{commit_next, test_agreement_key, test_key, TestNet};
use keyreg_registry::{
    Authority, CommittedBlock, DeviceName, DeviceRegistration, Genesis, GovernanceAction, Ledger,
    LedgerError, MemLedgerStore, Metadata, NameError, Revocation, Rotation, Transaction, TxBody,
    TxError, ValidatorInfo,
};
use thiserror::Error;

use super::source::{MemSource, SourceError};

#[derive(Debug, Error)]
pub enum SyntheticError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("transaction {index} of block {height} was rejected: {error}")]
    Rejected {
        height: u64,
        index: usize,
        error: TxError,
    },
    #[error("device {0} was never registered here")]
    UnknownDevice(String),
}

/// A test consortium (4 validators; organisations `acme` and `globex`,
/// governance threshold 1) and the chain built on it so far.
pub struct ChainBuilder {
    pub net: TestNet,
    /// Every validator key that may sign: the genesis set's and later ones'.
    validator_keys: Vec<SigningKey>,
    ledger: Ledger<MemLedgerStore>,
    pub blocks: Vec<CommittedBlock>,
    key_versions: BTreeMap<DeviceName, u64>,
    governance_sequence: u64,
}

pub const SYNTHETIC_CHAIN_ID: &str = "keyreg-audit-synthetic";

fn device_key(name: &DeviceName, version: u64) -> SigningKey {
    test_key(&format!("device/{name}/{version}"))
}

impl ChainBuilder {
    pub fn new() -> Result<Self, SyntheticError> {
        let net = TestNet::new(SYNTHETIC_CHAIN_ID, 4, &["acme", "globex"], 1);
        let ledger = Ledger::open(MemLedgerStore::new(), &net.genesis)?;
        Ok(ChainBuilder {
            validator_keys: net.validator_keys.clone(),
            net,
            ledger,
            blocks: Vec::new(),
            key_versions: BTreeMap::new(),
            governance_sequence: 0,
        })
    }

    pub fn genesis(&self) -> &Genesis {
        &self.net.genesis
    }

    /// Serves the blocks built so far.
    pub fn source(&self) -> Result<MemSource, SourceError> {
        MemSource::new(&self.net.genesis, &self.blocks)
    }

    /// The current signing key of a device this builder registered.
    pub fn current_key(&self, name: &str) -> Result<SigningKey, SyntheticError> {
        let name = DeviceName::new(name)?;
        let version = self.version_of(&name)?;
        Ok(device_key(&name, version))
    }

    fn version_of(&self, name: &DeviceName) -> Result<u64, SyntheticError> {
        self.key_versions
            .get(name)
            .copied()
            .ok_or_else(|| SyntheticError::UnknownDevice(name.to_string()))
    }

    /// Registers `org/local`, signed by the org's admin.
    pub fn register(&mut self, name: &str) -> Result<Transaction, SyntheticError> {
        let name = DeviceName::new(name)?;
        let admin = self.net.admin(name.org().as_str()).clone();
        let registration = DeviceRegistration::new_signed(
            SYNTHETIC_CHAIN_ID,
            name.clone(),
            &device_key(&name, 0),
            test_agreement_key(&format!("agreement/{name}/0")),
            None,
            None,
            Metadata::new(),
        );
        self.key_versions.insert(name, 0);
        Ok(
            Transaction::new(SYNTHETIC_CHAIN_ID, TxBody::RegisterDevice(registration))
                .signed_by(&[&admin]),
        )
    }

    /// Rotates a device to its next key, signed by the current and new keys.
    pub fn rotate(&mut self, name: &str) -> Result<Transaction, SyntheticError> {
        let name = DeviceName::new(name)?;
        let version = self.version_of(&name)?;
        let (old, new) = (device_key(&name, version), device_key(&name, version + 1));
        let rotation = Rotation {
            name: name.clone(),
            expected_key_version: version,
            new_signing_key: new.public(),
            new_agreement_key: test_agreement_key(&format!("agreement/{name}/{}", version + 1)),
            next_key_commitment: None,
            authority: Authority::Device,
        };
        self.key_versions.insert(name, version + 1);
        Ok(
            Transaction::new(SYNTHETIC_CHAIN_ID, TxBody::RotateDevice(rotation))
                .signed_by(&[&old, &new]),
        )
    }

    /// Revokes a device, signed by its current key.
    pub fn revoke(&mut self, name: &str) -> Result<Transaction, SyntheticError> {
        let name = DeviceName::new(name)?;
        let key = device_key(&name, self.version_of(&name)?);
        let revocation = Revocation {
            name,
            reason: "decommissioned".into(),
            authority: Authority::Device,
        };
        Ok(
            Transaction::new(SYNTHETIC_CHAIN_ID, TxBody::RevokeDevice(revocation))
                .signed_by(&[&key]),
        )
    }

    /// Replaces the validator set (from the next block on) with equal-power
    /// validators holding `keys`; approved by acme's admin.
    pub fn set_validators(&mut self, keys: &[SigningKey]) -> Transaction {
        let mut validators: Vec<ValidatorInfo> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| ValidatorInfo::new(k.public(), 1, &format!("/memory/next/{i}")))
            .collect();
        validators.sort_by_key(|v| v.key);
        for k in keys {
            if !self.validator_keys.iter().any(|v| v.public() == k.public()) {
                self.validator_keys.push(k.clone());
            }
        }
        let body = TxBody::Governance {
            sequence: self.governance_sequence,
            action: GovernanceAction::SetValidators { validators },
        };
        self.governance_sequence += 1;
        Transaction::new(SYNTHETIC_CHAIN_ID, body).signed_by(&[self.net.admin("acme")])
    }

    /// Commits the next block of `txs`, certified by its epoch's validators;
    /// every transaction must apply.
    pub fn commit(&mut self, txs: Vec<Transaction>) -> Result<(), SyntheticError> {
        let (block, results) = commit_next(&mut self.ledger, &self.validator_keys, txs)?;
        if let Some((index, Err(error))) = results.into_iter().enumerate().find(|(_, r)| r.is_err())
        {
            return Err(SyntheticError::Rejected {
                height: block.block.header.height,
                index,
                error,
            });
        }
        self.blocks.push(block);
        Ok(())
    }
}

/// `blocks` blocks of `txs_per_block` transactions: 80% registrations, 10%
/// rotations and 10% revocations of devices from earlier blocks, and one
/// validator-set change halfway.
pub fn synthetic_ledger(
    blocks: usize,
    txs_per_block: usize,
) -> Result<ChainBuilder, SyntheticError> {
    let mut chain = ChainBuilder::new()?;
    let mut rotatable: VecDeque<String> = VecDeque::new();
    let mut revocable: VecDeque<String> = VecDeque::new();
    let mut registered = 0usize;
    for b in 0..blocks {
        let mut txs = Vec::with_capacity(txs_per_block + 1);
        let mut rotated = Vec::new();
        let mut fresh = Vec::new();
        for j in 0..txs_per_block {
            let tx = if let Some(name) = (j % 10 == 8).then(|| rotatable.pop_front()).flatten() {
                let tx = chain.rotate(&name)?;
                rotated.push(name);
                tx
            } else if let Some(name) = (j % 10 == 9).then(|| revocable.pop_front()).flatten() {
                chain.revoke(&name)?
            } else {
                let org = if registered.is_multiple_of(2) {
                    "acme"
                } else {
                    "globex"
                };
                let name = format!("{org}/d{registered}");
                registered += 1;
                let tx = chain.register(&name)?;
                fresh.push(name);
                tx
            };
            txs.push(tx);
        }
        if blocks >= 2 && b == blocks / 2 {
            let next: Vec<SigningKey> = (1..=4)
                .map(|i| test_key(&format!("validator/{i}")))
                .collect();
            txs.push(chain.set_validators(&next));
        }
        chain.commit(txs)?;
        // Devices registered or rotated in this block change again only later.
        for (i, name) in fresh.into_iter().enumerate() {
            if i.is_multiple_of(2) {
                rotatable.push_back(name);
            } else {
                revocable.push_back(name);
            }
        }
        rotatable.extend(rotated);
    }
    Ok(chain)
}
