//! Reading and staging state: a read-only [`StateView`] of the tree at one
//! version, and an [`Overlay`] that stages a block's writes transaction by
//! transaction so a rejected transaction leaves nothing behind.

use std::collections::BTreeMap;

use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::Hash;
use thiserror::Error;

use crate::names::{DeviceName, OrgId};
use crate::records::{
    governance_key, validator_key, validator_set_of, DeviceRecord, GovernanceRecord, OrgRecord,
    ValidatorInfo,
};
use keyreg_consensus::validators::{ValidatorSet, MAX_VALIDATORS};

/// A failure of the state itself (storage or corrupt contents), never of a
/// transaction: it aborts execution instead of rejecting a transaction.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StateError {
    #[error("state tree: {0}")]
    Tree(String),
    #[error("stored value under {key} does not decode: {reason}")]
    Corrupt { key: Hash, reason: String },
    #[error("the state has no governance record")]
    MissingGovernance,
    #[error("state invariant violated: {0}")]
    Invariant(String),
    #[error("head value index: {0}")]
    Index(String),
}

/// Read access to the state of one version.
pub trait StateView {
    fn get(&self, key: &Hash) -> Result<Option<Vec<u8>>, StateError>;
}

/// A plain map is a state view (tests, genesis construction).
impl StateView for BTreeMap<Hash, Vec<u8>> {
    fn get(&self, key: &Hash) -> Result<Option<Vec<u8>>, StateError> {
        Ok(BTreeMap::get(self, key).cloned())
    }
}

/// The writes of a block, sorted by key: `None` deletes.
pub type StateChanges = BTreeMap<Hash, Option<Vec<u8>>>;

fn decode_record<T: Canonical>(key: &Hash, bytes: &[u8]) -> Result<T, StateError> {
    T::from_bytes(bytes).map_err(|e| StateError::Corrupt {
        key: *key,
        reason: e.to_string(),
    })
}

/// Typed record reads, for any view.
pub trait RecordReader {
    fn get_raw(&self, key: &Hash) -> Result<Option<Vec<u8>>, StateError>;

    fn get_record<T: Canonical>(&self, key: &Hash) -> Result<Option<T>, StateError> {
        self.get_raw(key)?
            .map(|bytes| decode_record(key, &bytes))
            .transpose()
    }

    fn device(&self, name: &DeviceName) -> Result<Option<DeviceRecord>, StateError> {
        self.get_record(&name.state_key())
    }

    fn org(&self, org: &OrgId) -> Result<Option<OrgRecord>, StateError> {
        self.get_record(&org.state_key())
    }

    fn governance(&self) -> Result<GovernanceRecord, StateError> {
        self.get_record(&governance_key())?
            .ok_or(StateError::MissingGovernance)
    }

    /// The current validators, in key order.
    fn validators(&self) -> Result<Vec<ValidatorInfo>, StateError> {
        let count = self.governance()?.validator_count;
        let mut out = Vec::with_capacity((count as usize).min(MAX_VALIDATORS));
        for index in 0..count.min(MAX_VALIDATORS as u32) {
            let key = validator_key(index);
            let v = self.get_record(&key)?.ok_or_else(|| {
                StateError::Invariant(format!("validator {index} of {count} is missing"))
            })?;
            out.push(v);
        }
        Ok(out)
    }

    /// The consensus set of the current validators.
    fn validator_set(&self) -> Result<ValidatorSet, StateError> {
        let epoch = self.governance()?.epoch;
        validator_set_of(epoch, &self.validators()?)
            .map_err(|e| StateError::Invariant(format!("stored validator set: {e}")))
    }
}

impl<V: StateView + ?Sized> RecordReader for V {
    fn get_raw(&self, key: &Hash) -> Result<Option<Vec<u8>>, StateError> {
        self.get(key)
    }
}

/// Stages writes over a base view in two layers: the block's committed
/// transactions, and the transaction being applied.
pub struct Overlay<'a, V: StateView + ?Sized> {
    base: &'a V,
    block: StateChanges,
    pending: StateChanges,
}

impl<'a, V: StateView + ?Sized> Overlay<'a, V> {
    pub fn new(base: &'a V) -> Self {
        Overlay {
            base,
            block: StateChanges::new(),
            pending: StateChanges::new(),
        }
    }

    pub fn put<T: Canonical>(&mut self, key: Hash, record: &T) {
        self.pending.insert(key, Some(record.to_bytes()));
    }

    pub fn delete(&mut self, key: Hash) {
        self.pending.insert(key, None);
    }

    /// Keeps the current transaction's writes.
    pub fn commit_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.block.extend(pending);
    }

    /// Drops the current transaction's writes.
    pub fn discard_pending(&mut self) {
        self.pending.clear();
    }

    /// The block's writes (pending writes must have been committed or discarded).
    pub fn into_changes(self) -> StateChanges {
        debug_assert!(self.pending.is_empty(), "uncommitted transaction writes");
        self.block
    }
}

impl<V: StateView + ?Sized> StateView for Overlay<'_, V> {
    fn get(&self, key: &Hash) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(v) = self.pending.get(key).or_else(|| self.block.get(key)) {
            return Ok(v.clone());
        }
        self.base.get(key)
    }
}
