//! Batch updates: rebuilds only the paths the updates touch.
//!
//! The recursion returns, for each rewritten subtree, a [`Pending`] result
//! instead of writing leaves at once: a subtree left with a single leaf
//! collapses into that leaf, which then floats up to the highest position
//! whose prefix is unique to it. A leaf is written (or moved) only when its
//! parent knows it will stay an internal node.

use keyreg_consensus::crypto::Hash;

use super::hashing::EMPTY_SUBTREE_HASH;
use super::node::{
    nibble_at, Child, InternalNode, LeafNode, NibblePath, Node, NodeKey, StaleNode, KEY_NIBBLES,
    MAX_VALUE_LEN,
};
use super::{read_child, NodeReader, TreeBatch, TreeError};

/// One update: set `key` to the value, or delete it (`None`).
pub type Update = (Hash, Option<Vec<u8>>);

/// A leaf whose final position is not known yet.
enum PendingLeaf {
    /// An existing leaf, still stored at `node_key`; `read` holds it when
    /// this batch has already read it, so that moving it reads it once.
    Stored {
        node_key: NodeKey,
        hash: Hash,
        read: Option<LeafNode>,
    },
    /// A leaf created by this batch.
    New { leaf: LeafNode, hash: Hash },
}

impl PendingLeaf {
    fn hash(&self) -> Hash {
        match self {
            PendingLeaf::Stored { hash, .. } | PendingLeaf::New { hash, .. } => *hash,
        }
    }
}

/// The new content of a subtree.
#[derive(Default)]
enum Pending {
    #[default]
    Empty,
    Leaf(PendingLeaf),
    /// An internal node, already written (or kept) under `child.version`.
    Internal(Child),
}

/// Leaves to build a fresh subtree from, sorted by key.
type LeafSet = Vec<(Hash, PendingLeaf)>;

pub(super) fn apply<R: NodeReader + ?Sized>(
    reader: &R,
    base_version: Option<u64>,
    new_version: u64,
    updates: &[Update],
) -> Result<TreeBatch, TreeError> {
    if let Some(base) = base_version {
        if new_version <= base {
            return Err(TreeError::VersionNotIncreasing {
                base,
                new: new_version,
            });
        }
    }
    for (index, pair) in updates.windows(2).enumerate() {
        if matches!(pair, [a, b] if a.0 >= b.0) {
            return Err(TreeError::UnsortedUpdates { index: index + 1 });
        }
    }
    if let Some((key, Some(value))) = updates
        .iter()
        .find(|(_, v)| v.as_ref().is_some_and(|v| v.len() > MAX_VALUE_LEN))
    {
        return Err(TreeError::ValueTooLarge {
            key: *key,
            len: value.len(),
        });
    }

    let mut builder = BatchBuilder {
        reader,
        new_version,
        new_nodes: Vec::new(),
        stale_nodes: Vec::new(),
    };
    let root = match base_version {
        None => builder.build(NibblePath::ROOT, new_leaves(updates))?,
        Some(base) => {
            let root_key = NodeKey::root(base);
            let root = reader
                .get_node(&root_key)?
                .ok_or(TreeError::VersionNotFound(base))?;
            builder.update(root_key, root, None, updates)?
        }
    };
    let root_hash = builder.place_root(root)?;
    Ok(TreeBatch {
        version: new_version,
        root: root_hash,
        new_nodes: builder.new_nodes,
        stale_nodes: builder.stale_nodes,
    })
}

/// The inserted (not deleted) entries of `updates` as new leaves.
fn new_leaves(updates: &[Update]) -> LeafSet {
    updates
        .iter()
        .filter_map(|(key, value)| {
            let leaf = LeafNode {
                key: *key,
                value: value.clone()?,
            };
            let hash = leaf.hash();
            Some((*key, PendingLeaf::New { leaf, hash }))
        })
        .collect()
}

/// The child slot of `nibble` among a node's 16.
// Provably in bounds: the assert keeps the index below the array's length.
#[allow(clippy::indexing_slicing)]
fn slot(children: &mut [Pending; 16], nibble: u8) -> &mut Pending {
    assert!(nibble < 16, "nibble {nibble} out of range");
    &mut children[usize::from(nibble)]
}

/// Splits `items` (sorted by key) into runs sharing the key nibble at `depth`.
fn runs_by_nibble<'a, T>(
    items: &'a [T],
    depth: usize,
    key: impl Fn(&T) -> &Hash + 'a,
) -> impl Iterator<Item = (u8, std::ops::Range<usize>)> + 'a {
    let mut start = 0;
    std::iter::from_fn(move || {
        let first = items.get(start)?;
        let nibble = nibble_at(key(first), depth);
        let len = items
            .iter()
            .skip(start)
            .take_while(|item| nibble_at(key(item), depth) == nibble)
            .count();
        let range = start..start + len;
        start += len;
        Some((nibble, range))
    })
}

struct BatchBuilder<'r, R: ?Sized> {
    reader: &'r R,
    new_version: u64,
    new_nodes: Vec<(NodeKey, Node)>,
    stale_nodes: Vec<StaleNode>,
}

impl<R: NodeReader + ?Sized> BatchBuilder<'_, R> {
    fn read(&self, node_key: &NodeKey) -> Result<Node, TreeError> {
        self.reader
            .get_node(node_key)?
            .ok_or(TreeError::MissingNode(*node_key))
    }

    fn mark_stale(&mut self, node_key: NodeKey) {
        self.stale_nodes.push(StaleNode {
            stale_since_version: self.new_version,
            node_key,
        });
    }

    fn write(&mut self, path: NibblePath, node: Node) {
        self.new_nodes.push((
            NodeKey {
                version: self.new_version,
                path,
            },
            node,
        ));
    }

    /// Applies `updates` (all under `node_key.path`) to the stored `node`,
    /// whose hash the caller may already know from the parent.
    fn update(
        &mut self,
        node_key: NodeKey,
        node: Node,
        known_hash: Option<Hash>,
        updates: &[Update],
    ) -> Result<Pending, TreeError> {
        let path = node_key.path;
        match node {
            Node::Empty => {
                self.mark_stale(node_key);
                self.build(path, new_leaves(updates))
            }
            Node::Leaf(existing) => {
                let mut leaves = new_leaves(updates);
                if updates
                    .binary_search_by(|(k, _)| k.cmp(&existing.key))
                    .is_ok()
                {
                    // Replaced or deleted: the old leaf leaves the tree.
                    self.mark_stale(node_key);
                } else {
                    let at = leaves.partition_point(|(k, _)| *k < existing.key);
                    let hash = known_hash.unwrap_or_else(|| existing.hash());
                    let key = existing.key;
                    let stored = PendingLeaf::Stored {
                        node_key,
                        hash,
                        read: Some(existing),
                    };
                    leaves.insert(at, (key, stored));
                }
                self.build(path, leaves)
            }
            Node::Internal(internal) => {
                self.mark_stale(node_key);
                let mut children: [Pending; 16] = Default::default();
                for (nibble, child) in internal.children() {
                    *slot(&mut children, nibble) = kept(path.child(nibble), child);
                }
                for (nibble, range) in runs_by_nibble(updates, path.len(), |(k, _)| k) {
                    // The runs partition `updates`: every range is in bounds.
                    let run = updates.get(range).unwrap_or_default();
                    let child_path = path.child(nibble);
                    let result = match internal.child(nibble) {
                        None => self.build(child_path, new_leaves(run))?,
                        Some(child) => {
                            let child_key = NodeKey {
                                version: child.version,
                                path: child_path,
                            };
                            let child_node = read_child(self.reader, &child_key, child)?;
                            self.update(child_key, child_node, Some(child.hash), run)?
                        }
                    };
                    *slot(&mut children, nibble) = result;
                }
                self.assemble(path, children)
            }
        }
    }

    /// Builds the subtree at `path` holding exactly `leaves`.
    fn build(&mut self, path: NibblePath, mut leaves: LeafSet) -> Result<Pending, TreeError> {
        if leaves.len() <= 1 {
            return Ok(leaves
                .pop()
                .map_or(Pending::Empty, |(_, leaf)| Pending::Leaf(leaf)));
        }
        // Distinct keys differ in some nibble, so two leaves never reach full depth.
        assert!(path.len() < KEY_NIBBLES, "distinct keys share all nibbles");
        let runs: Vec<_> = runs_by_nibble(&leaves, path.len(), |(k, _)| k).collect();
        let mut children: [Pending; 16] = Default::default();
        for (nibble, range) in runs.into_iter().rev() {
            let group = leaves.split_off(range.start);
            *slot(&mut children, nibble) = self.build(path.child(nibble), group)?;
        }
        self.assemble(path, children)
    }

    /// Turns the new children of the node at `path` into that node: nothing,
    /// a lone leaf floating up, or a written internal node.
    fn assemble(
        &mut self,
        path: NibblePath,
        children: [Pending; 16],
    ) -> Result<Pending, TreeError> {
        let mut occupied: Vec<(u8, Pending)> = (0u8..)
            .zip(children)
            .filter(|(_, child)| !matches!(child, Pending::Empty))
            .collect();
        match occupied.as_slice() {
            [] => return Ok(Pending::Empty),
            [(_, Pending::Leaf(_))] => return Ok(occupied.swap_remove(0).1),
            _ => {}
        }
        let mut refs = Vec::with_capacity(occupied.len());
        for (nibble, pending) in occupied {
            let child = match pending {
                Pending::Internal(child) => child,
                Pending::Leaf(leaf) => {
                    let hash = leaf.hash();
                    let version = self.place_leaf(path.child(nibble), leaf, false)?;
                    Child {
                        version,
                        hash,
                        is_leaf: true,
                    }
                }
                Pending::Empty => continue,
            };
            refs.push((nibble, child));
        }
        let node = InternalNode::from_children(refs);
        let hash = node.hash();
        self.write(path, Node::Internal(node));
        Ok(Pending::Internal(Child {
            version: self.new_version,
            hash,
            is_leaf: false,
        }))
    }

    /// Stores `leaf` at `path` and returns the version it is stored under.
    /// An existing leaf already at `path` stays where it is unless
    /// `always_rewrite` (the root must exist under every version).
    fn place_leaf(
        &mut self,
        path: NibblePath,
        leaf: PendingLeaf,
        always_rewrite: bool,
    ) -> Result<u64, TreeError> {
        match leaf {
            PendingLeaf::Stored { node_key, .. } if node_key.path == path && !always_rewrite => {
                Ok(node_key.version)
            }
            PendingLeaf::Stored { node_key, read, .. } => {
                let leaf = match read {
                    Some(leaf) => leaf,
                    None => match self.read(&node_key)? {
                        Node::Leaf(leaf) => leaf,
                        _ => return Err(TreeError::CorruptNode(node_key)),
                    },
                };
                self.mark_stale(node_key);
                self.write(path, Node::Leaf(leaf));
                Ok(self.new_version)
            }
            PendingLeaf::New { leaf, .. } => {
                self.write(path, Node::Leaf(leaf));
                Ok(self.new_version)
            }
        }
    }

    /// Writes the new version's root and returns the tree's root hash.
    fn place_root(&mut self, root: Pending) -> Result<Hash, TreeError> {
        match root {
            Pending::Empty => {
                self.write(NibblePath::ROOT, Node::Empty);
                Ok(EMPTY_SUBTREE_HASH)
            }
            Pending::Leaf(leaf) => {
                let hash = leaf.hash();
                self.place_leaf(NibblePath::ROOT, leaf, true)?;
                Ok(hash)
            }
            Pending::Internal(child) => {
                // Every update rewrites the root's path, so the root is new.
                assert_eq!(child.version, self.new_version, "root was not rewritten");
                Ok(child.hash)
            }
        }
    }
}

/// An untouched child, as its parent's rebuild sees it.
fn kept(path: NibblePath, child: &Child) -> Pending {
    if child.is_leaf {
        Pending::Leaf(PendingLeaf::Stored {
            node_key: NodeKey {
                version: child.version,
                path,
            },
            hash: child.hash,
            read: None,
        })
    } else {
        Pending::Internal(*child)
    }
}
