//! keyreg's key-registry state machine: device and organisation records,
//! transactions and their authorisation rules, deterministic block
//! execution over an authenticated state tree, blocks and headers, genesis,
//! verified look-ups, and the ledger store.
//!
//! Layering: [`names`] and [`records`] (data model) → [`tx`] (transactions,
//! stateless checks) → [`execute`] (state transitions over a [`state`] view)
//! → [`block`] (headers, tx root, block checks) → [`ledger`] over a
//! [`store`]. [`tree_state`] is the only module that runs tree operations
//! (read, apply, prove) on [`tree`].
//! [`lookup`] holds what clients verify. See `docs/registry.md`.

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

pub mod block;
pub mod execute;
pub mod export;
pub mod genesis;
pub mod ledger;
pub mod lookup;
pub mod names;
pub mod records;
pub mod state;
pub mod store;
// Deterministic keys and chains for tests and simulations: never fed by input.
#[allow(clippy::expect_used)]
pub mod testkit;
pub mod tree;
pub mod tree_state;
pub mod tx;
pub mod wire;

pub use block::{tx_root, Block, BlockError, CommittedBlock, Header, TxInclusionProof};
pub use execute::{
    execute_block, execute_block_prechecked, execute_transactions, execute_transactions_prechecked,
    BlockExecution, Execution, TxResult,
};
pub use genesis::{Genesis, GenesisError, GenesisOrg, GenesisState};
pub use ledger::{DurableCommit, Ledger, LedgerError};
pub use lookup::{verify_device_proof, DeviceProof, ProofCheckError};
pub use names::{DeviceName, NameError, OrgId};
pub use records::{
    AgreementKey, DeviceRecord, DeviceStatus, GovernanceRecord, Metadata, OrgRecord, OrgStatus,
    ValidatorInfo,
};
pub use state::{RecordReader, StateError, StateView};
pub use store::{LedgerStore, MemLedgerStore, PruneStep, StoreError, TxLocation, PRUNE_CHUNK};
#[cfg(feature = "rocksdb")]
pub use store::{RocksLedgerStore, FLUSH_EVERY_BLOCKS};
pub use tree_state::TreeState;
pub use tx::{
    check_stateless_all, check_stateless_unless, proof_of_possession_message, Authority,
    DeviceRegistration, GovernanceAction, HashedTx, Revocation, Rotation, SignatureRef, SignerRole,
    SizeLimit, Transaction, TxBody, TxError, TxSignature,
};
