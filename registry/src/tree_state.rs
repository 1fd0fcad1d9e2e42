//! The registry's one point of contact with the state tree ([`crate::tree`]):
//! reading a version as a [`StateView`], turning a block's changes into a
//! [`TreeBatch`], and proving a key.

use keyreg_consensus::crypto::Hash;

use crate::state::{StateChanges, StateError, StateView};
use crate::tree::{NodeReader, SparseMerkleProof, StateTree, TreeBatch, TreeError, Update};

impl From<TreeError> for StateError {
    fn from(e: TreeError) -> Self {
        StateError::Tree(e.to_string())
    }
}

/// The state at one tree version.
pub struct TreeState<'r, R: NodeReader + ?Sized> {
    reader: &'r R,
    version: u64,
}

impl<'r, R: NodeReader + ?Sized> TreeState<'r, R> {
    pub fn new(reader: &'r R, version: u64) -> Self {
        TreeState { reader, version }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn root(&self) -> Result<Hash, StateError> {
        Ok(StateTree::new(self.reader).root(self.version)?)
    }

    /// The value under `key` and its (non-)membership proof under [`root`](Self::root).
    pub fn prove(&self, key: &Hash) -> Result<(Option<Vec<u8>>, SparseMerkleProof), StateError> {
        Ok(StateTree::new(self.reader).get_with_proof(self.version, key)?)
    }
}

impl<R: NodeReader + ?Sized> StateView for TreeState<'_, R> {
    fn get(&self, key: &Hash) -> Result<Option<Vec<u8>>, StateError> {
        Ok(StateTree::new(self.reader).get(self.version, key)?)
    }
}

/// Applies `changes` to version `base` (`None`: the empty tree) as `new_version`.
pub fn apply_changes<R: NodeReader + ?Sized>(
    reader: &R,
    base: Option<u64>,
    new_version: u64,
    changes: &StateChanges,
) -> Result<TreeBatch, StateError> {
    // A BTreeMap iterates in key order: exactly the sorted batch the tree wants.
    let updates: Vec<Update> = changes.iter().map(|(k, v)| (*k, v.clone())).collect();
    Ok(StateTree::new(reader).apply(base, new_version, &updates)?)
}
