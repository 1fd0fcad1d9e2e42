//! Votes' signed bytes and commit certificates.
//!
//! A commit certificate proves that validators holding more than two thirds
//! of an epoch's voting power precommitted one block hash at one height and
//! round. [`verify_commit`] is the one check every consumer runs: validators
//! during catch-up, observers, light clients on devices, and auditors.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::codec::{encode, Canonical};
use crate::crypto::{BatchVerifier, CryptoError, Domain, Hash, Signature, SigningKey};
use crate::validators::ValidatorSet;

/// Upper bound on a chain id's length in bytes.
pub const MAX_CHAIN_ID_LEN: usize = 64;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode, Serialize, Deserialize,
)]
pub enum VoteKind {
    Prevote,
    Precommit,
}

/// Exactly what a validator signs when it votes. `block: None` is a vote for
/// nil (no block in this round).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct VoteData {
    pub version: u8,
    pub chain_id: String,
    pub epoch: u64,
    pub height: u64,
    pub round: u32,
    pub kind: VoteKind,
    pub block: Option<Hash>,
}

impl Canonical for VoteData {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

impl VoteData {
    /// The bytes a validator signs (under [`Domain::Vote`]).
    pub fn sign_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn sign(&self, key: &SigningKey) -> Signature {
        key.sign(Domain::Vote, &self.sign_bytes())
    }
}

/// Signatures of more than two thirds of the voting power of `epoch` over
/// precommits for `block_hash` at (`height`, `round`).
///
/// Compact form: `signers` is a bitmap over the validator set in its sorted
/// order (bit `i` is byte `i / 8`, mask `1 << (i % 8)`), and `signatures`
/// holds one signature per set bit, in validator order.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct CommitCertificate {
    pub version: u8,
    pub epoch: u64,
    pub height: u64,
    pub round: u32,
    pub block_hash: Hash,
    pub signers: Vec<u8>,
    pub signatures: Vec<Signature>,
}

impl Canonical for CommitCertificate {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CertificateError {
    #[error("certificate is for epoch {found}, the validator set is epoch {expected}")]
    WrongEpoch { expected: u64, found: u64 },
    #[error("certificate is for height {found}, expected {expected}")]
    WrongHeight { expected: u64, found: u64 },
    #[error("certificate commits block {found}, expected {expected}")]
    WrongBlock { expected: Hash, found: Hash },
    #[error("signer bitmap has {found} bytes, expected {expected}")]
    BitmapLength { expected: usize, found: usize },
    #[error("signer bitmap names validator {0}, beyond the set")]
    BitmapOverflow(usize),
    #[error("{signers} signers but {signatures} signatures")]
    SignatureCount { signers: usize, signatures: usize },
    #[error("signers hold {power} of {total} voting power: not more than two thirds")]
    NoQuorum { power: u64, total: u64 },
    #[error("bad signature from validator index {0:?}")]
    BadSignature(Vec<usize>),
    #[error("unsupported certificate version {0}")]
    Version(u8),
    #[error("certificate has a malformed signer: {0}")]
    Crypto(CryptoError),
}

/// What a verified certificate established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCommit {
    pub height: u64,
    pub round: u32,
    pub signer_indexes: Vec<usize>,
    pub power: u64,
}

impl CommitCertificate {
    /// Builds a certificate from (validator index, signature) pairs. The caller
    /// supplies precommits it has verified; indexes must be distinct.
    pub fn from_precommits(
        set: &ValidatorSet,
        height: u64,
        round: u32,
        block_hash: Hash,
        mut votes: Vec<(usize, Signature)>,
    ) -> Self {
        votes.sort_by_key(|(i, _)| *i);
        votes.dedup_by_key(|(i, _)| *i);
        let mut signers = vec![0u8; set.len().div_ceil(8)];
        let mut signatures = Vec::with_capacity(votes.len());
        for (i, sig) in votes {
            assert!(i < set.len(), "precommit from index {i} outside the set");
            // In range: the bitmap has a bit for every index of the set.
            if let Some(byte) = signers.get_mut(i / 8) {
                *byte |= 1 << (i % 8);
            }
            signatures.push(sig);
        }
        CommitCertificate {
            version: Self::VERSION,
            epoch: set.epoch,
            height,
            round,
            block_hash,
            signers,
            signatures,
        }
    }

    /// Validator indexes whose bit is set, in increasing order.
    pub fn signer_indexes(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for (byte_index, byte) in self.signers.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    out.push(byte_index * 8 + bit);
                }
            }
        }
        out
    }

    /// The precommit each signer signed.
    pub fn vote_data(&self, chain_id: &str) -> VoteData {
        VoteData {
            version: VoteData::VERSION,
            chain_id: chain_id.to_string(),
            epoch: self.epoch,
            height: self.height,
            round: self.round,
            kind: VoteKind::Precommit,
            block: Some(self.block_hash),
        }
    }
}

/// Verifies that `cert` commits `block_hash` at `height` under `set`.
///
/// Checks the version, epoch, height and block hash, the bitmap's shape, that
/// the signers hold more than two thirds of the power, and every signature
/// (batch-verified). Nothing is trusted from the certificate beyond what is
/// checked here.
pub fn verify_commit(
    chain_id: &str,
    set: &ValidatorSet,
    height: u64,
    block_hash: &Hash,
    cert: &CommitCertificate,
) -> Result<VerifiedCommit, CertificateError> {
    if cert.version != CommitCertificate::VERSION {
        return Err(CertificateError::Version(cert.version));
    }
    if cert.epoch != set.epoch {
        return Err(CertificateError::WrongEpoch {
            expected: set.epoch,
            found: cert.epoch,
        });
    }
    if cert.height != height {
        return Err(CertificateError::WrongHeight {
            expected: height,
            found: cert.height,
        });
    }
    if cert.block_hash != *block_hash {
        return Err(CertificateError::WrongBlock {
            expected: *block_hash,
            found: cert.block_hash,
        });
    }
    let expected_len = set.len().div_ceil(8);
    if cert.signers.len() != expected_len {
        return Err(CertificateError::BitmapLength {
            expected: expected_len,
            found: cert.signers.len(),
        });
    }
    let indexes = cert.signer_indexes();
    let signers = indexes
        .iter()
        .map(|&i| set.get(i).ok_or(CertificateError::BitmapOverflow(i)))
        .collect::<Result<Vec<_>, _>>()?;
    if indexes.len() != cert.signatures.len() {
        return Err(CertificateError::SignatureCount {
            signers: indexes.len(),
            signatures: cert.signatures.len(),
        });
    }
    let power: u64 = signers.iter().map(|v| v.power).sum();
    if !set.is_quorum(power) {
        return Err(CertificateError::NoQuorum {
            power,
            total: set.total_power(),
        });
    }
    let msg = cert.vote_data(chain_id).sign_bytes();
    let mut batch = BatchVerifier::with_capacity(indexes.len());
    for (validator, sig) in signers.iter().zip(&cert.signatures) {
        batch.queue(validator.key, Domain::Vote, &msg, *sig);
    }
    match batch.verify() {
        Ok(()) => Ok(VerifiedCommit {
            height: cert.height,
            round: cert.round,
            signer_indexes: indexes,
            power,
        }),
        Err(CryptoError::BatchFailed(bad)) => Err(CertificateError::BadSignature(
            // The batch names positions of what was queued: one per signer.
            bad.into_iter()
                .filter_map(|k| indexes.get(k).copied())
                .collect(),
        )),
        Err(e) => Err(CertificateError::Crypto(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validators::Validator;

    const CHAIN: &str = "test-chain";

    fn keys(n: u8) -> Vec<SigningKey> {
        (1..=n).map(|i| SigningKey::from_seed([i; 32])).collect()
    }

    fn set_of(keys: &[SigningKey]) -> ValidatorSet {
        ValidatorSet::new(
            7,
            keys.iter()
                .map(|k| Validator {
                    key: k.public(),
                    power: 1,
                })
                .collect(),
        )
        .unwrap()
    }

    fn cert_signed_by(keys: &[SigningKey], set: &ValidatorSet, count: usize) -> CommitCertificate {
        let block = Hash([9; 32]);
        let data = VoteData {
            version: VoteData::VERSION,
            chain_id: CHAIN.into(),
            epoch: set.epoch,
            height: 5,
            round: 2,
            kind: VoteKind::Precommit,
            block: Some(block),
        };
        let votes = keys
            .iter()
            .take(count)
            .map(|k| (set.index_of(&k.public()).unwrap(), data.sign(k)))
            .collect();
        CommitCertificate::from_precommits(set, 5, 2, block, votes)
    }

    #[test]
    fn quorum_certificate_verifies() {
        let ks = keys(4);
        let set = set_of(&ks);
        let cert = cert_signed_by(&ks, &set, 3);
        let ok = verify_commit(CHAIN, &set, 5, &Hash([9; 32]), &cert).unwrap();
        assert_eq!(ok.power, 3);
        let decoded = CommitCertificate::from_bytes(&cert.to_bytes()).unwrap();
        assert_eq!(decoded, cert);
    }

    #[test]
    fn partial_certificate_is_rejected() {
        let ks = keys(4);
        let set = set_of(&ks);
        let cert = cert_signed_by(&ks, &set, 2);
        assert_eq!(
            verify_commit(CHAIN, &set, 5, &Hash([9; 32]), &cert),
            Err(CertificateError::NoQuorum { power: 2, total: 4 })
        );
    }

    #[test]
    fn forged_and_misdirected_certificates_are_rejected() {
        let ks = keys(4);
        let set = set_of(&ks);
        let cert = cert_signed_by(&ks, &set, 3);
        let block = Hash([9; 32]);

        let mut forged = cert.clone();
        forged.signatures[1].0[10] ^= 1;
        assert!(matches!(
            verify_commit(CHAIN, &set, 5, &block, &forged),
            Err(CertificateError::BadSignature(_))
        ));
        assert!(matches!(
            verify_commit("other-chain", &set, 5, &block, &cert),
            Err(CertificateError::BadSignature(_))
        ));
        assert!(matches!(
            verify_commit(CHAIN, &set, 6, &block, &cert),
            Err(CertificateError::WrongHeight { .. })
        ));
        assert!(matches!(
            verify_commit(CHAIN, &set, 5, &Hash([8; 32]), &cert),
            Err(CertificateError::WrongBlock { .. })
        ));
        let mut dup = cert.clone();
        dup.signatures.push(dup.signatures[0]);
        assert!(matches!(
            verify_commit(CHAIN, &set, 5, &block, &dup),
            Err(CertificateError::SignatureCount { .. })
        ));
        let mut overflow = cert.clone();
        overflow.signers[0] |= 0x80;
        overflow.signatures.push(cert.signatures[0]);
        assert_eq!(
            verify_commit(CHAIN, &set, 5, &block, &overflow),
            Err(CertificateError::BitmapOverflow(7))
        );
        let other_epoch = ValidatorSet::new(8, set.validators().to_vec()).unwrap();
        assert!(matches!(
            verify_commit(CHAIN, &other_epoch, 5, &block, &cert),
            Err(CertificateError::WrongEpoch { .. })
        ));
    }
}
