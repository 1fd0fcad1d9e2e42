//! The head tree's top levels, held in memory (see [`TopNodes`]), and how
//! the store writes them: as deltas against full records (see
//! [`TopPlan`] and `tree/delta.rs`).

use crate::tree::{
    check_child, InternalDelta, InternalNode, NibblePath, Node, NodeKey, NodeRecord, TreeBatch,
    TreeError,
};

/// Nodes at paths of at most this many nibbles are held.
/// (Four levels took 50 MB at 10^7 devices and measured no faster:
/// docs/benchmarks.md, sessions 18 and 19.)
const TOP_DEPTH: usize = 3;

/// Node positions at paths of at most [`TOP_DEPTH`] nibbles (1 + 16 + 256 +
/// 4096): the most the map holds, about 3.5 MB of internal nodes (and as
/// much again of the full records that deltas amend).
const TOP_POSITIONS: usize = positions_up_to(TOP_DEPTH);

/// A top node is stored as a delta when at most this many of its children
/// differ from its base's; otherwise in full, as the next delta's base.
/// (A full node of 16 children is 646 bytes, a delta 16 + 40 per child:
/// bases every few rewrites keep the deltas small.)
const MAX_DELTA_CHILDREN: usize = 6;

const fn positions_up_to(depth: usize) -> usize {
    let (mut total, mut level, mut d) = (0, 1, 0);
    while d <= depth {
        total += level;
        level *= 16;
        d += 1;
    }
    total
}

/// A head node in its slot, and the full record its stored one amends.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    key: NodeKey,
    node: Node,
    /// `None`: the record under `key` is the full node, the base of the
    /// position's next delta.
    base: Option<(u64, InternalNode)>,
}

impl Held {
    /// The full record a delta of this position is made against, taken.
    fn into_base(self) -> Option<(u64, InternalNode)> {
        match (self.base, self.node) {
            (Some(base), _) => Some(base),
            (None, Node::Internal(node)) => Some((self.key.version, node)),
            (None, _) => None,
        }
    }

    /// The full record that a delta of this position is made against.
    fn base(&self) -> Option<(u64, &InternalNode)> {
        match (&self.base, &self.node) {
            (Some((version, base)), _) => Some((*version, base)),
            (None, Node::Internal(node)) => Some((self.key.version, node)),
            (None, _) => None,
        }
    }
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
    slots: Box<[Option<Held>]>,
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

/// Resolves a stored record into its node, reading a delta's base with
/// `read`; returns the node and, for a delta, the base it amends.
pub(super) fn resolve(
    key: &NodeKey,
    record: NodeRecord,
    read: impl Fn(&NodeKey) -> Result<Option<NodeRecord>, TreeError>,
) -> Result<(Node, Option<(u64, InternalNode)>), TreeError> {
    match record {
        NodeRecord::Full(node) => Ok((node, None)),
        NodeRecord::Delta(delta) => {
            let base_key = NodeKey {
                version: delta.base_version,
                path: key.path,
            };
            let base = match read(&base_key)? {
                Some(NodeRecord::Full(Node::Internal(base))) => base,
                Some(_) => return Err(TreeError::CorruptNode(base_key)),
                None => return Err(TreeError::MissingNode(base_key)),
            };
            let node = delta
                .apply(&base)
                .map_err(|_| TreeError::CorruptNode(*key))?;
            Ok((Node::Internal(node), Some((delta.base_version, base))))
        }
    }
}

impl TopNodes {
    /// The top levels of the tree at `version`, read with `read` (records
    /// as stored: deltas are resolved here).
    pub(super) fn load(
        read: impl Fn(&NodeKey) -> Result<Option<NodeRecord>, TreeError>,
        version: u64,
    ) -> Result<Self, TreeError> {
        let mut top = TopNodes::default();
        let root_key = NodeKey::root(version);
        let root = read(&root_key)?.ok_or(TreeError::VersionNotFound(version))?;
        let mut pending = vec![(root_key, resolve(&root_key, root, &read)?)];
        while let Some((key, (node, base))) = pending.pop() {
            let Node::Internal(internal) = &node else {
                continue;
            };
            if key.path.len() < TOP_DEPTH {
                for (nibble, child) in internal.children().filter(|(_, child)| !child.is_leaf) {
                    let child_key = NodeKey {
                        version: child.version,
                        path: key.path.child(nibble),
                    };
                    let record = read(&child_key)?.ok_or(TreeError::MissingNode(child_key))?;
                    let resolved = resolve(&child_key, record, &read)?;
                    // Checked as every walk checks it: a corrupt store
                    // fails the open instead of a later read.
                    check_child(&child_key, child, &resolved.0)?;
                    pending.push((child_key, resolved));
                }
            }
            top.fill(Held { key, node, base });
        }
        Ok(top)
    }

    /// Puts a top node in its (empty) slot.
    fn fill(&mut self, held: Held) {
        let slot = slot_of(&held.key.path).and_then(|index| self.slots.get_mut(index));
        // A batch that left a replaced node unmarked would break this (and
        // pruning, which relies on the same marks).
        assert!(
            slot.as_ref().is_some_and(|slot| slot.is_none()),
            "top position {:?} is taken or too deep: a tree update left a replaced node unmarked",
            held.key.path
        );
        if let Some(slot) = slot {
            *slot = Some(held);
        }
    }

    fn held(&self, path: &NibblePath) -> Option<&Held> {
        self.slots.get(slot_of(path)?)?.as_ref()
    }

    pub(super) fn get(&self, key: &NodeKey) -> Option<&Node> {
        self.held(&key.path)
            .filter(|held| held.key == *key)
            .map(|held| &held.node)
    }

    /// How the store writes `batch` (the next version of the head): which
    /// new top nodes as deltas, and which stale marks change because a
    /// full record stays, or stops being, the base of a readable delta.
    pub(super) fn plan(&self, batch: &TreeBatch) -> TopPlan {
        let mut plan = TopPlan {
            version: batch.version,
            ..TopPlan::default()
        };
        for (key, node) in &batch.new_nodes {
            let (Node::Internal(node), Some(slot)) = (node, slot_of(&key.path)) else {
                continue;
            };
            let Some((base_version, base)) = self.held_at(slot).and_then(Held::base) else {
                continue;
            };
            let delta = InternalDelta::between(base_version, base, node);
            if delta.changed_children() <= MAX_DELTA_CHILDREN {
                plan.deltas.push(PlannedDelta {
                    slot,
                    delta,
                    replaced_marked: false,
                });
            }
        }
        plan.deltas.sort_unstable_by_key(|planned| planned.slot);
        for stale in &batch.stale_nodes {
            let key = &stale.node_key;
            let Some(slot) = slot_of(&key.path) else {
                continue;
            };
            let Some(replaced) = self.held_at(slot).filter(|held| held.key == *key) else {
                continue;
            };
            // A delta at this position was made against the replaced node's base.
            let delta = plan.planned_at_mut(slot);
            let has_delta = delta.is_some();
            if let Some(planned) = delta {
                planned.replaced_marked = true;
            }
            match (&replaced.base, has_delta) {
                // The replaced record is the full one the new delta amends.
                (None, true) => plan.bases_kept.push(*key),
                // The replaced delta's base has no readable delta left once
                // this version is the oldest kept.
                (Some((base_version, _)), false) => plan.bases_released.push(NodeKey {
                    version: *base_version,
                    path: key.path,
                }),
                (None, false) | (Some(_), true) => {}
            }
        }
        plan.bases_kept.sort_unstable();
        plan
    }

    fn held_at(&self, slot: usize) -> Option<&Held> {
        self.slots.get(slot)?.as_ref()
    }

    /// Follows the head to the version `batch` wrote (once it is stored as
    /// `plan` says).
    pub(super) fn apply(&mut self, batch: TreeBatch, plan: &TopPlan) {
        for stale in &batch.stale_nodes {
            let Some(index) = slot_of(&stale.node_key.path) else {
                continue;
            };
            // A replaced node whose position gets a delta stays in its slot
            // until the delta takes its base below.
            if plan.planned_at(index).is_some() {
                continue;
            }
            if let Some(slot) = self.slots.get_mut(index) {
                if slot.as_ref().is_some_and(|held| held.key == stale.node_key) {
                    *slot = None;
                }
            }
        }
        for (key, node) in batch.new_nodes {
            let Some(index) = slot_of(&key.path).filter(|_| is_top(&key, &node)) else {
                continue;
            };
            // A delta keeps the replaced node's base. (One whose replaced
            // node was not marked stale leaves it in the slot, and `fill`
            // refuses the new node.)
            let base = match plan.planned_at(index) {
                Some(planned) if planned.replaced_marked => {
                    let replaced = self.slots.get_mut(index).and_then(Option::take);
                    let base = replaced.and_then(Held::into_base);
                    assert_eq!(
                        base.as_ref().map(|(version, _)| *version),
                        Some(planned.delta.base_version),
                        "a delta at {:?} planned against another base",
                        key.path
                    );
                    base
                }
                _ => None,
            };
            self.fill(Held { key, node, base });
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

/// How one tree update's top nodes are stored (from [`TopNodes::plan`]).
/// Indexed by slot and sorted, not hashed: it is consulted for every node
/// of every block.
#[derive(Debug, Default)]
pub(super) struct TopPlan {
    /// The version the update writes.
    version: u64,
    /// New nodes stored as deltas, in slot order.
    deltas: Vec<PlannedDelta>,
    /// Replaced full records that new deltas amend: not stale yet (sorted).
    bases_kept: Vec<NodeKey>,
    /// Full records no readable delta amends from this version on: stale
    /// since it, like the nodes the update replaced.
    bases_released: Vec<NodeKey>,
}

#[derive(Debug)]
struct PlannedDelta {
    slot: usize,
    delta: InternalDelta,
    /// Whether the update marked the node it replaces stale (it must).
    replaced_marked: bool,
}

impl TopPlan {
    fn planned_at(&self, slot: usize) -> Option<&PlannedDelta> {
        let index = self.deltas.binary_search_by_key(&slot, |p| p.slot).ok()?;
        self.deltas.get(index)
    }

    fn planned_at_mut(&mut self, slot: usize) -> Option<&mut PlannedDelta> {
        let index = self.deltas.binary_search_by_key(&slot, |p| p.slot).ok()?;
        self.deltas.get_mut(index)
    }

    /// The delta to store under `key` instead of the node, if any.
    pub(super) fn delta(&self, key: &NodeKey) -> Option<&InternalDelta> {
        if key.version != self.version {
            return None;
        }
        self.planned_at(slot_of(&key.path)?)
            .map(|planned| &planned.delta)
    }

    /// Whether the replaced node `key` stays readable as a delta's base
    /// (so it is not marked stale).
    pub(super) fn keeps_base(&self, key: &NodeKey) -> bool {
        self.bases_kept.binary_search(key).is_ok()
    }

    /// Full records to mark stale since the update's version besides the
    /// nodes it replaced.
    pub(super) fn released_bases(&self) -> &[NodeKey] {
        &self.bases_released
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::tree::{MemNodeStore, NodeReader, StateTree, Update};
    use keyreg_consensus::crypto::Hash;

    /// Records as the RocksDB store keeps them (encoded, deltas included,
    /// with its stale index and pruning), to check the plans against a
    /// [`MemNodeStore`] of full nodes that is never pruned.
    #[derive(Default)]
    struct RecordStore {
        records: HashMap<NodeKey, Vec<u8>>,
        stale: BTreeMap<u64, Vec<NodeKey>>,
        top: TopNodes,
        deltas_written: usize,
    }

    impl RecordStore {
        fn write(&mut self, batch: TreeBatch) {
            let plan = self.top.plan(&batch);
            for (key, node) in &batch.new_nodes {
                let mut bytes = Vec::new();
                match plan.delta(key) {
                    Some(delta) => {
                        delta.write_bytes(&mut bytes);
                        self.deltas_written += 1;
                    }
                    None => node.write_bytes(&mut bytes),
                }
                self.records.insert(*key, bytes);
            }
            let stale = self.stale.entry(batch.version).or_default();
            stale.extend(
                batch
                    .stale_nodes
                    .iter()
                    .map(|s| s.node_key)
                    .filter(|key| !plan.keeps_base(key)),
            );
            stale.extend(plan.released_bases());
            self.top.apply(batch, &plan);
        }

        fn prune(&mut self, oldest_kept_version: u64) {
            while let Some(entry) = self.stale.first_entry() {
                if *entry.key() > oldest_kept_version {
                    break;
                }
                for key in entry.remove() {
                    self.records.remove(&key);
                }
            }
        }

        fn get_record(&self, key: &NodeKey) -> Result<Option<NodeRecord>, TreeError> {
            Ok(self
                .records
                .get(key)
                .map(|bytes| NodeRecord::from_bytes(bytes))
                .transpose()?)
        }
    }

    /// Reads through the records alone, never the map.
    impl NodeReader for RecordStore {
        fn get_node(&self, key: &NodeKey) -> Result<Option<Node>, TreeError> {
            let Some(record) = self.get_record(key)? else {
                return Ok(None);
            };
            Ok(Some(resolve(key, record, |base| self.get_record(base))?.0))
        }
    }

    fn full_records(
        store: &MemNodeStore,
    ) -> impl Fn(&NodeKey) -> Result<Option<NodeRecord>, TreeError> + '_ {
        |key| Ok(store.get_node(key)?.map(NodeRecord::Full))
    }

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

    /// Commits `batches`, after a genesis, to a store of full nodes and to
    /// a [`RecordStore`], and calls `check` after each version.
    fn commit_both(
        batches: &[Vec<Update>],
        mut check: impl FnMut(u64, &MemNodeStore, &mut RecordStore) -> Result<(), TestCaseError>,
    ) -> Result<(), TestCaseError> {
        let mut store = MemNodeStore::new();
        let genesis = StateTree::new(&store).apply(None, 0, &[]).unwrap();
        store.write(&genesis);
        let mut records = RecordStore::default();
        records.write(genesis);
        for (version, updates) in (1u64..).zip(batches) {
            let batch = StateTree::new(&store)
                .apply(Some(version - 1), version, updates)
                .unwrap();
            store.write(&batch);
            records.write(batch);
            check(version, &store, &mut records)?;
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Followed batch by batch, the map is exactly what loading the
        /// head's top levels from the store gives, and every entry is the
        /// stored node.
        #[test]
        fn follows_the_head_as_loading_it_would(batches in batches()) {
            commit_both(&batches, |version, store, records| {
                let loaded = TopNodes::load(|key| records.get_record(key), version).unwrap();
                prop_assert_eq!(&records.top.slots, &loaded.slots);
                let from_full = TopNodes::load(full_records(store), version).unwrap();
                for (held, full) in records.top.slots.iter().zip(from_full.slots.iter()) {
                    prop_assert_eq!(held.as_ref().map(|h| (&h.key, &h.node)), full.as_ref().map(|h| (&h.key, &h.node)));
                }
                for held in records.top.slots.iter().flatten() {
                    prop_assert_eq!(store.get_node(&held.key).unwrap(), Some(held.node.clone()));
                }
                Ok(())
            })?;
        }

        /// Stored with deltas and pruned to the last `keep` versions, every
        /// kept version reads as the full nodes do: roots, values, proofs.
        #[test]
        fn deltas_and_pruning_keep_every_kept_version_readable(
            batches in batches(),
            keep in 1u64..4,
        ) {
            commit_both(&batches, |version, store, records| {
                let oldest = version.saturating_sub(keep - 1);
                records.prune(oldest);
                let (full, stored) = (StateTree::new(store), StateTree::new(&*records));
                let probes = batches.iter().flatten().step_by(7).map(|(key, _)| key);
                for kept in oldest..=version {
                    prop_assert_eq!(stored.root(kept).unwrap(), full.root(kept).unwrap());
                    for key in probes.clone() {
                        prop_assert_eq!(
                            stored.get_with_proof(kept, key).unwrap(),
                            full.get_with_proof(kept, key).unwrap()
                        );
                    }
                }
                Ok(())
            })?;
        }
    }

    /// Keys whose first two nibbles run over 0..=255: the root and all 16
    /// depth-1 nodes are internal with 16 children.
    fn spread_keys(count: u16, salt: u8) -> Vec<Update> {
        let mut updates: Vec<Update> = (0..count)
            .map(|i| {
                let mut key = [salt; 32];
                key[0] = (i % 256) as u8;
                key[1] = (i / 256) as u8;
                (Hash(key), Some(vec![salt]))
            })
            .collect();
        updates.sort();
        updates
    }

    #[test]
    fn few_changed_children_are_stored_as_a_delta_on_a_base_kept_readable() {
        let mut store = MemNodeStore::new();
        let mut records = RecordStore::default();
        let commit = |store: &mut MemNodeStore,
                      records: &mut RecordStore,
                      version: u64,
                      updates: &[Update]| {
            let base = (version > 1).then(|| version - 1);
            let batch = StateTree::new(&*store)
                .apply(base, version, updates)
                .unwrap();
            store.write(&batch);
            records.write(batch);
            records.deltas_written
        };
        assert_eq!(
            commit(&mut store, &mut records, 1, &spread_keys(1024, 1)),
            0,
            "nothing to amend yet"
        );
        // One key changed: its path is rewritten, and each of its nodes
        // down to depth 3 (the top levels) changes one child.
        let mut one = spread_keys(1, 2);
        one[0].0 = spread_keys(1, 1)[0].0;
        assert_eq!(commit(&mut store, &mut records, 2, &one), TOP_DEPTH + 1);
        let base_root = NodeKey::root(1);
        let stale_at_2 = records.stale.get(&2).cloned().unwrap_or_default();
        assert!(!stale_at_2.contains(&base_root), "the base stays readable");
        assert!(records.get_record(&NodeKey::root(2)).unwrap().is_some_and(
            |record| matches!(record, NodeRecord::Delta(delta) if delta.base_version == 1)
        ));
        // Every child of the root changes: stored in full, and the old base
        // is released with the delta it carried.
        commit(&mut store, &mut records, 3, &spread_keys(1024, 3));
        let stale_at_3 = &records.stale[&3];
        assert!(stale_at_3.contains(&base_root) && stale_at_3.contains(&NodeKey::root(2)));
        assert!(matches!(
            records.get_record(&NodeKey::root(3)).unwrap(),
            Some(NodeRecord::Full(_))
        ));
        records.prune(2);
        assert!(records.get_record(&base_root).unwrap().is_some());
        assert_eq!(
            StateTree::new(&records).root(2).unwrap(),
            StateTree::new(&store).root(2).unwrap()
        );
        records.prune(3);
        assert!(records.get_record(&base_root).unwrap().is_none());
        assert!(StateTree::new(&records).root(2).is_err());
        assert_eq!(
            StateTree::new(&records).root(3).unwrap(),
            StateTree::new(&store).root(3).unwrap()
        );
    }

    #[test]
    fn a_corrupt_store_fails_the_load() {
        let mut store = MemNodeStore::new();
        let updates: Vec<Update> = (0u8..=255)
            .map(|i| (Hash([i; 32]), Some(vec![i])))
            .collect();
        let batch = StateTree::new(&store).apply(None, 1, &updates).unwrap();
        store.write(&batch);
        assert!(TopNodes::load(full_records(&store), 1).is_ok());
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
            TopNodes::load(full_records(&store), 1).unwrap_err(),
            TreeError::CorruptNode(*key)
        );
        assert_eq!(
            TopNodes::load(full_records(&store), 2).unwrap_err(),
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
        let mut top = TopNodes::load(full_records(&store), 1).unwrap();
        let mut second = StateTree::new(&store)
            .apply(Some(1), 2, &[(Hash([7; 32]), Some(vec![0]))])
            .unwrap();
        second.stale_nodes.clear();
        let plan = top.plan(&second);
        top.apply(second, &plan);
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
        let top = TopNodes::load(full_records(&store), 1).unwrap();
        assert_eq!(top.len(), TOP_POSITIONS);
    }
}
