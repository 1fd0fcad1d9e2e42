//! keyreg-node: the consortium node daemon.

pub mod api;
pub mod config;
pub mod keys;
pub mod mempool;
pub mod metrics;
pub mod network;
