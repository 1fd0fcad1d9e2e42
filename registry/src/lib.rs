//! keyreg's key-registry state machine: device and organisation records,
//! transactions and their authorisation rules, deterministic block
//! execution over an authenticated state tree, blocks and headers, genesis,
//! verified look-ups, and the ledger store.

pub mod block;
pub mod execute;
pub mod genesis;
pub mod lookup;
pub mod names;
pub mod records;
pub mod state;
pub mod tree;
pub mod tree_state;
pub mod tx;

pub use names::{DeviceName, NameError, OrgId};
pub use records::{
    AgreementKey, DeviceRecord, DeviceStatus, GovernanceRecord, Metadata, OrgRecord, OrgStatus,
    ValidatorInfo,
};
pub use tx::{
    Authority, DeviceRegistration, GovernanceAction, Revocation, Rotation, Transaction, TxBody,
    TxError,
};
