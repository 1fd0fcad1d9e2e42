//! The head tree's top levels, held in memory (see [`TopNodes`]).

use crate::tree::{read_child, NibblePath, Node, NodeKey, NodeReader, TreeBatch, TreeError};

/// Nodes at paths of at most this many nibbles are held.
/// (Four levels took 50 MB at 10^7 devices and measured no faster:
/// docs/benchmarks.md, sessions 18 and 19.)
const TOP_DEPTH: usize = 3;

/// Node positions at paths of at most [`TOP_DEPTH`] nibbles (1 + 16 + 256 +
/// 4096): the most the map holds, about 3.5 MB of internal nodes.
const TOP_POSITIONS: usize = positions_up_to(TOP_DEPTH);

const fn positions_up_to(depth: usize) -> usize {
    let (mut total, mut level, mut d) = (0, 1, 0);
    while d <= depth {
        total += level;
        level *= 16;
        d += 1;
    }
    total
}

/// The internal nodes of the head version's tree at paths of at most
/// [`TOP_DEPTH`] nibbles. Every tree update walks down through them again
/// (a block of a few thousand updates rewrites nearly all of them), and so
/// does every proof: from the store each such read is a memtable or table
/// search and a decode, here an index and a copy. Nodes are immutable under
/// their key, so a hit is always what the store holds. The head's tree has
/// at most one node per position, so each position has one slot (level by
/// level, nibbles in order: no hashing); an update empties the slots of the
/// nodes it made stale before it fills those of its new nodes, and reads of
/// older versions miss (the slot's key differs) and go to the store.
#[derive(Debug)]
pub(super) struct TopNodes {
    slots: Box<[Option<(NodeKey, Node)>]>,
}

impl Default for TopNodes {
    fn default() -> Self {
        TopNodes {
            slots: vec![None; TOP_POSITIONS].into_boxed_slice(),
        }
    }
}

fn is_top(key: &NodeKey, node: &Node) -> bool {
    key.path.len() <= TOP_DEPTH && matches!(node, Node::Internal(_))
}

/// The slot of the position `path`, if it is within [`TOP_DEPTH`]: the
/// positions of the levels above it, then its nibbles as a number.
fn slot_of(path: &NibblePath) -> Option<usize> {
    let depth = path.len();
    if depth > TOP_DEPTH {
        return None;
    }
    let within = (0..depth).fold(0, |index, i| index * 16 + usize::from(path.nibble(i)));
    Some(positions_up_to(depth) - 16usize.pow(depth as u32) + within)
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
            top.fill(key, node);
        }
        Ok(top)
    }

    /// Puts a top node in its (empty) slot.
    fn fill(&mut self, key: NodeKey, node: Node) {
        let slot = slot_of(&key.path).and_then(|index| self.slots.get_mut(index));
        // A batch that left a replaced node unmarked would break this (and
        // pruning, which relies on the same marks).
        assert!(
            slot.as_ref().is_some_and(|slot| slot.is_none()),
            "top position {:?} is taken or too deep: a tree update left a replaced node unmarked",
            key.path
        );
        if let Some(slot) = slot {
            *slot = Some((key, node));
        }
    }

    pub(super) fn get(&self, key: &NodeKey) -> Option<&Node> {
        let (held, node) = self.slots.get(slot_of(&key.path)?)?.as_ref()?;
        (held == key).then_some(node)
    }

    /// Follows the head to the version `batch` wrote (once it is stored).
    pub(super) fn apply(&mut self, batch: TreeBatch) {
        for stale in &batch.stale_nodes {
            if let Some(slot) = slot_of(&stale.node_key.path).and_then(|i| self.slots.get_mut(i)) {
                if slot
                    .as_ref()
                    .is_some_and(|(held, _)| *held == stale.node_key)
                {
                    *slot = None;
                }
            }
        }
        for (key, node) in batch.new_nodes {
            if is_top(&key, &node) {
                self.fill(key, node);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.iter().flatten().count()
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
                prop_assert_eq!(&top.slots, &loaded.slots);
                for (key, node) in top.slots.iter().flatten() {
                    prop_assert_eq!(store.get_node(key).unwrap(), Some(node.clone()));
                }
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
    #[should_panic(expected = "left a replaced node unmarked")]
    fn a_new_top_node_over_an_unmarked_one_is_refused() {
        let mut store = MemNodeStore::new();
        let updates: Vec<Update> = (0u8..=255)
            .map(|i| (Hash([i; 32]), Some(vec![i])))
            .collect();
        let first = StateTree::new(&store).apply(None, 1, &updates).unwrap();
        store.write(&first);
        let mut top = TopNodes::load(&store, 1).unwrap();
        let mut second = StateTree::new(&store)
            .apply(Some(1), 2, &[(Hash([7; 32]), Some(vec![0]))])
            .unwrap();
        second.stale_nodes.clear();
        top.apply(second);
    }

    #[test]
    fn a_large_tree_fills_every_position_and_no_more() {
        assert_eq!(positions_up_to(3), 4369);
        // Two keys under every position at depth TOP_DEPTH, differing in
        // the next nibble: every position down to that depth is internal.
        let bits = 4 * TOP_DEPTH;
        let updates: Vec<Update> = (0u32..1 << bits)
            .flat_map(|position| {
                [0u32, 1].map(|next| {
                    let mut key = [0u8; 32];
                    let prefix = (position << 4 | next) << (32 - bits - 4);
                    key[..4].copy_from_slice(&prefix.to_be_bytes());
                    (Hash(key), Some(vec![1]))
                })
            })
            .collect();
        let mut store = MemNodeStore::new();
        let batch = StateTree::new(&store).apply(None, 1, &updates).unwrap();
        store.write(&batch);
        let top = TopNodes::load(&store, 1).unwrap();
        assert_eq!(top.len(), TOP_POSITIONS);
    }
}
