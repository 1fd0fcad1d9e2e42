//! The `jmt` crate (Penumbra's Jellyfish Merkle Tree) over an in-memory
//! store written here, as [`MemNodeStore`](keyreg_registry::tree::MemNodeStore)
//! is for keyreg: a hash map of nodes, stale nodes deleted after each commit.
//! Run with BLAKE3 (keyreg's hash) and with its default SHA-256.

use std::collections::HashMap;
use std::marker::PhantomData;

use anyhow::{anyhow, bail, Result};
use jmt::proof::SparseMerkleProof;
use jmt::storage::{LeafNode, Node, NodeKey, TreeReader, TreeUpdateBatch};
use jmt::{JellyfishMerkleTree, KeyHash, OwnedValue, RootHash, SimpleHasher, Version};

use super::{Key, Tree};

/// BLAKE3 for jmt. (blake3's own `Digest` impl is for `digest` 0.11; jmt
/// takes 0.10, so the adapter is this trait impl.)
pub struct Blake3(blake3::Hasher);

impl SimpleHasher for Blake3 {
    fn new() -> Self {
        Blake3(blake3::Hasher::new())
    }

    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn finalize(self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

/// Nodes by key; values (which jmt keeps outside its leaves) by key hash,
/// latest version only.
#[derive(Default)]
struct Store {
    nodes: HashMap<NodeKey, Node>,
    values: HashMap<KeyHash, (Version, OwnedValue)>,
}

impl TreeReader for Store {
    fn get_node_option(&self, node_key: &NodeKey) -> Result<Option<Node>> {
        Ok(self.nodes.get(node_key).cloned())
    }

    fn get_value_option(
        &self,
        max_version: Version,
        key_hash: KeyHash,
    ) -> Result<Option<OwnedValue>> {
        match self.values.get(&key_hash) {
            None => Ok(None),
            Some((version, value)) if *version <= max_version => Ok(Some(value.clone())),
            // Only the latest version is kept, like the nodes.
            Some((version, _)) => {
                bail!("value of {key_hash:?} at {max_version} pruned (now at {version})")
            }
        }
    }

    fn get_rightmost_leaf(&self) -> Result<Option<(NodeKey, LeafNode)>> {
        bail!("get_rightmost_leaf is for restoring a tree, which this bench does not do")
    }
}

impl Store {
    fn write(&mut self, batch: TreeUpdateBatch) {
        // `NodeBatch` only lends its maps, so nodes and values are cloned
        // (jmt's own mock store does the same).
        for (node_key, node) in batch.node_batch.nodes() {
            self.nodes.insert(node_key.clone(), node.clone());
        }
        for ((version, key_hash), value) in batch.node_batch.values() {
            match value {
                Some(value) => self.values.insert(*key_hash, (*version, value.clone())),
                None => self.values.remove(key_hash),
            };
        }
        // Pruning to the latest version: every stale node goes now.
        for stale in &batch.stale_node_index_batch {
            self.nodes.remove(&stale.node_key);
        }
    }
}

pub struct JmtTree<H> {
    name: &'static str,
    store: Store,
    version: Option<Version>,
    root: RootHash,
    hasher: PhantomData<H>,
}

impl<H: SimpleHasher> JmtTree<H> {
    pub fn new(name: &'static str) -> Self {
        JmtTree {
            name,
            store: Store::default(),
            version: None,
            root: JellyfishMerkleTree::<Store, H>::EMPTY_ROOT,
            hasher: PhantomData,
        }
    }

    fn latest(&self) -> Result<Version> {
        self.version
            .ok_or_else(|| anyhow!("the tree has no version yet"))
    }
}

impl<H: SimpleHasher> Tree for JmtTree<H> {
    type Proof = SparseMerkleProof<H>;

    fn name(&self) -> &'static str {
        self.name
    }

    fn commit(&mut self, batch: Vec<(Key, Vec<u8>)>) -> Result<()> {
        // jmt versions start at 0. `batch_put_value_sets` (sorted batch
        // insertion, no deletes) is 1.3-2x faster here than `put_value_set`
        // (one key at a time through its tree cache), so jmt gets its best.
        let next = self.version.map_or(0, |v| v + 1);
        let updates = batch
            .into_iter()
            .map(|(key, value)| (KeyHash(key), value))
            .collect();
        let (roots, update) = JellyfishMerkleTree::<Store, H>::new(&self.store)
            .batch_put_value_sets(vec![updates], None, next)?;
        self.store.write(update);
        self.root = *roots
            .first()
            .ok_or_else(|| anyhow!("jmt returned no root for one value set"))?;
        self.version = Some(next);
        Ok(())
    }

    fn prove(&self, key: &Key) -> Result<(Option<Vec<u8>>, SparseMerkleProof<H>)> {
        JellyfishMerkleTree::<Store, H>::new(&self.store)
            .get_with_proof(KeyHash(*key), self.latest()?)
    }

    fn proves_absence(&self) -> bool {
        true
    }

    fn verify(&self, key: &Key, value: Option<&[u8]>, proof: SparseMerkleProof<H>) -> Result<()> {
        proof.verify(self.root, KeyHash(*key), value)
    }

    fn proof_len(&self, proof: &SparseMerkleProof<H>) -> Result<usize> {
        Ok(borsh::to_vec(proof)?.len())
    }

    fn proof_encoding(&self) -> &'static str {
        "borsh (jmt's own encoding of SparseMerkleProof)"
    }
}
