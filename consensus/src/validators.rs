//! Validator sets: who votes, with what power, in which epoch.

use std::collections::BTreeSet;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::codec::Canonical;
use crate::crypto::{hash, Domain, Hash, PublicKey};

/// Upper bound on validators in one set; keeps bitmaps and quorum loops bounded.
pub const MAX_VALIDATORS: usize = 256;
/// Upper bound on one validator's power; with MAX_VALIDATORS, total power fits easily in u64.
pub const MAX_POWER: u64 = 1 << 40;

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Validator {
    pub key: PublicKey,
    pub power: u64,
}

/// The validators of one epoch, sorted by public key. Index `i` in this order
/// is bit `i` of a commit certificate's signer bitmap.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct ValidatorSet {
    pub version: u8,
    pub epoch: u64,
    validators: Vec<Validator>,
}

impl Canonical for ValidatorSet {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ValidatorSetError {
    #[error("a validator set needs at least one validator")]
    Empty,
    #[error("too many validators: {0} (at most {MAX_VALIDATORS})")]
    TooMany(usize),
    #[error("validator {0} appears twice")]
    Duplicate(PublicKey),
    #[error("validator {0} has power 0 or above {MAX_POWER}")]
    BadPower(PublicKey),
    #[error("validators are not sorted by public key")]
    Unsorted,
}

impl ValidatorSet {
    /// Builds a set, sorting by key and checking every invariant.
    pub fn new(epoch: u64, mut validators: Vec<Validator>) -> Result<Self, ValidatorSetError> {
        validators.sort_by_key(|v| v.key);
        let set = ValidatorSet {
            version: Self::VERSION,
            epoch,
            validators,
        };
        set.check()?;
        Ok(set)
    }

    /// Checks the invariants of a set that arrived from outside (decoded).
    pub fn check(&self) -> Result<(), ValidatorSetError> {
        if self.validators.is_empty() {
            return Err(ValidatorSetError::Empty);
        }
        if self.validators.len() > MAX_VALIDATORS {
            return Err(ValidatorSetError::TooMany(self.validators.len()));
        }
        let mut seen = BTreeSet::new();
        for v in &self.validators {
            if v.power == 0 || v.power > MAX_POWER {
                return Err(ValidatorSetError::BadPower(v.key));
            }
            if !seen.insert(v.key) {
                return Err(ValidatorSetError::Duplicate(v.key));
            }
        }
        if !self.validators.is_sorted_by(|a, b| a.key < b.key) {
            return Err(ValidatorSetError::Unsorted);
        }
        Ok(())
    }

    pub fn validators(&self) -> &[Validator] {
        &self.validators
    }

    pub fn len(&self) -> usize {
        self.validators.len()
    }

    pub fn is_empty(&self) -> bool {
        self.validators.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&Validator> {
        self.validators.get(index)
    }

    pub fn index_of(&self, key: &PublicKey) -> Option<usize> {
        self.validators.binary_search_by(|v| v.key.cmp(key)).ok()
    }

    pub fn total_power(&self) -> u64 {
        self.validators.iter().map(|v| v.power).sum()
    }

    /// True when `power` is strictly more than two thirds of the total.
    pub fn is_quorum(&self, power: u64) -> bool {
        3 * power > 2 * self.total_power()
    }

    /// True when `power` is strictly more than one third of the total, so at
    /// least one honest validator is among those it counts.
    pub fn is_one_third(&self, power: u64) -> bool {
        3 * power > self.total_power()
    }

    pub fn hash(&self) -> Hash {
        hash(Domain::ValidatorSet, &self.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SigningKey;

    fn v(n: u8, power: u64) -> Validator {
        Validator {
            key: SigningKey::from_seed([n; 32]).public(),
            power,
        }
    }

    #[test]
    fn sorts_and_checks() {
        let s = ValidatorSet::new(0, vec![v(3, 1), v(1, 1), v(2, 1), v(4, 1)]).unwrap();
        assert!(s.validators().windows(2).all(|w| w[0].key < w[1].key));
        assert!(s.is_quorum(3));
        assert!(!s.is_quorum(2));
        assert!(s.is_one_third(2));
        assert!(!s.is_one_third(1));
        assert_eq!(
            ValidatorSet::new(0, vec![v(1, 1), v(1, 2)]),
            Err(ValidatorSetError::Duplicate(v(1, 1).key))
        );
        assert!(matches!(
            ValidatorSet::new(0, vec![v(1, 0)]),
            Err(ValidatorSetError::BadPower(_))
        ));
        assert_eq!(ValidatorSet::new(0, vec![]), Err(ValidatorSetError::Empty));
    }

    #[test]
    fn decoded_sets_are_rechecked() {
        let s = ValidatorSet::new(1, vec![v(1, 1), v(2, 1)]).unwrap();
        let mut bad = s.clone();
        bad.validators.swap(0, 1);
        let decoded = ValidatorSet::from_bytes(&bad.to_bytes()).unwrap();
        assert_eq!(decoded.check(), Err(ValidatorSetError::Unsorted));
    }
}
