//! Deterministic keys, genesis files and certificates for tests and
//! simulations (this crate's, and the node's and client's). Nothing here is
//! for production keys: every key derives from a public label.

use keyreg_consensus::certificate::{CommitCertificate, VoteData, VoteKind};
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::{hash, Domain, SigningKey};
use keyreg_consensus::validators::ValidatorSet;

use crate::block::{Block, CommittedBlock};
use crate::execute::TxResult;
use crate::genesis::{Genesis, GenesisOrg};
use crate::ledger::{Ledger, LedgerError};
use crate::names::OrgId;
use crate::records::{AgreementKey, ValidatorInfo};
use crate::store::LedgerStore;
use crate::tx::Transaction;

/// A signing key derived from `label` (deterministic, public: tests only).
pub fn test_key(label: &str) -> SigningKey {
    SigningKey::from_seed(hash(Domain::BatchSeed, label.as_bytes()).0)
}

/// An X25519 public key derived from `label` (tests only).
pub fn test_agreement_key(label: &str) -> AgreementKey {
    let secret = x25519_dalek::StaticSecret::from(hash(Domain::Handshake, label.as_bytes()).0);
    AgreementKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
}

/// A test consortium: validator keys, org admin keys and its genesis.
pub struct TestNet {
    pub validator_keys: Vec<SigningKey>,
    /// One admin key per organisation, in `genesis.organisations` order.
    pub admins: Vec<(OrgId, SigningKey)>,
    pub genesis: Genesis,
}

impl TestNet {
    /// `validators` equal-power validators, organisations `orgs` (one admin
    /// each, key `admin/<org>`), governance threshold `threshold`.
    pub fn new(chain_id: &str, validators: usize, orgs: &[&str], threshold: u32) -> Self {
        let validator_keys: Vec<SigningKey> = (0..validators)
            .map(|i| test_key(&format!("validator/{i}")))
            .collect();
        let mut admins: Vec<(OrgId, SigningKey)> = orgs
            .iter()
            .map(|o| {
                let id = OrgId::new(o).expect("test org ids are valid");
                (id, test_key(&format!("admin/{o}")))
            })
            .collect();
        admins.sort_by(|a, b| a.0.cmp(&b.0));
        let mut genesis = Genesis {
            version: Genesis::VERSION,
            chain_id: chain_id.to_string(),
            genesis_time_ms: 1_700_000_000_000,
            governance_threshold: threshold,
            validators: validator_keys
                .iter()
                .enumerate()
                .map(|(i, k)| ValidatorInfo::new(k.public(), 1, &format!("/memory/{i}")))
                .collect(),
            organisations: admins
                .iter()
                .map(|(id, key)| GenesisOrg {
                    id: id.clone(),
                    admins: vec![key.public()],
                })
                .collect(),
        };
        genesis.normalise();
        TestNet {
            validator_keys,
            admins,
            genesis,
        }
    }

    /// The admin key of `org`.
    pub fn admin(&self, org: &str) -> &SigningKey {
        self.admins
            .iter()
            .find(|(id, _)| id.as_str() == org)
            .map(|(_, k)| k)
            .expect("unknown test org")
    }
}

/// A certificate for `block` signed (round 0) by every key in `keys` that
/// belongs to `set`.
pub fn certify(
    chain_id: &str,
    set: &ValidatorSet,
    keys: &[SigningKey],
    block: &Block,
) -> CommitCertificate {
    let block_hash = block.hash();
    let vote = VoteData {
        version: VoteData::VERSION,
        chain_id: chain_id.to_string(),
        epoch: set.epoch,
        height: block.header.height,
        round: 0,
        kind: VoteKind::Precommit,
        block: Some(block_hash),
    };
    let votes = keys
        .iter()
        .filter_map(|k| Some((set.index_of(&k.public())?, vote.sign(k))))
        .collect();
    CommitCertificate::from_precommits(set, block.header.height, 0, block_hash, votes)
}

/// Proposes, certifies (with `keys`) and commits the next block of `txs`,
/// one second after the head. Returns the committed block and its results.
pub fn commit_next<S: LedgerStore>(
    ledger: &mut Ledger<S>,
    keys: &[SigningKey],
    txs: Vec<Transaction>,
) -> Result<(CommittedBlock, Vec<TxResult>), LedgerError> {
    let set = ledger.validator_set().clone();
    let proposer = set
        .get(0)
        .map(|v| v.key)
        .expect("validator sets are never empty");
    let timestamp = ledger.head().timestamp_ms + 1000;
    let (block, execution) = ledger.propose(txs, timestamp, proposer, |_| false)?;
    let certificate = certify(ledger.chain_id(), &set, keys, &block);
    let committed = CommittedBlock {
        version: CommittedBlock::VERSION,
        block,
        certificate,
    };
    let results = execution.results.clone();
    ledger.commit(&committed, execution)?;
    Ok((committed, results))
}
