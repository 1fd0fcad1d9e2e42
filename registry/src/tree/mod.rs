//! keyreg's authenticated state tree: a versioned sparse Merkle tree over
//! 256-bit keys in the style of the Jellyfish Merkle Tree.
//!
//! * Storage is 16-ary: an [`InternalNode`] holds up to 16 child hashes, and a
//!   leaf sits at the shortest nibble prefix unique to its key.
//! * Hashing is binary: the root is the root of the compressed binary sparse
//!   Merkle tree over the key set (an empty subtree hashes to
//!   [`EMPTY_SUBTREE_HASH`], a subtree holding one leaf hashes to that leaf),
//!   so it depends only on the key/value set, and a [`SparseMerkleProof`]
//!   holds about `log2(n)` sibling hashes.
//! * Versions are block heights. [`StateTree::apply`] turns a sorted batch of
//!   updates into a [`TreeBatch`]: new nodes under the new version plus the
//!   nodes it made stale, which a store deletes later to prune old versions.
//!   Nodes are immutable, so every retained version stays readable.
//!
//! See `docs/state-tree.md` for the layout, proof format and figures.

mod apply;
mod hashing;
mod node;
mod proof;
mod store;
#[cfg(test)]
mod tests;

use keyreg_consensus::crypto::Hash;
use thiserror::Error;

pub use apply::Update;
pub use hashing::{internal_hash, leaf_hash, value_hash, EMPTY_SUBTREE_HASH};
pub use node::{
    nibble_at, Child, InternalNode, LeafNode, NibblePath, Node, NodeCodecError, NodeKey, StaleNode,
    KEY_NIBBLES, MAX_VALUE_LEN,
};
pub use proof::{ProofError, ProofLeaf, SparseMerkleProof, MAX_PROOF_SIBLINGS};
pub use store::MemNodeStore;

use keyreg_consensus::codec::Canonical;
use node::RangeContent;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TreeError {
    #[error("node store failed: {0}")]
    Store(String),
    #[error("stored node is malformed: {0}")]
    Codec(#[from] NodeCodecError),
    #[error("no tree at version {0} (never written or pruned)")]
    VersionNotFound(u64),
    #[error("tree node {0:?} is missing (pruned or store corrupt)")]
    MissingNode(NodeKey),
    #[error("tree node {0:?} is not the kind its parent says")]
    CorruptNode(NodeKey),
    #[error("new version {new} is not above base version {base}")]
    VersionNotIncreasing { base: u64, new: u64 },
    #[error("updates are not sorted by strictly increasing key (at index {index})")]
    UnsortedUpdates { index: usize },
    #[error("value of {len} bytes for key {key} exceeds the {MAX_VALUE_LEN}-byte limit")]
    ValueTooLarge { key: Hash, len: usize },
}

/// Read access to stored nodes (a RocksDB column family, [`MemNodeStore`]).
pub trait NodeReader {
    fn get_node(&self, key: &NodeKey) -> Result<Option<Node>, TreeError>;
}

/// Everything one version's updates change. A store writes `new_nodes` and
/// indexes `stale_nodes` atomically with the block that produced them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeBatch {
    /// The version these nodes belong to.
    pub version: u64,
    /// The tree's root hash at `version`.
    pub root: Hash,
    /// Nodes to store, each under a distinct key of this version.
    pub new_nodes: Vec<(NodeKey, Node)>,
    /// Nodes of earlier versions that `version`'s tree no longer uses.
    pub stale_nodes: Vec<StaleNode>,
}

/// The tree's operations over some node store.
pub struct StateTree<'r, R: NodeReader + ?Sized> {
    reader: &'r R,
}

impl<'r, R: NodeReader + ?Sized> StateTree<'r, R> {
    pub fn new(reader: &'r R) -> Self {
        StateTree { reader }
    }

    /// Applies `updates` (sorted by strictly increasing key; `None` deletes,
    /// deleting an absent key is a no-op) to the tree at `base_version`
    /// (`None`: the empty tree) and returns version `new_version`'s changes.
    /// Reads only the nodes on the updated keys' paths.
    pub fn apply(
        &self,
        base_version: Option<u64>,
        new_version: u64,
        updates: &[Update],
    ) -> Result<TreeBatch, TreeError> {
        apply::apply(self.reader, base_version, new_version, updates)
    }

    /// The root hash of the tree at `version`.
    pub fn root(&self, version: u64) -> Result<Hash, TreeError> {
        Ok(self.root_node(version)?.hash())
    }

    /// The value of `key` at `version`.
    pub fn get(&self, version: u64, key: &Hash) -> Result<Option<Vec<u8>>, TreeError> {
        let mut node_key = NodeKey::root(version);
        let mut node = self.root_node(version)?;
        // Each step goes one nibble deeper, so the walk ends within 65 nodes.
        for depth in 0..=KEY_NIBBLES {
            match node {
                Node::Empty => return Ok(None),
                Node::Leaf(leaf) => return Ok((leaf.key == *key).then_some(leaf.value)),
                Node::Internal(internal) => {
                    let nibble = nibble_at(key, depth);
                    let Some(child) = internal.child(nibble) else {
                        return Ok(None);
                    };
                    node_key = NodeKey {
                        version: child.version,
                        path: node_key.path.child(nibble),
                    };
                    node = read_child(self.reader, &node_key, child)?;
                }
            }
        }
        Err(TreeError::CorruptNode(node_key))
    }

    /// The value of `key` at `version` and a proof of it (membership) or of
    /// its absence (non-membership) under [`root(version)`](Self::root).
    pub fn get_with_proof(
        &self,
        version: u64,
        key: &Hash,
    ) -> Result<(Option<Vec<u8>>, SparseMerkleProof), TreeError> {
        let mut siblings = Vec::new();
        let mut node_key = NodeKey::root(version);
        let mut node = self.root_node(version)?;
        for depth in 0..=KEY_NIBBLES {
            match node {
                Node::Empty => return Ok((None, proof(None, siblings))),
                Node::Leaf(leaf) => return Ok(leaf_proof(leaf, key, siblings)),
                Node::Internal(internal) => {
                    let nibble = nibble_at(key, depth);
                    // Walk the node's 4-level binary view down to the nibble's slot.
                    let (mut lo, mut width) = (0u8, 16u8);
                    let child = loop {
                        match internal.range_content(lo, width) {
                            RangeContent::Empty => return Ok((None, proof(None, siblings))),
                            RangeContent::One(slot, child) if child.is_leaf => {
                                let leaf_key = NodeKey {
                                    version: child.version,
                                    path: node_key.path.child(slot),
                                };
                                let Node::Leaf(leaf) = read_child(self.reader, &leaf_key, child)?
                                else {
                                    return Err(TreeError::CorruptNode(leaf_key));
                                };
                                return Ok(leaf_proof(leaf, key, siblings));
                            }
                            RangeContent::One(_, child) if width == 1 => break *child,
                            RangeContent::One(..) | RangeContent::Several => {
                                let half = width / 2;
                                if nibble < lo + half {
                                    siblings.push(internal.range_hash(lo + half, half));
                                } else {
                                    siblings.push(internal.range_hash(lo, half));
                                    lo += half;
                                }
                                width = half;
                            }
                        }
                    };
                    node_key = NodeKey {
                        version: child.version,
                        path: node_key.path.child(nibble),
                    };
                    node = read_child(self.reader, &node_key, &child)?;
                }
            }
        }
        Err(TreeError::CorruptNode(node_key))
    }

    fn root_node(&self, version: u64) -> Result<Node, TreeError> {
        self.reader
            .get_node(&NodeKey::root(version))?
            .ok_or(TreeError::VersionNotFound(version))
    }
}

/// Reads the node `child` points to, checking it is the kind promised (and
/// that nothing but a leaf sits at full depth), so a corrupt store yields an
/// error rather than a bottomless walk.
pub(crate) fn read_child<R: NodeReader + ?Sized>(
    reader: &R,
    node_key: &NodeKey,
    child: &Child,
) -> Result<Node, TreeError> {
    let node = reader
        .get_node(node_key)?
        .ok_or(TreeError::MissingNode(*node_key))?;
    let is_leaf = matches!(node, Node::Leaf(_));
    if is_leaf != child.is_leaf
        || matches!(node, Node::Empty)
        || (node_key.path.len() == KEY_NIBBLES && !is_leaf)
    {
        return Err(TreeError::CorruptNode(*node_key));
    }
    Ok(node)
}

fn proof(leaf: Option<ProofLeaf>, siblings: Vec<Hash>) -> SparseMerkleProof {
    debug_assert!(siblings.len() <= MAX_PROOF_SIBLINGS);
    SparseMerkleProof {
        version: SparseMerkleProof::VERSION,
        leaf,
        siblings,
    }
}

fn leaf_proof(
    leaf: LeafNode,
    key: &Hash,
    siblings: Vec<Hash>,
) -> (Option<Vec<u8>>, SparseMerkleProof) {
    let proof_leaf = ProofLeaf {
        key: leaf.key,
        value_hash: leaf.value_hash(),
    };
    let value = (leaf.key == *key).then_some(leaf.value);
    (value, proof(Some(proof_leaf), siblings))
}
