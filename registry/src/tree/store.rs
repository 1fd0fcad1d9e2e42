//! An in-memory node store for tests, benches and the in-memory ledger.

use std::collections::{BTreeMap, HashMap};

use super::node::{Node, NodeKey};
use super::{NodeReader, TreeBatch, TreeError};

/// Nodes in a hash map plus the stale index: node keys by the version
/// since which they are stale, oldest first.
#[derive(Clone, Debug, Default)]
pub struct MemNodeStore {
    nodes: HashMap<NodeKey, Node>,
    stale: BTreeMap<u64, Vec<NodeKey>>,
}

impl MemNodeStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores a batch's new nodes and indexes the nodes it made stale.
    pub fn write(&mut self, batch: &TreeBatch) {
        self.nodes.extend(batch.new_nodes.iter().cloned());
        self.index_stale(batch);
    }

    /// Like [`write`](Self::write), without copying the nodes.
    pub fn write_owned(&mut self, batch: TreeBatch) {
        self.index_stale(&batch);
        self.nodes.extend(batch.new_nodes);
    }

    fn index_stale(&mut self, batch: &TreeBatch) {
        for stale in &batch.stale_nodes {
            self.stale
                .entry(stale.stale_since_version)
                .or_default()
                .push(stale.node_key);
        }
    }

    /// Deletes every node that no version `>= oldest_kept_version` uses
    /// (stale since a version `<= oldest_kept_version`). Versions from
    /// `oldest_kept_version` on stay readable; older ones may not.
    /// Returns the number of nodes deleted.
    pub fn prune(&mut self, oldest_kept_version: u64) -> usize {
        let mut deleted = 0;
        while let Some(entry) = self.stale.first_entry() {
            if *entry.key() > oldest_kept_version {
                break;
            }
            for node_key in entry.remove() {
                if self.nodes.remove(&node_key).is_some() {
                    deleted += 1;
                }
            }
        }
        deleted
    }

    /// Number of stored nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of stale-index entries not yet pruned.
    pub fn stale_count(&self) -> usize {
        self.stale.values().map(Vec::len).sum()
    }
}

impl NodeReader for MemNodeStore {
    fn get_node(&self, key: &NodeKey) -> Result<Option<Node>, TreeError> {
        Ok(self.nodes.get(key).cloned())
    }
}
