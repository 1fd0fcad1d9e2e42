//! Transactions, their canonical encoding and their stateless checks.
//!
//! A transaction is `{ version, chain_id, body, signatures }`. Every signature
//! is over [`Transaction::sign_bytes`] (version, chain id and body: everything
//! but the signatures) under [`Domain::Transaction`], so a signature is bound
//! to one chain and one exact action. Device registrations additionally carry
//! a proof of possession by the device's own key (see
//! [`proof_of_possession_message`]).
//!
//! Replay protection is by state preconditions (see `docs/registry.md`): every
//! body only applies to the exact state it names (a free name, the current key
//! version, the current governance sequence), and that state changes when it
//! applies, so no transaction can apply twice.

use bincode::{Decode, Encode};
use keyreg_consensus::codec::{encode, Canonical};
use keyreg_consensus::crypto::{
    hash, BatchVerifier, CryptoError, Domain, Hash, PublicKey, Signature, SigningKey,
};
use keyreg_consensus::validators::MAX_VALIDATORS;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::names::{DeviceName, OrgId};
use crate::records::{
    validator_set_of, AgreementKey, Metadata, ValidatorInfo, MAX_ADDRESS_LEN, MAX_ADMINS,
    MAX_METADATA_ENTRIES, MAX_METADATA_KEY_LEN, MAX_METADATA_VALUE_LEN, MAX_ORGS, MAX_REASON_LEN,
};

/// Largest encoded transaction.
pub const MAX_TX_BYTES: usize = 256 * 1024;
/// Most devices in one [`TxBody::RegisterLot`].
pub const MAX_LOT_SIZE: usize = 1000;
/// Most signatures on one transaction (a governance action signed by every org).
pub const MAX_TX_SIGNATURES: usize = MAX_ORGS;

/// A signature by `signer` over the transaction's sign bytes.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct TxSignature {
    pub signer: PublicKey,
    pub signature: Signature,
}

/// Who authorises a rotation or revocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub enum Authority {
    /// The device's current signing key.
    Device,
    /// An admin of the device's organisation (recovery).
    Admin,
}

/// One device to register. `proof_of_possession` is the device signing key's
/// signature over [`proof_of_possession_message`].
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct DeviceRegistration {
    pub name: DeviceName,
    pub signing_key: PublicKey,
    pub agreement_key: AgreementKey,
    pub next_key_commitment: Option<Hash>,
    pub expires_at_ms: Option<u64>,
    pub metadata: Metadata,
    pub proof_of_possession: Signature,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Rotation {
    pub name: DeviceName,
    /// The key version being replaced; the rotation applies only to it.
    pub expected_key_version: u64,
    pub new_signing_key: PublicKey,
    pub new_agreement_key: AgreementKey,
    /// Commitment to the key after the new one (fresh; never the new key's).
    pub next_key_commitment: Option<Hash>,
    pub authority: Authority,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Revocation {
    pub name: DeviceName,
    pub reason: String,
    pub authority: Authority,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub enum GovernanceAction {
    AddOrg {
        org: OrgId,
        admins: Vec<PublicKey>,
    },
    /// Only when the org has no active devices; the id is never reused.
    RemoveOrg {
        org: OrgId,
    },
    SetOrgAdmins {
        org: OrgId,
        admins: Vec<PublicKey>,
    },
    /// Replaces the validator set from the next height on (epoch + 1).
    SetValidators {
        validators: Vec<ValidatorInfo>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub enum TxBody {
    /// Signed by one admin of the device's org.
    RegisterDevice(DeviceRegistration),
    /// Signed by one admin of `org`; all-or-nothing.
    RegisterLot {
        org: OrgId,
        devices: Vec<DeviceRegistration>,
    },
    /// Signed by the authority's key and by the new signing key.
    RotateDevice(Rotation),
    /// Signed by the authority's key.
    RevokeDevice(Revocation),
    /// Signed by admins of at least `threshold` distinct active orgs.
    Governance {
        sequence: u64,
        action: GovernanceAction,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Transaction {
    pub version: u8,
    pub chain_id: String,
    pub body: TxBody,
    /// Sorted by signer, distinct.
    pub signatures: Vec<TxSignature>,
}

impl Canonical for Transaction {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

/// A transaction with its id and the size of its canonical encoding,
/// computed once, where it was decoded or built: `hash` is
/// [`Transaction::hash`] of `tx` and `size` the length of its canonical
/// bytes. The node's mempool holds these, and a proposal is built from them
/// without encoding or hashing again ([`Ledger::propose_hashed`]).
///
/// [`Ledger::propose_hashed`]: crate::Ledger::propose_hashed
#[derive(Clone, Debug)]
pub struct HashedTx {
    pub tx: Transaction,
    pub hash: Hash,
    pub size: usize,
}

impl HashedTx {
    pub fn new(tx: Transaction) -> Self {
        let bytes = tx.to_bytes();
        Self::from_canonical(tx, &bytes)
    }

    /// `tx` given the bytes [`from_bytes`](Canonical::from_bytes) decoded it
    /// from (which it accepts only in the canonical encoding).
    pub fn from_canonical(tx: Transaction, bytes: &[u8]) -> Self {
        HashedTx {
            hash: Transaction::id_of_canonical(bytes),
            size: bytes.len(),
            tx,
        }
    }
}

/// Which signature failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub enum SignatureRef {
    /// `signatures[i]` of the transaction.
    Signer(u32),
    /// The proof of possession of the i-th registered device (0 for
    /// `RegisterDevice`).
    ProofOfPossession(u32),
}

/// The role a required signer plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub enum SignerRole {
    Admin,
    Device,
    NewKey,
    Approver,
}

/// A size limit that was exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub enum SizeLimit {
    Transaction,
    Lot,
    Signatures,
    MetadataEntries,
    MetadataKey,
    MetadataValue,
    Reason,
    Admins,
    Validators,
    Address,
    Orgs,
}

/// Why a transaction was rejected. Stored in the transaction index, so it
/// is encodable.
#[derive(Debug, Error, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub enum TxError {
    #[error("malformed transaction: {0}")]
    Malformed(String),
    #[error("unsupported transaction version {0}")]
    UnsupportedVersion(u8),
    #[error("transaction is for chain {found:?}, this is {expected:?}")]
    WrongChain { expected: String, found: String },
    #[error("{what:?} size {size} exceeds the limit {max}")]
    TooLarge {
        what: SizeLimit,
        size: u64,
        max: u64,
    },
    #[error("unknown organisation {0}")]
    UnknownOrg(OrgId),
    #[error("organisation {0} was removed")]
    OrgRemoved(OrgId),
    #[error("organisation {0} already exists or existed")]
    OrgExists(OrgId),
    #[error("organisation {org} still has {count} active devices")]
    OrgHasActiveDevices { org: OrgId, count: u64 },
    #[error("device {name} does not belong to organisation {org}")]
    WrongOrg { name: DeviceName, org: OrgId },
    #[error("unknown device {0}")]
    UnknownDevice(DeviceName),
    #[error("device {0} is already registered")]
    AlreadyRegistered(DeviceName),
    #[error("device {0} is revoked; the name can never be used again")]
    NameRevoked(DeviceName),
    #[error("device {0} appears twice in the lot")]
    DuplicateName(DeviceName),
    #[error("bad signature: {which:?}")]
    BadSignature { which: SignatureRef },
    #[error("expected {expected} signatures, found {found}")]
    SignatureCount { expected: u32, found: u32 },
    #[error("the required {role:?} signature is missing")]
    MissingSignature { role: SignerRole },
    #[error("not authorised: no valid {role:?} signature")]
    NotAuthorised { role: SignerRole },
    #[error("the new key does not match the device's pre-rotation commitment")]
    PreRotationMismatch,
    #[error("rotation expects key version {found}, the device is at {expected}")]
    KeyVersionMismatch { expected: u64, found: u64 },
    #[error("the new signing key equals the current one")]
    SameKey,
    #[error("the commitment to the next key commits to the new key itself")]
    CommitmentReuse,
    #[error("the X25519 agreement key is all zeros")]
    DegenerateAgreementKey,
    #[error("replay: this transaction's effect was already applied")]
    Replay,
    #[error("expired")]
    Expired,
    #[error("governance sequence {found}, the next is {expected}")]
    GovernanceSequence { expected: u64, found: u64 },
    #[error("{approvals} organisations approved; {threshold} needed")]
    ThresholdNotReached { approvals: u32, threshold: u32 },
    #[error("{orgs} organisations would remain, below the threshold {threshold}")]
    ThresholdUnreachable { orgs: u32, threshold: u32 },
    #[error("admin key {key} already belongs to organisation {org}")]
    AdminKeyInUse { key: PublicKey, org: OrgId },
    #[error("invalid validator set: {0}")]
    InvalidValidatorSet(String),
}

fn too_large(what: SizeLimit, size: usize, max: usize) -> TxError {
    TxError::TooLarge {
        what,
        size: size as u64,
        max: max as u64,
    }
}

fn check_len(what: SizeLimit, len: usize, max: usize) -> Result<(), TxError> {
    if len > max {
        return Err(too_large(what, len, max));
    }
    Ok(())
}

/// The bytes a device signs (under [`Domain::ProofOfPossession`]) to prove it
/// holds the signing key being registered for `name` on `chain_id`.
pub fn proof_of_possession_message(
    chain_id: &str,
    name: &DeviceName,
    signing_key: &PublicKey,
    agreement_key: &AgreementKey,
    next_key_commitment: &Option<Hash>,
) -> Vec<u8> {
    encode(&(
        chain_id,
        name,
        signing_key,
        agreement_key,
        next_key_commitment,
    ))
}

impl DeviceRegistration {
    /// A registration signed (proof of possession) by `device_key`.
    pub fn new_signed(
        chain_id: &str,
        name: DeviceName,
        device_key: &SigningKey,
        agreement_key: AgreementKey,
        next_key_commitment: Option<Hash>,
        expires_at_ms: Option<u64>,
        metadata: Metadata,
    ) -> Self {
        let signing_key = device_key.public();
        let msg = proof_of_possession_message(
            chain_id,
            &name,
            &signing_key,
            &agreement_key,
            &next_key_commitment,
        );
        DeviceRegistration {
            proof_of_possession: device_key.sign(Domain::ProofOfPossession, &msg),
            name,
            signing_key,
            agreement_key,
            next_key_commitment,
            expires_at_ms,
            metadata,
        }
    }

    fn check_structure(&self) -> Result<(), TxError> {
        if self.agreement_key.is_degenerate() {
            return Err(TxError::DegenerateAgreementKey);
        }
        check_metadata(&self.metadata)
    }

    fn queue_proof_of_possession(&self, chain_id: &str, batch: &mut BatchVerifier) {
        let msg = proof_of_possession_message(
            chain_id,
            &self.name,
            &self.signing_key,
            &self.agreement_key,
            &self.next_key_commitment,
        );
        batch.queue(
            self.signing_key,
            Domain::ProofOfPossession,
            &msg,
            self.proof_of_possession,
        );
    }
}

/// Checks the metadata bounds.
pub fn check_metadata(metadata: &Metadata) -> Result<(), TxError> {
    check_len(
        SizeLimit::MetadataEntries,
        metadata.len(),
        MAX_METADATA_ENTRIES,
    )?;
    for (k, v) in metadata {
        if k.is_empty() {
            return Err(TxError::Malformed("empty metadata key".into()));
        }
        check_len(SizeLimit::MetadataKey, k.len(), MAX_METADATA_KEY_LEN)?;
        check_len(SizeLimit::MetadataValue, v.len(), MAX_METADATA_VALUE_LEN)?;
    }
    Ok(())
}

/// Checks an admin key list: 1..=MAX_ADMINS keys, sorted, distinct.
pub fn check_admin_list(admins: &[PublicKey]) -> Result<(), TxError> {
    if admins.is_empty() {
        return Err(TxError::Malformed(
            "an organisation needs an admin key".into(),
        ));
    }
    check_len(SizeLimit::Admins, admins.len(), MAX_ADMINS)?;
    if !admins.is_sorted_by(|a, b| a < b) {
        return Err(TxError::Malformed(
            "admin keys must be sorted and distinct".into(),
        ));
    }
    Ok(())
}

/// Checks a validator list: a valid consensus set, sorted by key, bounded addresses.
pub fn check_validator_list(validators: &[ValidatorInfo]) -> Result<(), TxError> {
    check_len(SizeLimit::Validators, validators.len(), MAX_VALIDATORS)?;
    for v in validators {
        check_len(SizeLimit::Address, v.address.len(), MAX_ADDRESS_LEN)?;
    }
    if !validators.is_sorted_by(|a, b| a.key < b.key) {
        return Err(TxError::InvalidValidatorSet(
            "validators must be sorted by key and distinct".into(),
        ));
    }
    validator_set_of(0, validators)
        .map(|_| ())
        .map_err(|e| TxError::InvalidValidatorSet(e.to_string()))
}

impl Transaction {
    /// An unsigned transaction; add signatures with [`Transaction::sign`].
    pub fn new(chain_id: &str, body: TxBody) -> Self {
        Transaction {
            version: Self::VERSION,
            chain_id: chain_id.to_string(),
            body,
            signatures: Vec::new(),
        }
    }

    /// Decodes a transaction received from outside and runs
    /// [`check_stateless`](Self::check_stateless): the mempool's entry point.
    pub fn from_wire(bytes: &[u8], chain_id: &str) -> Result<Self, TxError> {
        if bytes.len() > MAX_TX_BYTES {
            return Err(too_large(SizeLimit::Transaction, bytes.len(), MAX_TX_BYTES));
        }
        let tx = Self::from_bytes(bytes).map_err(|e| TxError::Malformed(e.to_string()))?;
        tx.check_stateless(chain_id)?;
        Ok(tx)
    }

    /// What every signer signs: everything but the signatures.
    pub fn sign_bytes(&self) -> Vec<u8> {
        encode(&(self.version, &self.chain_id, &self.body))
    }

    /// Adds (or replaces) `key`'s signature, keeping signatures sorted.
    pub fn sign(&mut self, key: &SigningKey) {
        let entry = TxSignature {
            signer: key.public(),
            signature: key.sign(Domain::Transaction, &self.sign_bytes()),
        };
        match self
            .signatures
            .binary_search_by(|s| s.signer.cmp(&entry.signer))
        {
            Ok(i) => {
                if let Some(existing) = self.signatures.get_mut(i) {
                    *existing = entry;
                }
            }
            Err(i) => self.signatures.insert(i, entry),
        }
    }

    /// Builder form of [`Transaction::sign`].
    pub fn signed_by(mut self, keys: &[&SigningKey]) -> Self {
        for key in keys {
            self.sign(key);
        }
        self
    }

    /// The transaction's id: `hash(Domain::Transaction, canonical bytes)`.
    pub fn hash(&self) -> Hash {
        Self::id_of_canonical(&self.to_bytes())
    }

    /// The id of the transaction whose canonical encoding is `bytes`, such
    /// as bytes [`from_bytes`](Canonical::from_bytes) accepted (it accepts
    /// only the canonical encoding), without encoding it again.
    pub fn id_of_canonical(bytes: &[u8]) -> Hash {
        hash(Domain::Transaction, bytes)
    }

    pub fn has_signer(&self, key: &PublicKey) -> bool {
        self.signatures
            .binary_search_by(|s| s.signer.cmp(key))
            .is_ok()
    }

    /// Everything that can be checked without state: version, chain, sizes,
    /// names, shapes, and every signature (batch-verified). The mempool runs
    /// it; block execution runs it again.
    pub fn check_stateless(&self, chain_id: &str) -> Result<(), TxError> {
        self.check_structure(chain_id)?;
        let mut batch = BatchVerifier::new();
        let mut refs = Vec::new();
        self.queue_signatures(&mut batch, &mut refs);
        verify_batch(batch, &refs)
    }

    /// The stateless checks that do not verify signatures.
    fn check_structure(&self, chain_id: &str) -> Result<(), TxError> {
        if self.version != Self::VERSION {
            return Err(TxError::UnsupportedVersion(self.version));
        }
        if self.chain_id != chain_id {
            return Err(TxError::WrongChain {
                expected: chain_id.to_string(),
                found: self.chain_id.clone(),
            });
        }
        let size = keyreg_consensus::codec::encoded_len(self)
            .map_err(|e| TxError::Malformed(e.to_string()))?;
        check_len(SizeLimit::Transaction, size, MAX_TX_BYTES)?;
        check_len(
            SizeLimit::Signatures,
            self.signatures.len(),
            MAX_TX_SIGNATURES,
        )?;
        if !self.signatures.is_sorted_by(|a, b| a.signer < b.signer) {
            return Err(TxError::Malformed(
                "signatures must be sorted by signer and distinct".into(),
            ));
        }
        let expect_signatures = |n: usize| {
            if self.signatures.len() == n {
                Ok(())
            } else {
                Err(TxError::SignatureCount {
                    expected: n as u32,
                    found: self.signatures.len() as u32,
                })
            }
        };
        match &self.body {
            TxBody::RegisterDevice(reg) => {
                reg.check_structure()?;
                expect_signatures(1)
            }
            TxBody::RegisterLot { org, devices } => {
                if devices.is_empty() {
                    return Err(TxError::Malformed("empty lot".into()));
                }
                check_len(SizeLimit::Lot, devices.len(), MAX_LOT_SIZE)?;
                let mut names = std::collections::BTreeSet::new();
                for reg in devices {
                    if reg.name.org() != *org {
                        return Err(TxError::WrongOrg {
                            name: reg.name.clone(),
                            org: org.clone(),
                        });
                    }
                    if !names.insert(&reg.name) {
                        return Err(TxError::DuplicateName(reg.name.clone()));
                    }
                    reg.check_structure()?;
                }
                expect_signatures(1)
            }
            TxBody::RotateDevice(rot) => {
                if rot.new_agreement_key.is_degenerate() {
                    return Err(TxError::DegenerateAgreementKey);
                }
                if rot.next_key_commitment == Some(rot.new_signing_key.digest(Domain::DeviceKey)) {
                    return Err(TxError::CommitmentReuse);
                }
                expect_signatures(2)?;
                if !self.has_signer(&rot.new_signing_key) {
                    return Err(TxError::MissingSignature {
                        role: SignerRole::NewKey,
                    });
                }
                Ok(())
            }
            TxBody::RevokeDevice(rev) => {
                check_len(SizeLimit::Reason, rev.reason.len(), MAX_REASON_LEN)?;
                expect_signatures(1)
            }
            TxBody::Governance { action, .. } => {
                match action {
                    GovernanceAction::AddOrg { admins, .. }
                    | GovernanceAction::SetOrgAdmins { admins, .. } => check_admin_list(admins)?,
                    GovernanceAction::RemoveOrg { .. } => {}
                    GovernanceAction::SetValidators { validators } => {
                        check_validator_list(validators)?
                    }
                }
                if self.signatures.is_empty() {
                    return Err(TxError::MissingSignature {
                        role: SignerRole::Approver,
                    });
                }
                Ok(())
            }
        }
    }

    /// Queues every signature this transaction carries, recording which is which.
    fn queue_signatures(&self, batch: &mut BatchVerifier, refs: &mut Vec<SignatureRef>) {
        let msg = self.sign_bytes();
        for (i, s) in self.signatures.iter().enumerate() {
            batch.queue(s.signer, Domain::Transaction, &msg, s.signature);
            refs.push(SignatureRef::Signer(i as u32));
        }
        let registrations: &[DeviceRegistration] = match &self.body {
            TxBody::RegisterDevice(reg) => std::slice::from_ref(reg),
            TxBody::RegisterLot { devices, .. } => devices,
            _ => &[],
        };
        for (i, reg) in registrations.iter().enumerate() {
            reg.queue_proof_of_possession(&self.chain_id, batch);
            refs.push(SignatureRef::ProofOfPossession(i as u32));
        }
    }
}

fn verify_batch(batch: BatchVerifier, refs: &[SignatureRef]) -> Result<(), TxError> {
    match batch.verify() {
        Ok(()) => Ok(()),
        Err(CryptoError::BatchFailed(bad)) => {
            let which = bad
                .first()
                .and_then(|&i| refs.get(i))
                .copied()
                .unwrap_or(SignatureRef::Signer(0));
            Err(TxError::BadSignature { which })
        }
        Err(e) => Err(TxError::Malformed(e.to_string())),
    }
}

/// [`Transaction::check_stateless`] for many transactions, verifying all
/// their signatures in one batch (the fast path for a whole block). Returns
/// one result per transaction, identical to checking each alone.
pub fn check_stateless_all(chain_id: &str, txs: &[Transaction]) -> Vec<Result<(), TxError>> {
    check_stateless_unless(chain_id, txs, |_| false)
}

/// [`check_stateless_all`] that takes the transactions `already_passed`
/// vouches for (by position in `txs`) as passing without checking them again. The stateless checks
/// depend only on the chain id and the transaction's bytes, so a node's
/// mempool (which admits only transactions that passed them for this chain)
/// can vouch for its own transactions and a block's signatures are not
/// verified twice.
pub fn check_stateless_unless(
    chain_id: &str,
    txs: &[Transaction],
    already_passed: impl Fn(usize) -> bool,
) -> Vec<Result<(), TxError>> {
    let mut results: Vec<Result<(), TxError>> = Vec::with_capacity(txs.len());
    let mut batch = BatchVerifier::new();
    // For each queued signature: (transaction index, which signature).
    let mut owners: Vec<(usize, SignatureRef)> = Vec::new();
    for (i, tx) in txs.iter().enumerate() {
        if already_passed(i) {
            results.push(Ok(()));
            continue;
        }
        let structure = tx.check_structure(chain_id);
        if structure.is_ok() {
            let mut refs = Vec::new();
            tx.queue_signatures(&mut batch, &mut refs);
            owners.extend(refs.into_iter().map(|r| (i, r)));
        }
        results.push(structure);
    }
    if owners.is_empty() {
        return results;
    }
    match batch.verify() {
        Ok(()) => {}
        Err(CryptoError::BatchFailed(bad)) => {
            for k in bad {
                if let Some(&(i, which)) = owners.get(k) {
                    // Keep the first bad signature of each transaction.
                    if let Some(result @ Ok(())) = results.get_mut(i) {
                        *result = Err(TxError::BadSignature { which });
                    }
                }
            }
        }
        Err(e) => {
            for &(i, _) in &owners {
                if let Some(r @ Ok(())) = results.get_mut(i) {
                    *r = Err(TxError::Malformed(e.to_string()));
                }
            }
        }
    }
    results
}
