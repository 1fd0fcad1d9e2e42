//! The validator's consensus safety state on disk.
//!
//! The engine's [`SafetyState`] holds whole blocks: the valid value, and
//! the value of each proposal this validator signed. Encoded as it is, each
//! `Persist` (two or three per height) wrote and synced about a block's
//! bytes again, usually the same block. Here the state is stored
//! [split](SafetyState::split): the state names its values by hash under
//! [`STATE_KEY`], and each distinct block is stored once under
//! [`VALUE_PREFIX`]` || hash`, written with the first state that names it
//! and deleted with the first that no longer does, in the same synced
//! batch. So the stored blocks are always exactly the ones the stored state
//! names.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use keyreg_consensus::codec::Canonical;
use keyreg_consensus::{Hash, SafetyState, ValueId};
use keyreg_registry::wire::BlockValue;
use keyreg_registry::{Block, LedgerStore};

use crate::node::NodeError;

/// The state, its values named by hash ([`ValueId`]).
const STATE_KEY: &[u8] = b"consensus/safety-by-hash";
/// The state with its blocks inline, as nodes before this format wrote it:
/// read when [`STATE_KEY`] is absent, deleted by the first write.
const INLINE_STATE_KEY: &[u8] = b"consensus/safety";
/// Followed by a block's hash: that block's bytes.
const VALUE_PREFIX: &[u8] = b"consensus/value/";

fn value_key(id: &Hash) -> Vec<u8> {
    let mut key = VALUE_PREFIX.to_vec();
    key.extend_from_slice(&id.0);
    key
}

fn corrupt(e: impl std::fmt::Display) -> NodeError {
    NodeError::Consensus(format!("stored safety state: {e}"))
}

/// Writes and reads the safety state; remembers which blocks are stored.
pub struct SafetyStore {
    stored_values: HashSet<Hash>,
    /// An inline-format state may still be stored: the next write deletes it.
    inline_state: bool,
}

impl SafetyStore {
    /// Reads the stored state, if any, and the store's bookkeeping.
    pub fn load(
        store: &impl LedgerStore,
    ) -> Result<(Self, Option<SafetyState<BlockValue>>), NodeError> {
        let Some(bytes) = store.get_meta(STATE_KEY)? else {
            let inline = store
                .get_meta(INLINE_STATE_KEY)?
                .map(|bytes| SafetyState::<BlockValue>::from_bytes(&bytes).map_err(corrupt))
                .transpose()?;
            let safety = SafetyStore {
                stored_values: HashSet::new(),
                inline_state: inline.is_some(),
            };
            return Ok((safety, inline));
        };
        let state = SafetyState::<ValueId>::from_bytes(&bytes).map_err(corrupt)?;
        let mut values = HashMap::new();
        for id in state.value_ids() {
            let bytes = store
                .get_meta(&value_key(&id))?
                .ok_or_else(|| corrupt(format!("block {id} is missing")))?;
            let block = Block::from_bytes(&bytes).map_err(corrupt)?;
            values.insert(id, BlockValue(Arc::new(block)));
        }
        let stored_values = values.keys().copied().collect();
        let state = SafetyState::join(state, |id| values.get(id).cloned()).map_err(corrupt)?;
        let safety = SafetyStore {
            stored_values,
            inline_state: false,
        };
        Ok((safety, Some(state)))
    }

    /// Writes `state` durably (one synced batch): the blocks it names that
    /// are not stored yet, the state, and the deletion of blocks it no
    /// longer names.
    pub fn persist(
        &mut self,
        store: &impl LedgerStore,
        state: SafetyState<BlockValue>,
    ) -> Result<(), NodeError> {
        let (state, values) = state.split();
        let named: HashMap<Hash, BlockValue> = values.into_iter().collect();
        let new_values: Vec<(Vec<u8>, Vec<u8>)> = named
            .iter()
            .filter(|(id, _)| !self.stored_values.contains(id))
            .map(|(id, value)| (value_key(id), value.0.to_bytes()))
            .collect();
        let state_bytes = state.to_bytes();
        let mut puts: Vec<(&[u8], &[u8])> = new_values
            .iter()
            .map(|(key, bytes)| (key.as_slice(), bytes.as_slice()))
            .collect();
        puts.push((STATE_KEY, &state_bytes));
        let mut deleted: Vec<Vec<u8>> = self
            .stored_values
            .iter()
            .filter(|id| !named.contains_key(id))
            .map(value_key)
            .collect();
        if self.inline_state {
            deleted.push(INLINE_STATE_KEY.to_vec());
        }
        let deletes: Vec<&[u8]> = deleted.iter().map(Vec::as_slice).collect();
        store.write_meta(&puts, &deletes)?;
        self.stored_values = named.into_keys().collect();
        self.inline_state = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyreg_consensus::{Payload, ProposalData, Signed, SignedProposal, SigningKey, Step};
    use keyreg_registry::{Header, MemLedgerStore};

    fn block(height: u64, nonce: u8) -> BlockValue {
        let header = Header {
            version: Header::VERSION,
            chain_id: "safety-test".into(),
            epoch: 0,
            height,
            prev_hash: Hash([0; 32]),
            timestamp_ms: 0,
            proposer: SigningKey::from_seed([1; 32]).public(),
            tx_root: keyreg_registry::tx_root(&[]),
            state_root: Hash([nonce; 32]),
            validator_set_hash: Hash([2; 32]),
            next_validator_set_hash: Hash([2; 32]),
        };
        BlockValue(Arc::new(Block {
            version: Block::VERSION,
            header,
            transactions: Vec::new(),
        }))
    }

    fn proposal(key: &SigningKey, round: u32, value: &BlockValue) -> SignedProposal<BlockValue> {
        let data = ProposalData {
            version: ProposalData::VERSION,
            chain_id: "safety-test".into(),
            epoch: 0,
            height: 1,
            round,
            pol_round: None,
            value_hash: value.hash(),
        };
        SignedProposal {
            signed: Signed::sign(data, key),
            value: value.clone(),
        }
    }

    fn state(
        valid: Option<&BlockValue>,
        proposals: Vec<SignedProposal<BlockValue>>,
    ) -> SafetyState<BlockValue> {
        SafetyState {
            version: SafetyState::<BlockValue>::VERSION,
            height: 1,
            round: 1,
            step: Step::Prevote,
            locked: valid.map(|v| (1, v.hash())),
            valid: valid.map(|v| (1, v.clone())),
            valid_pol: Vec::new(),
            own_proposals: proposals,
            own_votes: Vec::new(),
        }
    }

    /// The blocks under [`VALUE_PREFIX`] in `store`, by hash.
    fn stored_blocks(store: &MemLedgerStore, ids: &[Hash]) -> Vec<Hash> {
        ids.iter()
            .filter(|id| store.get_meta(&value_key(id)).unwrap().is_some())
            .copied()
            .collect()
    }

    fn reload(store: &MemLedgerStore) -> Option<SafetyState<BlockValue>> {
        SafetyStore::load(store).unwrap().1
    }

    #[test]
    fn each_block_is_stored_once_while_named_and_the_state_reloads() {
        let key = SigningKey::from_seed([3; 32]);
        let (v, w) = (block(1, 1), block(1, 2));
        let all = [v.hash(), w.hash()];
        let store = MemLedgerStore::new();
        let (mut safety, loaded) = SafetyStore::load(&store).unwrap();
        assert!(loaded.is_none());

        let first = state(None, vec![proposal(&key, 0, &v)]);
        safety.persist(&store, first.clone()).unwrap();
        assert_eq!(reload(&store), Some(first));
        assert_eq!(stored_blocks(&store, &all), vec![v.hash()]);

        let second = state(Some(&v), vec![proposal(&key, 0, &v), proposal(&key, 1, &w)]);
        safety.persist(&store, second.clone()).unwrap();
        assert_eq!(reload(&store), Some(second));
        assert_eq!(stored_blocks(&store, &all), all.to_vec());

        // A new height: no value named, none kept.
        let mut next = state(None, Vec::new());
        next.height = 2;
        safety.persist(&store, next.clone()).unwrap();
        assert_eq!(reload(&store), Some(next));
        assert!(stored_blocks(&store, &all).is_empty());
    }

    #[test]
    fn a_state_in_the_inline_format_is_read_then_replaced() {
        let key = SigningKey::from_seed([7; 32]);
        let v = block(1, 1);
        let old = state(Some(&v), vec![proposal(&key, 0, &v)]);
        let store = MemLedgerStore::new();
        store.put_meta(INLINE_STATE_KEY, &old.to_bytes()).unwrap();

        let (mut safety, loaded) = SafetyStore::load(&store).unwrap();
        assert_eq!(loaded, Some(old.clone()));
        safety.persist(&store, old.clone()).unwrap();
        assert!(store.get_meta(INLINE_STATE_KEY).unwrap().is_none());
        assert_eq!(reload(&store), Some(old));
    }

    #[test]
    fn a_missing_or_wrong_block_fails_the_load() {
        let key = SigningKey::from_seed([9; 32]);
        let (v, w) = (block(1, 1), block(1, 2));
        let store = MemLedgerStore::new();
        let (mut safety, _) = SafetyStore::load(&store).unwrap();
        safety
            .persist(&store, state(Some(&v), vec![proposal(&key, 0, &v)]))
            .unwrap();

        store
            .put_meta(&value_key(&v.hash()), &w.0.to_bytes())
            .unwrap();
        assert!(SafetyStore::load(&store).is_err(), "another block");
        store.put_meta(&value_key(&v.hash()), b"junk").unwrap();
        assert!(SafetyStore::load(&store).is_err(), "undecodable");
        store.write_meta(&[], &[&value_key(&v.hash())]).unwrap();
        assert!(SafetyStore::load(&store).is_err(), "missing");
    }
}
