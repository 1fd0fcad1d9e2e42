//! Stored tree nodes, their keys and their canonical byte encodings.
//!
//! A RocksDB column family (or [`MemNodeStore`](super::MemNodeStore)) maps
//! [`NodeKey::to_bytes`] to [`Node::to_bytes`]; a second one, the stale
//! index, maps a version to the keys of the nodes it made stale
//! ([`NodeKey::list_to_bytes`]). Both keys start with a big-endian version
//! so that byte order is version order: all nodes written at one version are
//! contiguous, and pruning walks the stale index from its first key up to a
//! version bound. ([`StaleNode::to_bytes`], one stale entry per node, is the
//! index's earlier format, still read.)

use std::fmt;

use keyreg_consensus::crypto::Hash;
use thiserror::Error;

use super::hashing::{internal_hash, leaf_hash, value_hash, EMPTY_SUBTREE_HASH};

/// Number of 4-bit nibbles in a 256-bit key: the deepest a node can sit.
pub const KEY_NIBBLES: usize = 64;

/// Largest value a leaf may hold. Device records are a few hundred bytes.
pub const MAX_VALUE_LEN: usize = 4096;

/// Format byte that starts every encoded [`Node`].
const NODE_FORMAT_VERSION: u8 = 1;
const KIND_EMPTY: u8 = 0;
const KIND_INTERNAL: u8 = 1;
const KIND_LEAF: u8 = 2;
/// Encoded size of one child of an internal node: version then hash.
const CHILD_LEN: usize = 8 + 32;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NodeCodecError {
    #[error("encoded {what} is {found} bytes, expected {expected}")]
    Length {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("unsupported node format version {0}")]
    FormatVersion(u8),
    #[error("unknown node kind {0}")]
    UnknownKind(u8),
    #[error(
        "internal node bitmaps are inconsistent (children {existence:#06x}, leaves {leaves:#06x})"
    )]
    Bitmaps { existence: u16, leaves: u16 },
    #[error("leaf value of {0} bytes exceeds the {MAX_VALUE_LEN}-byte limit")]
    ValueTooLarge(usize),
    #[error("nibble path of {0} nibbles exceeds {KEY_NIBBLES}")]
    PathTooLong(usize),
    #[error("nibble path has non-zero padding")]
    PathPadding,
}

/// The `index`-th 4-bit nibble of `key`, most significant first.
pub fn nibble_at(key: &Hash, index: usize) -> u8 {
    nibble_of(&key.0, index)
}

fn nibble_of(bytes: &[u8; 32], index: usize) -> u8 {
    assert!(index < KEY_NIBBLES, "nibble index {index} out of range");
    let byte = bytes.get(index / 2).copied().unwrap_or_default();
    if index.is_multiple_of(2) {
        byte >> 4
    } else {
        byte & 0x0f
    }
}

/// The first `len` nibbles of some key: a node's position in the tree.
/// Nibbles past `len` are kept zero, so equality and order are structural.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NibblePath {
    len: u8,
    bytes: [u8; 32],
}

impl NibblePath {
    /// The root's (empty) path.
    pub const ROOT: NibblePath = NibblePath {
        len: 0,
        bytes: [0; 32],
    };

    /// The first `len` nibbles of `key`.
    pub fn prefix_of(key: &Hash, len: usize) -> Self {
        assert!(len <= KEY_NIBBLES, "prefix of {len} nibbles is too long");
        let mut bytes = [0u8; 32];
        for (to, from) in bytes.iter_mut().zip(key.0).take(len.div_ceil(2)) {
            *to = from;
        }
        if len % 2 == 1 {
            if let Some(last) = bytes.get_mut(len / 2) {
                *last &= 0xf0;
            }
        }
        NibblePath {
            len: len as u8,
            bytes,
        }
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `index`-th nibble (`index < len`).
    pub fn nibble(&self, index: usize) -> u8 {
        assert!(index < self.len(), "nibble {index} beyond path length");
        nibble_of(&self.bytes, index)
    }

    /// This path extended by one nibble.
    pub fn child(&self, nibble: u8) -> Self {
        assert!(self.len() < KEY_NIBBLES, "path already at full depth");
        assert!(nibble < 16, "nibble {nibble} out of range");
        let mut out = *self;
        let i = self.len();
        // In range: i < KEY_NIBBLES, so i / 2 < 32.
        if let Some(byte) = out.bytes.get_mut(i / 2) {
            if i.is_multiple_of(2) {
                *byte = nibble << 4;
            } else {
                *byte |= nibble;
            }
        }
        out.len += 1;
        out
    }

    fn packed(&self) -> &[u8] {
        // len <= KEY_NIBBLES, so at most all 32 bytes.
        self.bytes
            .get(..self.len().div_ceil(2))
            .unwrap_or(&self.bytes)
    }
}

impl fmt::Debug for NibblePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nibbles: String = (0..self.len())
            .map(|i| char::from_digit(u32::from(self.nibble(i)), 16).unwrap_or('?'))
            .collect();
        write!(f, "NibblePath({nibbles})")
    }
}

/// Where a node is stored: the version (block height) that wrote it and its
/// position. A node is immutable once written; newer versions reference it
/// until a change on its path replaces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    pub version: u64,
    pub path: NibblePath,
}

impl NodeKey {
    /// The root node of `version`.
    pub fn root(version: u64) -> Self {
        NodeKey {
            version,
            path: NibblePath::ROOT,
        }
    }

    /// `version` (8 bytes big-endian) || nibble count (1 byte) || nibbles
    /// packed two per byte (odd count: low half of the last byte is zero).
    /// Byte order of these encodings is the keys' order (`Ord`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write_bytes(&mut out);
        out
    }

    /// The length of [`to_bytes`](Self::to_bytes).
    pub fn encoded_len(&self) -> usize {
        9 + self.path.packed().len()
    }

    /// Appends [`to_bytes`](Self::to_bytes) to `out`.
    pub fn write_bytes(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.version.to_be_bytes());
        out.push(self.path.len);
        out.extend_from_slice(self.path.packed());
    }

    /// Parses exactly the bytes [`to_bytes`](Self::to_bytes) produces.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, NodeCodecError> {
        let (key, rest) = Self::split_from(bytes)?;
        if !rest.is_empty() {
            return Err(NodeCodecError::Length {
                what: "node key",
                expected: bytes.len() - rest.len(),
                found: bytes.len(),
            });
        }
        Ok(key)
    }

    /// Parses the key that `bytes` starts with; returns it and the bytes
    /// after it (keys are self-delimiting: the nibble count gives the
    /// length).
    fn split_from(bytes: &[u8]) -> Result<(Self, &[u8]), NodeCodecError> {
        let (version_bytes, rest) =
            bytes
                .split_first_chunk::<8>()
                .ok_or(NodeCodecError::Length {
                    what: "node key",
                    expected: 9,
                    found: bytes.len(),
                })?;
        let (&len, rest) = rest.split_first().ok_or(NodeCodecError::Length {
            what: "node key",
            expected: 9,
            found: bytes.len(),
        })?;
        let len = usize::from(len);
        if len > KEY_NIBBLES {
            return Err(NodeCodecError::PathTooLong(len));
        }
        let (packed, rest) =
            rest.split_at_checked(len.div_ceil(2))
                .ok_or(NodeCodecError::Length {
                    what: "node key",
                    expected: 9 + len.div_ceil(2),
                    found: bytes.len(),
                })?;
        // `packed` is at most 32 bytes: len <= KEY_NIBBLES was checked.
        let mut path_bytes = [0u8; 32];
        for (to, from) in path_bytes.iter_mut().zip(packed) {
            *to = *from;
        }
        if len % 2 == 1 && path_bytes.get(len / 2).is_some_and(|b| b & 0x0f != 0) {
            return Err(NodeCodecError::PathPadding);
        }
        let key = NodeKey {
            version: u64::from_be_bytes(*version_bytes),
            path: NibblePath {
                len: len as u8,
                bytes: path_bytes,
            },
        };
        Ok((key, rest))
    }

    /// The keys' [`to_bytes`](Self::to_bytes) one after another: a stored
    /// list, such as the nodes one version made stale.
    pub fn list_to_bytes<'a>(keys: impl IntoIterator<Item = &'a NodeKey>) -> Vec<u8> {
        let mut out = Vec::new();
        for key in keys {
            key.write_bytes(&mut out);
        }
        out
    }

    /// Parses exactly the bytes [`list_to_bytes`](Self::list_to_bytes)
    /// produces.
    pub fn list_from_bytes(mut bytes: &[u8]) -> Result<Vec<Self>, NodeCodecError> {
        let mut keys = Vec::new();
        while !bytes.is_empty() {
            let (key, rest) = Self::split_from(bytes)?;
            keys.push(key);
            bytes = rest;
        }
        Ok(keys)
    }
}

/// An entry of the stale index: `node_key` is not part of any tree version
/// `>= stale_since_version`, so it may be deleted once no version older than
/// that is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StaleNode {
    pub stale_since_version: u64,
    pub node_key: NodeKey,
}

impl StaleNode {
    /// `stale_since_version` (8 bytes big-endian) || `node_key.to_bytes()`,
    /// so iteration from the start visits the oldest stale nodes first.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + self.node_key.path.packed().len());
        out.extend_from_slice(&self.stale_since_version.to_be_bytes());
        self.node_key.write_bytes(&mut out);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, NodeCodecError> {
        let (since, rest) = bytes
            .split_first_chunk::<8>()
            .ok_or(NodeCodecError::Length {
                what: "stale index key",
                expected: 17,
                found: bytes.len(),
            })?;
        Ok(StaleNode {
            stale_since_version: u64::from_be_bytes(*since),
            node_key: NodeKey::from_bytes(rest)?,
        })
    }
}

/// A reference from an internal node to one of its children.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Child {
    /// Version of the child's [`NodeKey`]; its path is the parent's plus the nibble.
    pub version: u64,
    pub hash: Hash,
    pub is_leaf: bool,
}

/// A 16-ary node: up to 16 children, indexed by the next nibble of the key.
///
/// Its hash is that of the 4-level binary tree over the 16 slots, where an
/// empty slot range hashes to [`EMPTY_SUBTREE_HASH`] and a range holding a
/// single leaf hashes to that leaf (leaves float up in the binary view too).
/// The tree's root is thus exactly the root of the compressed binary sparse
/// Merkle tree over the key set, and proofs are binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalNode {
    /// Bit `n` set: slot `n` is occupied.
    existence: u16,
    /// Bit `n` set: slot `n` holds a leaf (subset of `existence`).
    leaves: u16,
    /// Occupied slots in nibble order.
    children: Vec<Child>,
}

/// Mask of the slots `lo .. lo + width`.
fn range_mask(lo: u8, width: u8) -> u16 {
    debug_assert!(width.is_power_of_two() && u32::from(lo) + u32::from(width) <= 16);
    (((1u32 << width) - 1) << lo) as u16
}

impl InternalNode {
    /// Builds a node from `(nibble, child)` pairs in strictly increasing nibble order.
    ///
    /// Panics on an invalid shape (no children, a lone leaf child, unsorted
    /// nibbles): the tree never builds one.
    pub(crate) fn from_children(children: Vec<(u8, Child)>) -> Self {
        let mut node = InternalNode {
            existence: 0,
            leaves: 0,
            children: Vec::with_capacity(children.len()),
        };
        for (nibble, child) in children {
            assert!(nibble < 16, "nibble {nibble} out of range");
            let bit = 1u16 << nibble;
            assert!(
                node.existence < bit,
                "children must come in strictly increasing nibble order"
            );
            node.existence |= bit;
            if child.is_leaf {
                node.leaves |= bit;
            }
            node.children.push(child);
        }
        assert!(node.is_valid_shape(), "internal node shape {node:?}");
        node
    }

    /// A stored internal node has children, and is not a single leaf (which
    /// would have been stored as the leaf itself, one level up).
    fn is_valid_shape(&self) -> bool {
        self.existence != 0
            && self.leaves & !self.existence == 0
            && !(self.existence.count_ones() == 1 && self.leaves != 0)
            && self.children.len() == self.existence.count_ones() as usize
    }

    /// The child in slot `nibble`, if any.
    pub fn child(&self, nibble: u8) -> Option<&Child> {
        assert!(nibble < 16, "nibble {nibble} out of range");
        let bit = 1u16 << nibble;
        if self.existence & bit == 0 {
            return None;
        }
        self.children
            .get((self.existence & (bit - 1)).count_ones() as usize)
    }

    /// Occupied slots as `(nibble, child)` in nibble order.
    pub fn children(&self) -> impl Iterator<Item = (u8, &Child)> + '_ {
        (0..16u8)
            .filter(|n| self.existence & (1 << n) != 0)
            .zip(self.children.iter())
    }

    pub fn hash(&self) -> Hash {
        self.range_hash(0, 16)
    }

    /// What occupies the binary subtree over slots `lo .. lo + width`.
    pub(crate) fn range_content(&self, lo: u8, width: u8) -> RangeContent<'_> {
        let present = self.existence & range_mask(lo, width);
        if present == 0 {
            return RangeContent::Empty;
        }
        if present.count_ones() == 1 && (self.leaves & present != 0 || width == 1) {
            let nibble = present.trailing_zeros() as u8;
            if let Some(child) = self.child(nibble) {
                return RangeContent::One(nibble, child);
            }
        }
        RangeContent::Several
    }

    /// Hash of the binary subtree over slots `lo .. lo + width`.
    pub(crate) fn range_hash(&self, lo: u8, width: u8) -> Hash {
        match self.range_content(lo, width) {
            RangeContent::Empty => EMPTY_SUBTREE_HASH,
            RangeContent::One(_, child) => child.hash,
            RangeContent::Several => {
                let half = width / 2;
                internal_hash(
                    &self.range_hash(lo, half),
                    &self.range_hash(lo + half, half),
                )
            }
        }
    }
}

/// The content of a binary slot range of an internal node.
pub(crate) enum RangeContent<'a> {
    Empty,
    /// A lone leaf, or (for a single slot) any lone child: the range's hash
    /// is the child's.
    One(u8, &'a Child),
    /// More than one leaf below: hashed as an inner binary node.
    Several,
}

/// A key and its full value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafNode {
    pub key: Hash,
    pub value: Vec<u8>,
}

impl LeafNode {
    pub fn value_hash(&self) -> Hash {
        value_hash(&self.value)
    }

    pub fn hash(&self) -> Hash {
        leaf_hash(&self.key, &self.value_hash())
    }
}

/// A stored node. `Empty` appears only as the root of an empty tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Empty,
    Internal(InternalNode),
    Leaf(LeafNode),
}

impl Node {
    pub fn hash(&self) -> Hash {
        match self {
            Node::Empty => EMPTY_SUBTREE_HASH,
            Node::Internal(internal) => internal.hash(),
            Node::Leaf(leaf) => leaf.hash(),
        }
    }

    /// Canonical encoding: format byte, kind byte, then
    /// * internal: children bitmap (u16 LE), leaf bitmap (u16 LE), and per
    ///   child in nibble order its version (u64 LE) and hash (32 bytes);
    /// * leaf: key (32 bytes), value length (u32 LE), value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write_bytes(&mut out);
        out
    }

    /// The length of [`to_bytes`](Self::to_bytes).
    pub fn encoded_len(&self) -> usize {
        match self {
            Node::Empty => 2,
            Node::Internal(internal) => 6 + CHILD_LEN * internal.children.len(),
            Node::Leaf(leaf) => 38 + leaf.value.len(),
        }
    }

    /// Appends [`to_bytes`](Self::to_bytes) to `out`.
    pub fn write_bytes(&self, out: &mut Vec<u8>) {
        match self {
            Node::Empty => out.extend_from_slice(&[NODE_FORMAT_VERSION, KIND_EMPTY]),
            Node::Internal(internal) => {
                out.extend_from_slice(&[NODE_FORMAT_VERSION, KIND_INTERNAL]);
                out.extend_from_slice(&internal.existence.to_le_bytes());
                out.extend_from_slice(&internal.leaves.to_le_bytes());
                for child in &internal.children {
                    out.extend_from_slice(&child.version.to_le_bytes());
                    out.extend_from_slice(&child.hash.0);
                }
            }
            Node::Leaf(leaf) => {
                out.extend_from_slice(&[NODE_FORMAT_VERSION, KIND_LEAF]);
                out.extend_from_slice(&leaf.key.0);
                // Leaves are built only from values within MAX_VALUE_LEN.
                out.extend_from_slice(&(leaf.value.len() as u32).to_le_bytes());
                out.extend_from_slice(&leaf.value);
            }
        }
    }

    /// Decodes exactly the bytes [`to_bytes`](Self::to_bytes) produces for
    /// some valid node; anything else is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, NodeCodecError> {
        let length = |expected: usize| NodeCodecError::Length {
            what: "node",
            expected,
            found: bytes.len(),
        };
        let [format, kind, body @ ..] = bytes else {
            return Err(length(2));
        };
        if *format != NODE_FORMAT_VERSION {
            return Err(NodeCodecError::FormatVersion(*format));
        }
        match *kind {
            KIND_EMPTY if body.is_empty() => Ok(Node::Empty),
            KIND_EMPTY => Err(length(2)),
            KIND_INTERNAL => {
                let Some((bitmaps, children_bytes)) = body.split_first_chunk::<4>() else {
                    return Err(length(6));
                };
                let existence = u16::from_le_bytes([bitmaps[0], bitmaps[1]]);
                let leaves = u16::from_le_bytes([bitmaps[2], bitmaps[3]]);
                let count = existence.count_ones() as usize;
                if children_bytes.len() != count * CHILD_LEN {
                    return Err(length(6 + count * CHILD_LEN));
                }
                let children = children_bytes
                    .chunks_exact(CHILD_LEN)
                    .zip((0..16u8).filter(|n| existence & (1 << n) != 0))
                    .map(|(chunk, nibble)| {
                        let (version, hash) = chunk.split_at(8);
                        let mut version_bytes = [0u8; 8];
                        version_bytes.copy_from_slice(version);
                        let mut hash_bytes = [0u8; 32];
                        hash_bytes.copy_from_slice(hash);
                        Child {
                            version: u64::from_le_bytes(version_bytes),
                            hash: Hash(hash_bytes),
                            is_leaf: leaves & (1 << nibble) != 0,
                        }
                    })
                    .collect();
                let node = InternalNode {
                    existence,
                    leaves,
                    children,
                };
                if !node.is_valid_shape() {
                    return Err(NodeCodecError::Bitmaps { existence, leaves });
                }
                Ok(Node::Internal(node))
            }
            KIND_LEAF => {
                let Some((key, rest)) = body.split_first_chunk::<32>() else {
                    return Err(length(38));
                };
                let Some((value_len, value)) = rest.split_first_chunk::<4>() else {
                    return Err(length(38));
                };
                let value_len = u32::from_le_bytes(*value_len) as usize;
                if value_len > MAX_VALUE_LEN {
                    return Err(NodeCodecError::ValueTooLarge(value_len));
                }
                if value.len() != value_len {
                    return Err(length(38 + value_len));
                }
                Ok(Node::Leaf(LeafNode {
                    key: Hash(*key),
                    value: value.to_vec(),
                }))
            }
            other => Err(NodeCodecError::UnknownKind(other)),
        }
    }
}
