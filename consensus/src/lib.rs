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
//! * [`messages`]: signed proposals and votes, their wire form, evidence.
//! * [`engine`]: the sans-IO Tendermint state machine.
//! * [`sim`]: a deterministic multi-validator simulator with fault injection.

// No panic reachable from network, API or file input: outside tests, these
// are errors; the few internal invariants that keep one say why, in place.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod certificate;
pub mod codec;
pub mod crypto;
pub mod engine;
pub mod messages;
pub mod sealed;
// The simulator is a test harness driven by its own seed, never by network
// input: it indexes its own tables freely.
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
pub mod sim;
pub mod validators;

pub use certificate::{verify_commit, CertificateError, CommitCertificate, VoteData, VoteKind};
pub use crypto::{Domain, Hash, PublicKey, Signature, SigningKey};
pub use engine::{
    proposer_index, Action, Config, Engine, EngineError, EngineStats, Event, SafetyState, Step,
    Timeout, TimeoutKind, ValueId,
};
pub use messages::{
    decode_message, Evidence, EvidenceError, Message, MessageBody, MessageError, Offence, Payload,
    ProposalData, Signed, SignedProposal, SignedVote,
};
pub use validators::{Validator, ValidatorSet};
