//! keyreg's device and auditor SDK.
//!
//! * [`light`]: the light client: verified look-ups from a genesis trust
//!   anchor, validator-set handovers, fork detection; it is also the
//!   [`session::PeerVerifier`] devices use.
//! * [`session`]: mutually authenticated Noise sessions between registered
//!   devices, over [`framing`]'s length-prefixed frames.
//! * [`txs`]: building, signing, submitting and awaiting transactions.
//! * [`keys`]: device and admin key files.
//! * [`node`]: the HTTP client for one node's API.
//! * [`audit`]: ledger replay for auditors (every certificate, signature
//!   and root recomputed) and proven device histories.
//! * [`cli`]: the `keyreg` command line.

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

pub mod audit;
pub mod cli;
pub mod framing;
pub mod keys;
pub mod light;
pub mod node;
pub mod session;
pub mod txs;

#[cfg(test)]
mod testkit;
