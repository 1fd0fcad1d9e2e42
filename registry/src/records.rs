//! The records stored in the state tree, and where they are stored.
//!
//! | tree key                                  | value                 |
//! |-------------------------------------------|-----------------------|
//! | `hash(Domain::DeviceName, "org/local")`   | [`DeviceRecord`]      |
//! | `hash(Domain::OrgId, org)`                | [`OrgRecord`]         |
//! | [`governance_key()`]                      | [`GovernanceRecord`]  |
//! | [`validator_key(i)`](validator_key)       | [`ValidatorInfo`] `i` |
//!
//! Values are the records' canonical bytes, so the state root commits to
//! every field. Every record fits the tree's value limit: validators get one
//! entry each because a whole set with addresses would not.

use std::collections::BTreeMap;
use std::fmt;

use bincode::{Decode, Encode};
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::{hash, hash_parts, Domain, Hash, PublicKey};
use keyreg_consensus::validators::{Validator, ValidatorSet, ValidatorSetError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::names::{DeviceName, OrgId};

/// At most this many metadata entries per device.
pub const MAX_METADATA_ENTRIES: usize = 16;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY_LEN: usize = 32;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_LEN: usize = 128;
/// Longest revocation reason, in bytes.
pub const MAX_REASON_LEN: usize = 256;
/// At most this many admin keys per organisation.
pub const MAX_ADMINS: usize = 8;
/// At most this many organisations in the consortium.
pub const MAX_ORGS: usize = 64;
/// Longest validator network address string, in bytes.
pub const MAX_ADDRESS_LEN: usize = 256;

/// Small, size-bounded free-form device metadata (model, firmware, ...).
pub type Metadata = BTreeMap<String, String>;

/// The governance record's tree key. `#` is not allowed in an [`OrgId`], so
/// no organisation's key can collide with it.
pub fn governance_key() -> Hash {
    hash(Domain::OrgId, b"#governance")
}

/// The tree key of the `index`-th validator (in key order) of the current set.
pub fn validator_key(index: u32) -> Hash {
    hash_parts(Domain::ValidatorSet, &[b"#validator", &index.to_le_bytes()])
}

/// An X25519 public key used for Noise key agreement.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
pub struct AgreementKey(pub [u8; 32]);

impl AgreementKey {
    /// The all-zero key is the one encoding that makes every Diffie-Hellman
    /// output zero whatever the peer's secret; no honest device uses it.
    pub fn is_degenerate(&self) -> bool {
        self.0 == [0; 32]
    }
}

impl fmt::Debug for AgreementKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgreementKey({}…)", &hex::encode(self.0)[..16])
    }
}

impl Serialize for AgreementKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for AgreementKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.as_bytes(), &mut out).map_err(serde::de::Error::custom)?;
        Ok(AgreementKey(out))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub enum DeviceStatus {
    Active,
    /// Terminal: a revoked name is never registered again.
    Revoked {
        height: u64,
        reason: String,
    },
}

/// One device's registry entry.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub version: u8,
    /// Stored in the record so a proof for one name can never pass as
    /// another's.
    pub name: DeviceName,
    pub signing_key: PublicKey,
    pub agreement_key: AgreementKey,
    /// `PublicKey::digest(Domain::DeviceKey)` of the next signing key, if the
    /// device pre-committed to it.
    pub next_key_commitment: Option<Hash>,
    /// 0 at registration, +1 per rotation.
    pub key_version: u64,
    pub status: DeviceStatus,
    pub registered_at: u64,
    pub last_changed: u64,
    /// Unix milliseconds after which the record must not be trusted.
    pub expires_at_ms: Option<u64>,
    pub metadata: Metadata,
}

impl Canonical for DeviceRecord {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

impl DeviceRecord {
    pub fn is_active(&self) -> bool {
        self.status == DeviceStatus::Active
    }

    /// True when the record has an expiry at or before `now_ms`.
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|t| t <= now_ms)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub enum OrgStatus {
    Active,
    /// Terminal: a removed organisation's id is never reused, so its device
    /// names stay unique forever.
    Removed {
        height: u64,
    },
}

/// One consortium member.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct OrgRecord {
    pub version: u8,
    pub id: OrgId,
    /// Sorted, distinct, 1..=MAX_ADMINS; an admin key belongs to one org only.
    pub admins: Vec<PublicKey>,
    pub status: OrgStatus,
    /// Devices of this org that are not revoked (an org is removable only at 0).
    pub active_devices: u64,
    pub added_at: u64,
}

impl Canonical for OrgRecord {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

impl OrgRecord {
    pub fn is_active(&self) -> bool {
        self.status == OrgStatus::Active
    }

    pub fn is_admin(&self, key: &PublicKey) -> bool {
        self.admins.binary_search(key).is_ok()
    }
}

/// A validator as governance knows it: consensus key, power and the network
/// address peers dial.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct ValidatorInfo {
    /// Implied in JSON (genesis files, RPC).
    #[serde(skip, default = "validator_info_version")]
    pub version: u8,
    pub key: PublicKey,
    pub power: u64,
    pub address: String,
}

fn validator_info_version() -> u8 {
    ValidatorInfo::VERSION
}

impl Canonical for ValidatorInfo {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

impl ValidatorInfo {
    pub fn new(key: PublicKey, power: u64, address: &str) -> Self {
        ValidatorInfo {
            version: Self::VERSION,
            key,
            power,
            address: address.to_string(),
        }
    }
}

/// Consortium-wide state: who governs, and the size of the validator set
/// (whose members are stored under [`validator_key`]).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct GovernanceRecord {
    pub version: u8,
    /// Distinct active organisations needed to approve a governance action
    /// (fixed at genesis).
    pub threshold: u32,
    /// Sequence number the next governance transaction must carry.
    pub sequence: u64,
    /// Active organisations, sorted.
    pub orgs: Vec<OrgId>,
    /// Epoch of the current validator set.
    pub epoch: u64,
    /// Number of validators (entries `validator_key(0..count)`).
    pub validator_count: u32,
}

impl Canonical for GovernanceRecord {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

/// Builds the consensus set of `validators` at `epoch`.
pub fn validator_set_of(
    epoch: u64,
    validators: &[ValidatorInfo],
) -> Result<ValidatorSet, ValidatorSetError> {
    ValidatorSet::new(
        epoch,
        validators
            .iter()
            .map(|v| Validator {
                key: v.key,
                power: v.power,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyreg_consensus::crypto::SigningKey;

    /// The largest record a valid transaction can produce still fits a tree leaf.
    #[test]
    fn largest_device_record_fits_a_tree_value() {
        let metadata = (0..MAX_METADATA_ENTRIES)
            .map(|i| (format!("{i:0>32}"), "v".repeat(MAX_METADATA_VALUE_LEN)))
            .collect();
        let local = "d".repeat(crate::names::MAX_DEVICE_LOCAL_LEN);
        let org = "o".repeat(crate::names::MAX_ORG_ID_LEN);
        let record = DeviceRecord {
            version: DeviceRecord::VERSION,
            name: DeviceName::new(&format!("{org}/{local}")).unwrap(),
            signing_key: SigningKey::from_seed([1; 32]).public(),
            agreement_key: AgreementKey([2; 32]),
            next_key_commitment: Some(Hash([3; 32])),
            key_version: u64::MAX,
            status: DeviceStatus::Revoked {
                height: u64::MAX,
                reason: "r".repeat(MAX_REASON_LEN),
            },
            registered_at: 1,
            last_changed: 2,
            expires_at_ms: Some(3),
            metadata,
        };
        assert!(record.to_bytes().len() <= crate::tree::MAX_VALUE_LEN);
        let governance = GovernanceRecord {
            version: GovernanceRecord::VERSION,
            threshold: 1,
            sequence: 0,
            orgs: (0..MAX_ORGS)
                .map(|i| OrgId::new(&format!("{i:0>32}")).unwrap())
                .collect(),
            epoch: 0,
            validator_count: 1,
        };
        assert!(governance.to_bytes().len() <= crate::tree::MAX_VALUE_LEN);
        let validator = ValidatorInfo::new(record.signing_key, 1, &"a".repeat(MAX_ADDRESS_LEN));
        assert!(validator.to_bytes().len() <= crate::tree::MAX_VALUE_LEN);
    }

    #[test]
    fn records_round_trip_and_reject_non_canonical_bytes() {
        let record = OrgRecord {
            version: OrgRecord::VERSION,
            id: OrgId::new("acme").unwrap(),
            admins: vec![SigningKey::from_seed([1; 32]).public()],
            status: OrgStatus::Active,
            active_devices: 3,
            added_at: 0,
        };
        let bytes = record.to_bytes();
        assert_eq!(OrgRecord::from_bytes(&bytes).unwrap(), record);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(OrgRecord::from_bytes(&trailing).is_err());
    }
}
