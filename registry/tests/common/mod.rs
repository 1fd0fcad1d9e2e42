//! Shared fixtures: a 4-validator, 3-organisation test chain (threshold 2).
#![allow(dead_code)]

use keyreg_consensus::crypto::{Domain, Hash, SigningKey};
use keyreg_registry::testkit::{commit_next, test_agreement_key, test_key, TestNet};
use keyreg_registry::{
    Authority, DeviceName, DeviceRegistration, GovernanceAction, Ledger, LedgerStore,
    MemLedgerStore, Metadata, Revocation, Rotation, Transaction, TxBody, TxResult,
};

pub const CHAIN: &str = "keyreg-test";

pub struct Env<S: LedgerStore = MemLedgerStore> {
    pub net: TestNet,
    pub ledger: Ledger<S>,
}

pub fn net() -> TestNet {
    TestNet::new(CHAIN, 4, &["acme", "globex", "initech"], 2)
}

pub fn env() -> Env {
    let net = net();
    let ledger = Ledger::open(MemLedgerStore::new(), &net.genesis).unwrap();
    Env { net, ledger }
}

impl<S: LedgerStore> Env<S> {
    /// Commits one block of `txs` signed by every genesis validator.
    pub fn run(&mut self, txs: Vec<Transaction>) -> Vec<TxResult> {
        commit_next(&mut self.ledger, &self.net.validator_keys, txs)
            .unwrap()
            .1
    }

    /// Commits a block holding only `tx` and returns its result.
    pub fn run_one(&mut self, tx: Transaction) -> TxResult {
        self.run(vec![tx]).remove(0)
    }

    pub fn root(&self) -> Hash {
        self.ledger.head().state_root
    }

    pub fn admin(&self, org: &str) -> SigningKey {
        self.net.admin(org).clone()
    }
}

pub fn name(s: &str) -> DeviceName {
    DeviceName::new(s).unwrap()
}

pub fn device_key(label: &str) -> SigningKey {
    test_key(&format!("device/{label}"))
}

pub fn commitment_to(key: &SigningKey) -> Hash {
    key.public().digest(Domain::DeviceKey)
}

pub fn registration(
    device: &str,
    key: &SigningKey,
    commitment: Option<Hash>,
) -> DeviceRegistration {
    DeviceRegistration::new_signed(
        CHAIN,
        name(device),
        key,
        test_agreement_key(device),
        commitment,
        None,
        Metadata::new(),
    )
}

pub fn register(
    admin: &SigningKey,
    device: &str,
    key: &SigningKey,
    commitment: Option<Hash>,
) -> Transaction {
    Transaction::new(
        CHAIN,
        TxBody::RegisterDevice(registration(device, key, commitment)),
    )
    .signed_by(&[admin])
}

/// `register` of device `acme/d{i}` with signing key `device_key("d{i}")`.
pub fn register_acme(admin: &SigningKey, i: usize) -> Transaction {
    register(
        admin,
        &format!("acme/d{i}"),
        &device_key(&format!("d{i}")),
        None,
    )
}

pub fn rotation(
    device: &str,
    expected_key_version: u64,
    new_key: &SigningKey,
    next_key_commitment: Option<Hash>,
    authority: Authority,
) -> TxBody {
    TxBody::RotateDevice(Rotation {
        name: name(device),
        expected_key_version,
        new_signing_key: new_key.public(),
        new_agreement_key: test_agreement_key(&format!("{device}/{expected_key_version}")),
        next_key_commitment,
        authority,
    })
}

pub fn revocation(device: &str, authority: Authority) -> TxBody {
    TxBody::RevokeDevice(Revocation {
        name: name(device),
        reason: "decommissioned".into(),
        authority,
    })
}

pub fn governance(sequence: u64, action: GovernanceAction, signers: &[&SigningKey]) -> Transaction {
    Transaction::new(CHAIN, TxBody::Governance { sequence, action }).signed_by(signers)
}
