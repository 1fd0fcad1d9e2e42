//! The three trees behind one interface, so the workload is the same code
//! for all of them.

pub mod akd;
pub mod jmt;
pub mod keyreg;

use anyhow::Result;

/// A 32-byte key: the BLAKE3 hash of a device name.
pub type Key = [u8; 32];

/// An authenticated dictionary under test. Every implementation keeps only
/// its latest version (older nodes are pruned after each commit), runs on
/// the calling thread, and holds everything in memory.
pub trait Tree {
    type Proof;

    /// What the CSV and the table call it.
    fn name(&self) -> &'static str;

    /// Sets every key of `batch` (distinct keys, any order) to its value as
    /// one new version, and writes it to the in-memory store.
    fn commit(&mut self, batch: Vec<(Key, Vec<u8>)>) -> Result<()>;

    /// The value of `key` at the latest version and a proof of it (of its
    /// absence when the value is `None`, if `proves_absence`).
    fn prove(&self, key: &Key) -> Result<(Option<Vec<u8>>, Self::Proof)>;

    /// Whether `prove` gives non-membership proofs for absent keys.
    fn proves_absence(&self) -> bool;

    /// Checks `proof` against the latest root as a client would: `key` maps
    /// to `value` (`None`: absent).
    fn verify(&self, key: &Key, value: Option<&[u8]>, proof: Self::Proof) -> Result<()>;

    /// The proof's length in the library's own wire encoding.
    fn proof_len(&self, proof: &Self::Proof) -> Result<usize>;

    /// How `proof_len` encodes, for the output.
    fn proof_encoding(&self) -> &'static str;
}
