//! Deterministic execution: applying a block's transactions to the state of
//! its parent.
//!
//! Every transaction is checked statelessly (signatures included) and then
//! against the state; a rejected transaction is recorded with its reason and
//! changes nothing. The same parent state and transactions give the same
//! results and changes on every node: nothing here reads a clock, a random
//! source or anything but the state and the arguments.

use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::{Domain, Hash, PublicKey};
use keyreg_consensus::validators::ValidatorSet;

use crate::block::{BlockError, Header};
use crate::names::OrgId;
use crate::records::{
    governance_key, validator_key, DeviceRecord, DeviceStatus, GovernanceRecord, OrgRecord,
    OrgStatus, ValidatorInfo, MAX_ORGS,
};
use crate::state::{Overlay, RecordReader, StateChanges, StateError, StateView};
use crate::tree::{NodeReader, TreeBatch};
use crate::tree_state::{apply_changes, TreeState};
use crate::tx::{
    check_stateless_all, Authority, DeviceRegistration, GovernanceAction, Revocation, Rotation,
    SignerRole, SizeLimit, Transaction, TxBody, TxError,
};

/// The outcome of one transaction in a block.
pub type TxResult = Result<(), TxError>;

/// What executing a block's transactions produced, before the tree is updated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execution {
    /// One result per transaction, in block order.
    pub results: Vec<TxResult>,
    /// The writes, sorted by tree key.
    pub changes: StateChanges,
    /// The set that certifies this block (the parent state's).
    pub validator_set: ValidatorSet,
    /// The set that certifies the next block: `validator_set` unless this
    /// block changed it, in which case its epoch is one higher.
    pub next_validator_set: ValidatorSet,
}

/// The block-wide facts a transaction is applied under.
struct BlockContext {
    height: u64,
    timestamp_ms: u64,
    /// The epoch of the block being executed (the parent state's).
    epoch: u64,
}

/// Applies `txs` at `height` / `timestamp_ms` over `parent` (the state after
/// height - 1).
pub fn execute_transactions<V: StateView + ?Sized>(
    parent: &V,
    chain_id: &str,
    txs: &[Transaction],
    height: u64,
    timestamp_ms: u64,
) -> Result<Execution, StateError> {
    let stateless = check_stateless_all(chain_id, txs);
    execute_transactions_prechecked(parent, txs, stateless, height, timestamp_ms)
}

/// [`execute_transactions`] for a caller that already ran
/// [`check_stateless_all`] on `txs` (an auditor batching signatures across
/// many blocks): `stateless` must be exactly its output, so signatures are
/// not verified twice.
pub fn execute_transactions_prechecked<V: StateView + ?Sized>(
    parent: &V,
    txs: &[Transaction],
    stateless: Vec<TxResult>,
    height: u64,
    timestamp_ms: u64,
) -> Result<Execution, StateError> {
    if stateless.len() != txs.len() {
        return Err(StateError::Invariant(format!(
            "{} stateless results for {} transactions",
            stateless.len(),
            txs.len()
        )));
    }
    let governance = parent.governance()?;
    let validator_set = parent.validator_set()?;
    let ctx = BlockContext {
        height,
        timestamp_ms,
        epoch: governance.epoch,
    };
    let mut overlay = Overlay::new(parent);
    let mut results = Vec::with_capacity(txs.len());
    for (tx, stateless) in txs.iter().zip(stateless) {
        let result = match stateless {
            Ok(()) => apply(&mut overlay, &ctx, tx)?,
            Err(e) => Err(e),
        };
        if result.is_ok() {
            overlay.commit_pending();
        } else {
            overlay.discard_pending();
        }
        results.push(result);
    }
    let next_validator_set = overlay.validator_set()?;
    Ok(Execution {
        results,
        changes: overlay.into_changes(),
        validator_set,
        next_validator_set,
    })
}

/// Applies one statelessly valid transaction. `Ok(Err(_))` is a rejection;
/// `Err(_)` is a state failure.
fn apply<V: StateView + ?Sized>(
    state: &mut Overlay<'_, V>,
    ctx: &BlockContext,
    tx: &Transaction,
) -> Result<TxResult, StateError> {
    match &tx.body {
        TxBody::RegisterDevice(reg) => {
            register(state, ctx, tx, &reg.name.org(), std::slice::from_ref(reg))
        }
        TxBody::RegisterLot { org, devices } => register(state, ctx, tx, org, devices),
        TxBody::RotateDevice(rot) => rotate(state, ctx, tx, rot),
        TxBody::RevokeDevice(rev) => revoke(state, ctx, tx, rev),
        TxBody::Governance { sequence, action } => govern(state, ctx, tx, *sequence, action),
    }
}

/// Turns `Err(TxError)` of a check into a rejection, `Err(StateError)` into a
/// failure: `reject!(expr)` evaluates a `Result<T, TxError>` and returns the
/// rejection early.
macro_rules! reject {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(tx_error) => return Ok(Err(tx_error)),
        }
    };
}

/// The org's record if it exists and is active.
fn active_org<V: StateView + ?Sized>(
    state: &Overlay<'_, V>,
    org: &OrgId,
) -> Result<Result<OrgRecord, TxError>, StateError> {
    Ok(match state.org(org)? {
        None => Err(TxError::UnknownOrg(org.clone())),
        Some(record) if !record.is_active() => Err(TxError::OrgRemoved(org.clone())),
        Some(record) => Ok(record),
    })
}

/// Whether any signer of `tx` other than `except` is an admin of `org`.
fn signed_by_admin(tx: &Transaction, org: &OrgRecord, except: Option<&PublicKey>) -> bool {
    tx.signatures
        .iter()
        .any(|s| Some(&s.signer) != except && org.is_admin(&s.signer))
}

fn register<V: StateView + ?Sized>(
    state: &mut Overlay<'_, V>,
    ctx: &BlockContext,
    tx: &Transaction,
    org_id: &OrgId,
    devices: &[DeviceRegistration],
) -> Result<TxResult, StateError> {
    let mut org = reject!(active_org(state, org_id)?);
    if !signed_by_admin(tx, &org, None) {
        return Ok(Err(TxError::NotAuthorised {
            role: SignerRole::Admin,
        }));
    }
    for reg in devices {
        match state.device(&reg.name)? {
            Some(existing) if existing.is_active() => {
                return Ok(Err(TxError::AlreadyRegistered(reg.name.clone())))
            }
            Some(_) => return Ok(Err(TxError::NameRevoked(reg.name.clone()))),
            None => {}
        }
        if reg.expires_at_ms.is_some_and(|t| t <= ctx.timestamp_ms) {
            return Ok(Err(TxError::Expired));
        }
        let record = DeviceRecord {
            version: DeviceRecord::VERSION,
            name: reg.name.clone(),
            signing_key: reg.signing_key,
            agreement_key: reg.agreement_key,
            next_key_commitment: reg.next_key_commitment,
            key_version: 0,
            status: DeviceStatus::Active,
            registered_at: ctx.height,
            last_changed: ctx.height,
            expires_at_ms: reg.expires_at_ms,
            metadata: reg.metadata.clone(),
        };
        state.put(reg.name.state_key(), &record);
    }
    org.active_devices = org
        .active_devices
        .checked_add(devices.len() as u64)
        .ok_or_else(|| StateError::Invariant("active device count overflows".into()))?;
    state.put(org_id.state_key(), &org);
    Ok(Ok(()))
}

fn rotate<V: StateView + ?Sized>(
    state: &mut Overlay<'_, V>,
    ctx: &BlockContext,
    tx: &Transaction,
    rot: &Rotation,
) -> Result<TxResult, StateError> {
    let Some(mut record) = state.device(&rot.name)? else {
        return Ok(Err(TxError::UnknownDevice(rot.name.clone())));
    };
    if !record.is_active() {
        return Ok(Err(TxError::NameRevoked(rot.name.clone())));
    }
    // The version check comes first: a replayed rotation names a version
    // that has already been replaced.
    if rot.expected_key_version < record.key_version {
        return Ok(Err(TxError::Replay));
    }
    if rot.expected_key_version != record.key_version {
        return Ok(Err(TxError::KeyVersionMismatch {
            expected: record.key_version,
            found: rot.expected_key_version,
        }));
    }
    if rot.new_signing_key == record.signing_key {
        return Ok(Err(TxError::SameKey));
    }
    match rot.authority {
        Authority::Device => {
            if !tx.has_signer(&record.signing_key) {
                return Ok(Err(TxError::NotAuthorised {
                    role: SignerRole::Device,
                }));
            }
            if record.is_expired_at(ctx.timestamp_ms) {
                return Ok(Err(TxError::Expired));
            }
            // With a pre-rotation commitment, the current key alone cannot
            // choose the successor: it must be the committed one (and it has
            // signed too, checked statelessly).
            if let Some(commitment) = record.next_key_commitment {
                if commitment != rot.new_signing_key.digest(Domain::DeviceKey) {
                    return Ok(Err(TxError::PreRotationMismatch));
                }
            }
        }
        Authority::Admin => {
            let org = reject!(active_org(state, &rot.name.org())?);
            if !signed_by_admin(tx, &org, Some(&rot.new_signing_key)) {
                return Ok(Err(TxError::NotAuthorised {
                    role: SignerRole::Admin,
                }));
            }
        }
    }
    record.signing_key = rot.new_signing_key;
    record.agreement_key = rot.new_agreement_key;
    record.next_key_commitment = rot.next_key_commitment;
    record.key_version += 1;
    record.last_changed = ctx.height;
    state.put(rot.name.state_key(), &record);
    Ok(Ok(()))
}

fn revoke<V: StateView + ?Sized>(
    state: &mut Overlay<'_, V>,
    ctx: &BlockContext,
    tx: &Transaction,
    rev: &Revocation,
) -> Result<TxResult, StateError> {
    let Some(mut record) = state.device(&rev.name)? else {
        return Ok(Err(TxError::UnknownDevice(rev.name.clone())));
    };
    if !record.is_active() {
        return Ok(Err(TxError::NameRevoked(rev.name.clone())));
    }
    let org_id = rev.name.org();
    let Some(mut org) = state.org(&org_id)? else {
        return Err(StateError::Invariant(format!(
            "device {} has no organisation record",
            rev.name
        )));
    };
    let authorised = match rev.authority {
        Authority::Device => tx.has_signer(&record.signing_key),
        Authority::Admin => org.is_active() && signed_by_admin(tx, &org, None),
    };
    if !authorised {
        let role = match rev.authority {
            Authority::Device => SignerRole::Device,
            Authority::Admin => SignerRole::Admin,
        };
        return Ok(Err(TxError::NotAuthorised { role }));
    }
    record.status = DeviceStatus::Revoked {
        height: ctx.height,
        reason: rev.reason.clone(),
    };
    record.last_changed = ctx.height;
    org.active_devices = org.active_devices.checked_sub(1).ok_or_else(|| {
        StateError::Invariant(format!("{org_id} has an active device but a count of 0"))
    })?;
    state.put(rev.name.state_key(), &record);
    state.put(org_id.state_key(), &org);
    Ok(Ok(()))
}

/// The active org (if any) that `key` administers.
fn org_administered_by<V: StateView + ?Sized>(
    state: &Overlay<'_, V>,
    governance: &GovernanceRecord,
    key: &PublicKey,
) -> Result<Option<OrgRecord>, StateError> {
    for id in &governance.orgs {
        let org = state
            .org(id)?
            .ok_or_else(|| StateError::Invariant(format!("governance lists unknown org {id}")))?;
        if org.is_admin(key) {
            return Ok(Some(org));
        }
    }
    Ok(None)
}

/// Rejects admin keys already administering an active org other than `org`.
fn check_admins_free<V: StateView + ?Sized>(
    state: &Overlay<'_, V>,
    governance: &GovernanceRecord,
    org: &OrgId,
    admins: &[PublicKey],
) -> Result<TxResult, StateError> {
    for key in admins {
        if let Some(owner) = org_administered_by(state, governance, key)? {
            if owner.id != *org {
                return Ok(Err(TxError::AdminKeyInUse {
                    key: *key,
                    org: owner.id,
                }));
            }
        }
    }
    Ok(Ok(()))
}

/// Replaces the stored validator entries (the list is statelessly checked:
/// sorted, bounded, a valid set).
pub(crate) fn write_validators<V: StateView + ?Sized>(
    state: &mut Overlay<'_, V>,
    governance: &mut GovernanceRecord,
    validators: &[ValidatorInfo],
) {
    let new_count = validators.len() as u32;
    for (index, v) in (0..new_count).zip(validators) {
        state.put(validator_key(index), v);
    }
    for index in new_count..governance.validator_count {
        state.delete(validator_key(index));
    }
    governance.validator_count = new_count;
}

fn govern<V: StateView + ?Sized>(
    state: &mut Overlay<'_, V>,
    ctx: &BlockContext,
    tx: &Transaction,
    sequence: u64,
    action: &GovernanceAction,
) -> Result<TxResult, StateError> {
    let mut governance = state.governance()?;
    if sequence < governance.sequence {
        return Ok(Err(TxError::Replay));
    }
    if sequence != governance.sequence {
        return Ok(Err(TxError::GovernanceSequence {
            expected: governance.sequence,
            found: sequence,
        }));
    }
    // Every signer must be an admin of an active org; approvals count orgs.
    let mut approving = std::collections::BTreeSet::new();
    for s in &tx.signatures {
        match org_administered_by(state, &governance, &s.signer)? {
            Some(org) => {
                approving.insert(org.id);
            }
            None => {
                return Ok(Err(TxError::NotAuthorised {
                    role: SignerRole::Approver,
                }))
            }
        }
    }
    if (approving.len() as u64) < u64::from(governance.threshold) {
        return Ok(Err(TxError::ThresholdNotReached {
            approvals: approving.len() as u32,
            threshold: governance.threshold,
        }));
    }
    match action {
        GovernanceAction::AddOrg { org, admins } => {
            if state.org(org)?.is_some() {
                return Ok(Err(TxError::OrgExists(org.clone())));
            }
            if governance.orgs.len() >= MAX_ORGS {
                return Ok(Err(TxError::TooLarge {
                    what: SizeLimit::Orgs,
                    size: governance.orgs.len() as u64 + 1,
                    max: MAX_ORGS as u64,
                }));
            }
            reject!(check_admins_free(state, &governance, org, admins)?);
            let record = OrgRecord {
                version: OrgRecord::VERSION,
                id: org.clone(),
                admins: admins.clone(),
                status: OrgStatus::Active,
                active_devices: 0,
                added_at: ctx.height,
            };
            state.put(org.state_key(), &record);
            if let Err(i) = governance.orgs.binary_search(org) {
                governance.orgs.insert(i, org.clone());
            }
        }
        GovernanceAction::RemoveOrg { org } => {
            let mut record = reject!(active_org(state, org)?);
            if record.active_devices > 0 {
                return Ok(Err(TxError::OrgHasActiveDevices {
                    org: org.clone(),
                    count: record.active_devices,
                }));
            }
            let remaining = governance.orgs.len().saturating_sub(1) as u32;
            if remaining < governance.threshold {
                return Ok(Err(TxError::ThresholdUnreachable {
                    orgs: remaining,
                    threshold: governance.threshold,
                }));
            }
            record.status = OrgStatus::Removed { height: ctx.height };
            state.put(org.state_key(), &record);
            governance.orgs.retain(|o| o != org);
        }
        GovernanceAction::SetOrgAdmins { org, admins } => {
            let mut record = reject!(active_org(state, org)?);
            reject!(check_admins_free(state, &governance, org, admins)?);
            record.admins = admins.clone();
            state.put(org.state_key(), &record);
        }
        GovernanceAction::SetValidators { validators } => {
            write_validators(state, &mut governance, validators);
            // However many changes a block holds, the set moves one epoch.
            governance.epoch = ctx.epoch + 1;
        }
    }
    governance.sequence += 1;
    state.put(governance_key(), &governance);
    Ok(Ok(()))
}

/// A block's execution against the tree: results, the new root and the
/// nodes to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockExecution {
    pub height: u64,
    /// The executed transactions' hashes, in block order (computed once per
    /// execution, for the transaction root, the index and the mempool).
    pub tx_hashes: Vec<Hash>,
    pub results: Vec<TxResult>,
    /// Root of the state tree after the block.
    pub state_root: Hash,
    /// The tree nodes of version `height` (written with the block).
    pub tree_batch: TreeBatch,
    /// The block's writes, sorted by key (`None` deletes): what the store's
    /// head value index applies.
    pub changes: StateChanges,
    /// The set that certifies this block.
    pub validator_set: ValidatorSet,
    /// The set that certifies the next block.
    pub next_validator_set: ValidatorSet,
}

impl BlockExecution {
    /// Checks the header fields only execution determines.
    pub fn check_header(&self, header: &Header) -> Result<(), BlockError> {
        if header.height != self.height {
            return Err(BlockError::Height {
                expected: self.height,
                found: header.height,
            });
        }
        if header.state_root != self.state_root {
            return Err(BlockError::StateRoot {
                expected: self.state_root,
                found: header.state_root,
            });
        }
        let current = self.validator_set.hash();
        if header.validator_set_hash != current {
            return Err(BlockError::ValidatorSetHash {
                expected: current,
                found: header.validator_set_hash,
            });
        }
        if header.epoch != self.validator_set.epoch {
            return Err(BlockError::Epoch {
                expected: self.validator_set.epoch,
                found: header.epoch,
            });
        }
        let next = self.next_validator_set.hash();
        if header.next_validator_set_hash != next {
            return Err(BlockError::NextValidatorSetHash {
                expected: next,
                found: header.next_validator_set_hash,
            });
        }
        if self.validator_set.index_of(&header.proposer).is_none() {
            return Err(BlockError::UnknownProposer(header.proposer));
        }
        Ok(())
    }
}

/// Executes `txs` as block `height` (>= 1) on the tree version `height - 1`
/// held by `reader`: deterministic, and without writing anything.
pub fn execute_block<R: NodeReader + ?Sized>(
    reader: &R,
    chain_id: &str,
    txs: &[Transaction],
    height: u64,
    timestamp_ms: u64,
) -> Result<BlockExecution, StateError> {
    let stateless = check_stateless_all(chain_id, txs);
    let tx_hashes = txs.iter().map(Transaction::hash).collect();
    execute_block_prechecked(reader, txs, tx_hashes, stateless, height, timestamp_ms)
}

/// [`execute_block`] with the transactions' hashes and the stateless
/// results already computed (see [`execute_transactions_prechecked`]).
pub fn execute_block_prechecked<R: NodeReader + ?Sized>(
    reader: &R,
    txs: &[Transaction],
    tx_hashes: Vec<Hash>,
    stateless: Vec<TxResult>,
    height: u64,
    timestamp_ms: u64,
) -> Result<BlockExecution, StateError> {
    let parent_version = parent_version(height)?;
    let parent = TreeState::new(reader, parent_version);
    execute_block_over(
        reader,
        &parent,
        txs,
        tx_hashes,
        stateless,
        height,
        timestamp_ms,
    )
}

fn parent_version(height: u64) -> Result<u64, StateError> {
    height
        .checked_sub(1)
        .ok_or_else(|| StateError::Invariant("block 0 is genesis, not executed".into()))
}

/// [`execute_block_prechecked`] reading records from `parent`, which must
/// hold exactly the state of tree version `height - 1` (a store's head value
/// index, say: one read per record instead of a walk down the tree); the
/// tree update still reads its nodes from `reader`.
pub fn execute_block_over<R: NodeReader + ?Sized, V: StateView + ?Sized>(
    reader: &R,
    parent: &V,
    txs: &[Transaction],
    tx_hashes: Vec<Hash>,
    stateless: Vec<TxResult>,
    height: u64,
    timestamp_ms: u64,
) -> Result<BlockExecution, StateError> {
    if tx_hashes.len() != txs.len() {
        return Err(StateError::Invariant(format!(
            "{} hashes for {} transactions",
            tx_hashes.len(),
            txs.len()
        )));
    }
    let parent_version = parent_version(height)?;
    let execution = execute_transactions_prechecked(parent, txs, stateless, height, timestamp_ms)?;
    let tree_batch = apply_changes(reader, Some(parent_version), height, &execution.changes)?;
    Ok(BlockExecution {
        height,
        tx_hashes,
        results: execution.results,
        state_root: tree_batch.root,
        tree_batch,
        changes: execution.changes,
        validator_set: execution.validator_set,
        next_validator_set: execution.next_validator_set,
    })
}
