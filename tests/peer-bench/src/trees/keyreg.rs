//! keyreg's own state tree over its in-memory node store.

use anyhow::{anyhow, Result};
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::Hash;
use keyreg_registry::tree::{MemNodeStore, SparseMerkleProof, StateTree, Update};

use super::{Key, Tree};

#[derive(Default)]
pub struct KeyregTree {
    store: MemNodeStore,
    version: Option<u64>,
    root: Hash,
}

impl KeyregTree {
    pub fn new() -> Self {
        Self::default()
    }

    fn latest(&self) -> Result<u64> {
        self.version
            .ok_or_else(|| anyhow!("the tree has no version yet"))
    }
}

impl Tree for KeyregTree {
    type Proof = SparseMerkleProof;

    fn name(&self) -> &'static str {
        "keyreg"
    }

    fn commit(&mut self, batch: Vec<(Key, Vec<u8>)>) -> Result<()> {
        let mut updates: Vec<Update> = batch
            .into_iter()
            .map(|(key, value)| (Hash(key), Some(value)))
            .collect();
        // `apply` takes updates sorted by key; sorting is part of the cost.
        updates.sort_unstable_by_key(|update| update.0);
        let next = self.version.map_or(1, |v| v + 1);
        let batch = StateTree::new(&self.store).apply(self.version, next, &updates)?;
        self.root = batch.root;
        self.store.write_owned(batch);
        self.store.prune(next);
        self.version = Some(next);
        Ok(())
    }

    fn prove(&self, key: &Key) -> Result<(Option<Vec<u8>>, SparseMerkleProof)> {
        Ok(StateTree::new(&self.store).get_with_proof(self.latest()?, &Hash(*key))?)
    }

    fn proves_absence(&self) -> bool {
        true
    }

    fn verify(&self, key: &Key, value: Option<&[u8]>, proof: SparseMerkleProof) -> Result<()> {
        Ok(proof.verify(&self.root, &Hash(*key), value)?)
    }

    fn proof_len(&self, proof: &SparseMerkleProof) -> Result<usize> {
        Ok(proof.to_bytes().len())
    }

    fn proof_encoding(&self) -> &'static str {
        "keyreg canonical bincode (SparseMerkleProof::to_bytes)"
    }
}
