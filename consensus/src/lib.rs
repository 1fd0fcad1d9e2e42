//! keyreg's consensus layer and the primitives every keyreg crate shares.
//!
//! * [`crypto`]: domain-separated BLAKE3 hashing and ZIP-215 Ed25519
//!   signatures with a batch path that accepts exactly what the single path
//!   accepts.
//! * [`codec`]: the one canonical bincode encoding.
//! * [`validators`]: validator sets and quorum arithmetic.
//! * [`certificate`]: vote sign-bytes, commit certificates and
//!   [`verify_commit`](certificate::verify_commit), which light clients and
//!   auditors reuse.

pub mod certificate;
pub mod codec;
pub mod crypto;
pub mod validators;

pub use certificate::{verify_commit, CertificateError, CommitCertificate, VoteData, VoteKind};
pub use crypto::{Domain, Hash, PublicKey, Signature, SigningKey};
pub use validators::{Validator, ValidatorSet};
