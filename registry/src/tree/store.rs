//! An in-memory node store for tests, benches and the in-memory ledger.

use std::collections::{BTreeSet, HashMap};

use super::node::{Node, NodeKey, StaleNode};
use super::{NodeReader, TreeBatch, TreeError};

/// Nodes in a hash map plus the stale index, ordered oldest first.
#[derive(Clone, Debug, Default)]
pub struct MemNodeStore {
    nodes: HashMap<NodeKey, Node>,
    stale: BTreeSet<StaleNode>,
}

impl MemNodeStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores a batch's new nodes and indexes the nodes it made stale.
    pub fn write(&mut self, batch: &TreeBatch) {
        self.nodes.extend(batch.new_nodes.iter().cloned());
        self.stale.extend(batch.stale_nodes.iter().copied());
    }

    /// Like [`write`](Self::write), without copying the nodes.
    pub fn write_owned(&mut self, batch: TreeBatch) {
        self.nodes.extend(batch.new_nodes);
        self.stale.extend(batch.stale_nodes);
    }

    /// Deletes every node that no version `>= oldest_kept_version` uses
    /// (stale since a version `<= oldest_kept_version`). Versions from
    /// `oldest_kept_version` on stay readable; older ones may not.
    /// Returns the number of nodes deleted.
    pub fn prune(&mut self, oldest_kept_version: u64) -> usize {
        let mut deleted = 0;
        while let Some(first) = self.stale.first() {
            if first.stale_since_version > oldest_kept_version {
                break;
            }
            let node_key = first.node_key;
            self.stale.pop_first();
            if self.nodes.remove(&node_key).is_some() {
                deleted += 1;
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
        self.stale.len()
    }
}

impl NodeReader for MemNodeStore {
    fn get_node(&self, key: &NodeKey) -> Result<Option<Node>, TreeError> {
        Ok(self.nodes.get(key).cloned())
    }
}
