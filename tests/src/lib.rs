//! keyreg's cross-crate security tests and fuzzing support.
//!
//! * [`fixture`]: one deterministic chain (validators, orgs, devices, blocks,
//!   proofs) that every fuzz target checks its input against, so that valid
//!   seeds reach the deepest checks.
//! * [`fuzz`]: the logic of every fuzz target as a plain function of the
//!   input bytes. The cargo-fuzz targets in `tests/fuzz/` are one-liners that
//!   call these, and `tests/tests/fuzz_corpus.rs` runs the checked-in corpus
//!   (`tests/fuzz/corpus/<target>/`) through the same functions on stable.
//! * [`seeds`]: real, valid encodings for the corpus.
//! * [`bench`]: what the benchmark binaries share (a local testnet of node
//!   processes, `/proc` readings, percentiles).
//! * [`delay`]: TCP links with a fixed one-way delay, to run that testnet as
//!   if its nodes were far apart.
//!
//! The attack catalogue these tests back is `docs/security.md`.

pub mod bench;
pub mod delay;
pub mod fixture;
pub mod fuzz;
pub mod seeds;
