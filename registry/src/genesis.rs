//! Genesis: the chain's trust anchor and its height-0 state.
//!
//! A genesis file is JSON:
//!
//! ```json
//! {
//!   "chain_id": "keyreg-test",
//!   "genesis_time_ms": 1767225600000,
//!   "governance_threshold": 2,
//!   "validators": [{ "key": "<hex>", "power": 1, "address": "/ip4/10.0.0.1/tcp/26656" }],
//!   "organisations": [{ "id": "acme", "admins": ["<hex>"] }]
//! }
//! ```
//!
//! Parsing normalises the order of validators (by key), organisations (by
//! id) and admin keys, so the same content always has the same
//! [`Genesis::hash`], which every node, client and auditor pins.

use std::collections::BTreeSet;

use bincode::{Decode, Encode};
use keyreg_consensus::certificate::MAX_CHAIN_ID_LEN;
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::{hash, Domain, Hash, PublicKey};
use keyreg_consensus::validators::ValidatorSet;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::block::{tx_root, Header};
use crate::execute::write_validators;
use crate::names::OrgId;
use crate::records::{
    governance_key, validator_set_of, GovernanceRecord, OrgRecord, OrgStatus, ValidatorInfo,
    MAX_ORGS,
};
use crate::state::{Overlay, StateChanges, StateError};
use crate::tree::{MemNodeStore, TreeBatch};
use crate::tree_state::apply_changes;
use crate::tx::{check_admin_list, check_validator_list, TxError};

fn genesis_version() -> u8 {
    Genesis::VERSION
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct GenesisOrg {
    pub id: OrgId,
    pub admins: Vec<PublicKey>,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    #[serde(default = "genesis_version")]
    pub version: u8,
    pub chain_id: String,
    pub genesis_time_ms: u64,
    /// Distinct organisations needed to approve a governance action.
    pub governance_threshold: u32,
    pub validators: Vec<ValidatorInfo>,
    pub organisations: Vec<GenesisOrg>,
}

impl Canonical for Genesis {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

#[derive(Debug, Error)]
pub enum GenesisError {
    #[error("genesis JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported genesis version {0}")]
    Version(u8),
    #[error("chain id must be 1..={MAX_CHAIN_ID_LEN} printable ASCII bytes")]
    ChainId,
    #[error("governance threshold {threshold} must be between 1 and the {orgs} organisations")]
    Threshold { threshold: u32, orgs: usize },
    #[error("genesis needs 1..={MAX_ORGS} organisations, found {0}")]
    OrgCount(usize),
    #[error("organisation {0} appears twice")]
    DuplicateOrg(OrgId),
    #[error("admin key {0} is listed for two organisations")]
    SharedAdmin(PublicKey),
    #[error("invalid genesis entry: {0}")]
    Invalid(#[from] TxError),
    #[error("building the genesis state: {0}")]
    State(#[from] StateError),
}

/// Everything height 0 consists of.
#[derive(Clone, Debug)]
pub struct GenesisState {
    /// The derived block-0 header (trusted through the genesis hash; no certificate).
    pub header: Header,
    /// The tree nodes of version 0.
    pub tree_batch: TreeBatch,
    /// The records of version 0 (for the store's head value index).
    pub changes: StateChanges,
    /// The set that certifies block 1.
    pub validator_set: ValidatorSet,
}

impl Genesis {
    /// Parses, normalises and validates a genesis file.
    pub fn from_json(json: &str) -> Result<Self, GenesisError> {
        let mut genesis: Genesis = serde_json::from_str(json)?;
        genesis.normalise();
        genesis.validate()?;
        Ok(genesis)
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Sorts validators, organisations and admin keys into canonical order.
    pub fn normalise(&mut self) {
        self.validators.sort_by_key(|v| v.key);
        self.organisations.sort_by(|a, b| a.id.cmp(&b.id));
        for org in &mut self.organisations {
            org.admins.sort();
        }
    }

    pub fn validate(&self) -> Result<(), GenesisError> {
        if self.version != Self::VERSION {
            return Err(GenesisError::Version(self.version));
        }
        let chain_ok = !self.chain_id.is_empty()
            && self.chain_id.len() <= MAX_CHAIN_ID_LEN
            && self.chain_id.bytes().all(|b| b.is_ascii_graphic());
        if !chain_ok {
            return Err(GenesisError::ChainId);
        }
        let orgs = self.organisations.len();
        if orgs == 0 || orgs > MAX_ORGS {
            return Err(GenesisError::OrgCount(orgs));
        }
        if self.governance_threshold == 0 || self.governance_threshold as usize > orgs {
            return Err(GenesisError::Threshold {
                threshold: self.governance_threshold,
                orgs,
            });
        }
        check_validator_list(&self.validators)?;
        let mut ids = BTreeSet::new();
        let mut admins = BTreeSet::new();
        for org in &self.organisations {
            if !ids.insert(&org.id) {
                return Err(GenesisError::DuplicateOrg(org.id.clone()));
            }
            check_admin_list(&org.admins)?;
            for key in &org.admins {
                if !admins.insert(key) {
                    return Err(GenesisError::SharedAdmin(*key));
                }
            }
        }
        Ok(())
    }

    /// The trust anchor: `hash(Domain::Genesis, canonical bytes)`.
    pub fn hash(&self) -> Hash {
        hash(Domain::Genesis, &self.to_bytes())
    }

    /// The validator set of epoch 0.
    pub fn validator_set(&self) -> Result<ValidatorSet, GenesisError> {
        validator_set_of(0, &self.validators)
            .map_err(|e| GenesisError::Invalid(TxError::InvalidValidatorSet(e.to_string())))
    }

    /// The height-0 writes: organisations, governance, validators.
    pub fn initial_changes(&self) -> Result<StateChanges, GenesisError> {
        self.validate()?;
        let empty_view = std::collections::BTreeMap::<Hash, Vec<u8>>::new();
        let mut overlay = Overlay::new(&empty_view);
        let mut governance = GovernanceRecord {
            version: GovernanceRecord::VERSION,
            threshold: self.governance_threshold,
            sequence: 0,
            orgs: self.organisations.iter().map(|o| o.id.clone()).collect(),
            epoch: 0,
            validator_count: 0,
        };
        for org in &self.organisations {
            let record = OrgRecord {
                version: OrgRecord::VERSION,
                id: org.id.clone(),
                admins: org.admins.clone(),
                status: OrgStatus::Active,
                active_devices: 0,
                added_at: 0,
            };
            overlay.put(org.id.state_key(), &record);
        }
        write_validators(&mut overlay, &mut governance, &self.validators);
        overlay.put(governance_key(), &governance);
        overlay.commit_pending();
        Ok(overlay.into_changes())
    }

    /// Builds height 0: the tree version 0 and the derived genesis header.
    pub fn initial_state(&self) -> Result<GenesisState, GenesisError> {
        let changes = self.initial_changes()?;
        let tree_batch = apply_changes(&MemNodeStore::new(), None, 0, &changes)?;
        let validator_set = self.validator_set()?;
        let set_hash = validator_set.hash();
        let header = Header {
            version: Header::VERSION,
            chain_id: self.chain_id.clone(),
            epoch: 0,
            height: 0,
            prev_hash: self.hash(),
            timestamp_ms: self.genesis_time_ms,
            proposer: PublicKey([0; 32]),
            tx_root: tx_root(&[]),
            state_root: tree_batch.root,
            validator_set_hash: set_hash,
            next_validator_set_hash: set_hash,
        };
        Ok(GenesisState {
            header,
            tree_batch,
            changes,
            validator_set,
        })
    }
}
