//! Membership and non-membership proofs, checked without any store.

use std::fmt;

use bincode::de::Decoder;
use bincode::error::DecodeError;
use bincode::{Decode, Encode};
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::Hash;
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

use super::hashing::{
    internal_hash, key_bit, leaf_hash, share_prefix, value_hash, EMPTY_SUBTREE_HASH,
};

/// Most siblings a proof can have: one per bit of a 256-bit key.
pub const MAX_PROOF_SIBLINGS: usize = 256;

/// The leaf a proof's path ends at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofLeaf {
    pub key: Hash,
    pub value_hash: Hash,
}

impl ProofLeaf {
    pub fn hash(&self) -> Hash {
        leaf_hash(&self.key, &self.value_hash)
    }
}

/// A path from the root of the binary view of the tree down to where a key
/// lives or would live.
///
/// `siblings[i]` is the hash of the subtree beside the path at depth `i + 1`
/// (the path goes left at depth `i` when bit `i` of the key is 0). The path
/// ends at `leaf`: the key's own leaf (membership), another key's leaf whose
/// key shares the path's prefix (non-membership), or `None`, an empty
/// subtree (non-membership).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparseMerkleProof {
    pub version: u8,
    pub leaf: Option<ProofLeaf>,
    #[serde(deserialize_with = "deserialize_siblings")]
    pub siblings: Vec<Hash>,
}

impl Canonical for SparseMerkleProof {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

/// Decoding bounds the sibling count before allocating anything.
impl<Context> Decode<Context> for SparseMerkleProof {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let version = u8::decode(decoder)?;
        let leaf = Option::<ProofLeaf>::decode(decoder)?;
        let count = u64::decode(decoder)?;
        if count > MAX_PROOF_SIBLINGS as u64 {
            return Err(DecodeError::OtherString(format!(
                "proof has {count} siblings, at most {MAX_PROOF_SIBLINGS} allowed"
            )));
        }
        let count = count as usize;
        decoder.claim_container_read::<Hash>(count)?;
        let mut siblings = Vec::with_capacity(count);
        for _ in 0..count {
            siblings.push(Hash::decode(decoder)?);
        }
        Ok(SparseMerkleProof {
            version,
            leaf,
            siblings,
        })
    }
}
bincode::impl_borrow_decode!(SparseMerkleProof);

fn deserialize_siblings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
    struct BoundedSiblings;
    impl<'de> Visitor<'de> for BoundedSiblings {
        type Value = Vec<Hash>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "at most {MAX_PROOF_SIBLINGS} hex-encoded hashes")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Hash>, A::Error> {
            let mut siblings = Vec::new();
            while let Some(hash) = seq.next_element::<Hash>()? {
                if siblings.len() == MAX_PROOF_SIBLINGS {
                    return Err(serde::de::Error::custom(format!(
                        "proof has more than {MAX_PROOF_SIBLINGS} siblings"
                    )));
                }
                siblings.push(hash);
            }
            Ok(siblings)
        }
    }
    d.deserialize_seq(BoundedSiblings)
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProofError {
    #[error("unsupported proof version {0}")]
    UnsupportedVersion(u8),
    #[error("proof has {0} siblings, at most {MAX_PROOF_SIBLINGS} allowed")]
    TooManySiblings(usize),
    #[error("proof's leaf {leaf_key} does not share the queried key's first {depth} bits")]
    LeafOffPath { leaf_key: Hash, depth: usize },
    #[error("proof leads to root {computed}, expected {expected}")]
    RootMismatch { expected: Hash, computed: Hash },
    #[error("key is absent: its path ends in an empty subtree")]
    KeyAbsentEmptySubtree,
    #[error("key is absent: its path ends at the leaf of key {0}")]
    KeyAbsentOtherLeaf(Hash),
    #[error("key is present with value hash {actual}, not the claimed value's {claimed}")]
    ValueMismatch { claimed: Hash, actual: Hash },
    #[error("key is present (value hash {0}), not absent")]
    KeyPresent(Hash),
}

impl SparseMerkleProof {
    /// Checks that, in the tree with root `root`, `key` maps to `value`
    /// (`None`: `key` is absent). Errors say which part failed: the proof's
    /// shape, its hashes, or (for a proof that does match `root`) the claim.
    pub fn verify(&self, root: &Hash, key: &Hash, value: Option<&[u8]>) -> Result<(), ProofError> {
        if self.version != Self::VERSION {
            return Err(ProofError::UnsupportedVersion(self.version));
        }
        let depth = self.siblings.len();
        if depth > MAX_PROOF_SIBLINGS {
            return Err(ProofError::TooManySiblings(depth));
        }
        if let Some(leaf) = &self.leaf {
            if !share_prefix(&leaf.key, key, depth) {
                return Err(ProofError::LeafOffPath {
                    leaf_key: leaf.key,
                    depth,
                });
            }
        }
        let computed = self.root_for(key);
        if computed != *root {
            return Err(ProofError::RootMismatch {
                expected: *root,
                computed,
            });
        }
        match (&self.leaf, value) {
            (Some(leaf), Some(value)) if leaf.key == *key => {
                let claimed = value_hash(value);
                if claimed == leaf.value_hash {
                    Ok(())
                } else {
                    Err(ProofError::ValueMismatch {
                        claimed,
                        actual: leaf.value_hash,
                    })
                }
            }
            (Some(leaf), None) if leaf.key == *key => Err(ProofError::KeyPresent(leaf.value_hash)),
            (Some(leaf), Some(_)) => Err(ProofError::KeyAbsentOtherLeaf(leaf.key)),
            (None, Some(_)) => Err(ProofError::KeyAbsentEmptySubtree),
            (Some(_), None) | (None, None) => Ok(()),
        }
    }

    /// The root this proof leads to along `key`'s path.
    fn root_for(&self, key: &Hash) -> Hash {
        let bottom = self.leaf.map_or(EMPTY_SUBTREE_HASH, |leaf| leaf.hash());
        self.siblings
            .iter()
            .enumerate()
            .rev()
            .fold(bottom, |below, (depth, sibling)| {
                if key_bit(key, depth) {
                    internal_hash(sibling, &below)
                } else {
                    internal_hash(&below, sibling)
                }
            })
    }
}
