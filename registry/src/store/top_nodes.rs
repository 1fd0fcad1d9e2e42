//! The head tree's top levels, held in memory (see [`TopNodes`]).

use std::collections::HashMap;

use crate::tree::{read_child, Node, NodeKey, NodeReader, TreeBatch, TreeError};

/// Nodes at paths of at most this many nibbles are held.
const TOP_DEPTH: usize = 3;

/// Node positions at paths of at most [`TOP_DEPTH`] nibbles (1 + 16 + 256 +
/// 4096): the most the map holds, about 3.5 MB of internal nodes.
const TOP_POSITIONS: usize = 4369;

/// The internal nodes of the head version's tree at paths of at most
/// [`TOP_DEPTH`] nibbles. Every tree update walks down through them again
/// (a block of a few thousand updates rewrites nearly all of them), and so
/// does every proof: from the store each such read is a memtable or table
/// search and a decode, here a hash look-up and a copy. Nodes are immutable
/// under their key, so a hit is always what the store holds. An update
/// drops the nodes it made stale, so the map holds the head's nodes only, at
/// most one per position; reads of older versions go to the store.
#[derive(Debug, Default)]
pub(super) struct TopNodes {
    nodes: HashMap<NodeKey, Node>,
}

fn is_top(key: &NodeKey, node: &Node) -> bool {
    key.path.len() <= TOP_DEPTH && matches!(node, Node::Internal(_))
}

impl TopNodes {
    /// The top levels of the tree at `version`, read from `reader`.
    pub(super) fn load<R: NodeReader + ?Sized>(
        reader: &R,
        version: u64,
    ) -> Result<Self, TreeError> {
        let mut top = TopNodes::default();
        let root_key = NodeKey::root(version);
        let root = reader
            .get_node(&root_key)?
            .ok_or(TreeError::VersionNotFound(version))?;
        let mut pending = vec![(root_key, root)];
        while let Some((key, node)) = pending.pop() {
            let Node::Internal(internal) = &node else {
                continue;
            };
            if key.path.len() < TOP_DEPTH {
                for (nibble, child) in internal.children().filter(|(_, child)| !child.is_leaf) {
                    let child_key = NodeKey {
                        version: child.version,
                        path: key.path.child(nibble),
                    };
                    // Checked as every walk checks it: a corrupt store
                    // fails the open instead of a later read.
                    pending.push((child_key, read_child(reader, &child_key, child)?));
                }
            }
            top.nodes.insert(key, node);
            assert!(
                top.nodes.len() <= TOP_POSITIONS,
                "more top nodes than positions"
            );
        }
        Ok(top)
    }

    pub(super) fn get(&self, key: &NodeKey) -> Option<&Node> {
        // Most reads are of deeper keys: no need to hash them.
        if key.path.len() > TOP_DEPTH {
            return None;
        }
        self.nodes.get(key)
    }

    /// Follows the head to the version `batch` wrote (once it is stored).
    pub(super) fn apply(&mut self, batch: TreeBatch) {
        // Most stale nodes are deeper than the map reaches.
        for stale in &batch.stale_nodes {
            if stale.node_key.path.len() <= TOP_DEPTH {
                self.nodes.remove(&stale.node_key);
            }
        }
        self.nodes.extend(
            batch
                .new_nodes
                .into_iter()
                .filter(|(key, node)| is_top(key, node)),
        );
        // A batch that left a replaced node unmarked would break this (and
        // pruning, which relies on the same marks).
        assert!(
            self.nodes.len() <= TOP_POSITIONS,
            "{} top nodes for {TOP_POSITIONS} positions: a tree update left a replaced node unmarked",
            self.nodes.len()
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::tree::{MemNodeStore, StateTree, Update};
    use keyreg_consensus::crypto::Hash;

    /// Updates over a small key space (so later batches replace and delete
    /// earlier keys and the top levels fill, collapse and refill), sorted
    /// and deduplicated as the tree requires.
    fn batches() -> impl Strategy<Value = Vec<Vec<Update>>> {
        let update = (0u16..6000, prop::option::weighted(0.8, any::<u8>())).prop_map(|(k, v)| {
            let mut key = [0u8; 32];
            key[..2].copy_from_slice(&k.to_be_bytes());
            // Spread the keys over the first nibbles too.
            key[0] = key[0].wrapping_mul(37) ^ key[1];
            (Hash(key), v.map(|b| vec![b; 3]))
        });
        prop::collection::vec(prop::collection::vec(update, 0..1500), 1..8).prop_map(|batches| {
            batches
                .into_iter()
                .map(|mut batch| {
                    batch.sort_by_key(|update| update.0);
                    batch.dedup_by(|later, earlier| later.0 == earlier.0);
                    batch
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Followed batch by batch, the map is exactly what loading the
        /// head's top levels from the store gives, and every entry is the
        /// stored node.
        #[test]
        fn follows_the_head_as_loading_it_would(batches in batches()) {
            let mut store = MemNodeStore::new();
            let genesis = StateTree::new(&store).apply(None, 0, &[]).unwrap();
            store.write(&genesis);
            let mut top = TopNodes::load(&store, 0).unwrap();
            for (version, updates) in (1u64..).zip(&batches) {
                let batch = StateTree::new(&store).apply(Some(version - 1), version, updates).unwrap();
                store.write(&batch);
                top.apply(batch);
                let loaded = TopNodes::load(&store, version).unwrap();
                prop_assert_eq!(&top.nodes, &loaded.nodes);
                for (key, node) in &top.nodes {
                    prop_assert_eq!(store.get_node(key).unwrap(), Some(node.clone()));
                }
                prop_assert!(top.len() <= TOP_POSITIONS);
            }
        }
    }

    #[test]
    fn a_corrupt_store_fails_the_load() {
        let mut store = MemNodeStore::new();
        let updates: Vec<Update> = (0u8..=255)
            .map(|i| (Hash([i; 32]), Some(vec![i])))
            .collect();
        let batch = StateTree::new(&store).apply(None, 1, &updates).unwrap();
        store.write(&batch);
        assert!(TopNodes::load(&store, 1).is_ok());
        // An internal node at depth 1 replaced by a leaf its parent does not expect.
        let (key, _) = batch
            .new_nodes
            .iter()
            .find(|(key, node)| key.path.len() == 1 && matches!(node, Node::Internal(_)))
            .unwrap();
        let leaf = crate::tree::LeafNode {
            key: Hash([0; 32]),
            value: vec![0],
        };
        store.write(&TreeBatch {
            new_nodes: vec![(*key, Node::Leaf(leaf))],
            stale_nodes: Vec::new(),
            ..batch.clone()
        });
        assert_eq!(
            TopNodes::load(&store, 1).unwrap_err(),
            TreeError::CorruptNode(*key)
        );
        assert_eq!(
            TopNodes::load(&store, 2).unwrap_err(),
            TreeError::VersionNotFound(2)
        );
    }

    #[test]
    fn a_large_tree_fills_every_position_and_no_more() {
        let mut store = MemNodeStore::new();
        let updates: Vec<Update> = (0u32..200_000)
            .map(|i| {
                let key = keyreg_consensus::crypto::hash(
                    keyreg_consensus::crypto::Domain::Transaction,
                    &i.to_be_bytes(),
                );
                (key, Some(vec![1]))
            })
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect();
        let batch = StateTree::new(&store).apply(None, 1, &updates).unwrap();
        store.write(&batch);
        let top = TopNodes::load(&store, 1).unwrap();
        assert_eq!(top.len(), TOP_POSITIONS);
    }
}
