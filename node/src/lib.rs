//! keyreg-node: the consortium node daemon.
//!
//! * [`network`]: the libp2p shell (permissioned gossip + block-sync
//!   request-response) behind a [`network::NetworkHandle`].
//! * [`driver`]: runs the sans-IO consensus engine against the ledger.
//! * [`sync`]: block sync client and server.
//! * [`api`]: the HTTP API; [`mempool`], [`metrics`], [`config`], [`keys`].
//! * [`node`]: wires it all together; [`cli`]: the `keyreg-node` commands.

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

pub mod admission;
pub mod api;
pub mod cli;
pub mod config;
pub mod driver;
pub mod epochs;
pub mod export;
pub mod keys;
pub mod mempool;
pub mod metrics;
pub mod network;
pub mod node;
pub mod safety;
pub mod sync;
