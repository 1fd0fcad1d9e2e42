//! Verified look-ups shared by nodes (which build them) and clients (which
//! check them without trusting the node that answered).

use bincode::{Decode, Encode};
use keyreg_consensus::certificate::{verify_commit, CertificateError, CommitCertificate};
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::Hash;
use keyreg_consensus::validators::ValidatorSet;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::block::Header;
use crate::names::DeviceName;
use crate::records::DeviceRecord;
use crate::tree::{ProofError, SparseMerkleProof};

/// A device's record (or its absence) at a certified height: the record, its
/// tree proof under `header.state_root`, and the certificate over `header`.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct DeviceProof {
    pub version: u8,
    pub name: DeviceName,
    pub record: Option<DeviceRecord>,
    pub proof: SparseMerkleProof,
    pub header: Header,
    pub certificate: CommitCertificate,
}

impl Canonical for DeviceProof {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProofCheckError {
    #[error("unsupported proof version {0}")]
    Version(u8),
    #[error("header is for chain {found:?}, expected {expected:?}")]
    WrongChain { expected: String, found: String },
    #[error("header is for epoch {found}, the trusted set is epoch {expected}")]
    WrongEpoch { expected: u64, found: u64 },
    #[error("header names validator set {found}, the trusted set hashes to {expected}")]
    ValidatorSetMismatch { expected: Hash, found: Hash },
    #[error("certificate does not certify the header: {0}")]
    Certificate(#[from] CertificateError),
    #[error("the record is for {found}, the proof is for {expected}")]
    NameMismatch {
        expected: DeviceName,
        found: DeviceName,
    },
    #[error("state proof does not verify: {0}")]
    Tree(#[from] ProofError),
}

/// Checks `proof` against the trusted `validator_set` of `chain_id` and
/// returns the certified record (`None`: certified absent).
///
/// Checks, in order: the header's chain, epoch and validator-set hash against
/// the trusted set; the certificate over the header hash (`verify_commit`);
/// that the record names the requested device; and the tree proof of the
/// record's canonical bytes (or of absence) under `header.state_root`.
pub fn verify_device_proof(
    chain_id: &str,
    validator_set: &ValidatorSet,
    proof: &DeviceProof,
) -> Result<Option<DeviceRecord>, ProofCheckError> {
    if proof.version != DeviceProof::VERSION {
        return Err(ProofCheckError::Version(proof.version));
    }
    let header = &proof.header;
    if header.chain_id != chain_id {
        return Err(ProofCheckError::WrongChain {
            expected: chain_id.to_string(),
            found: header.chain_id.clone(),
        });
    }
    if header.epoch != validator_set.epoch {
        return Err(ProofCheckError::WrongEpoch {
            expected: validator_set.epoch,
            found: header.epoch,
        });
    }
    let set_hash = validator_set.hash();
    if header.validator_set_hash != set_hash {
        return Err(ProofCheckError::ValidatorSetMismatch {
            expected: set_hash,
            found: header.validator_set_hash,
        });
    }
    verify_commit(
        chain_id,
        validator_set,
        header.height,
        &header.hash(),
        &proof.certificate,
    )?;
    let value = match &proof.record {
        Some(record) if record.name != proof.name => {
            return Err(ProofCheckError::NameMismatch {
                expected: proof.name.clone(),
                found: record.name.clone(),
            })
        }
        Some(record) => Some(record.to_bytes()),
        None => None,
    };
    proof.proof.verify(
        &header.state_root,
        &proof.name.state_key(),
        value.as_deref(),
    )?;
    Ok(proof.record.clone())
}
