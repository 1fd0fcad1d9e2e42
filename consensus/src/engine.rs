//! The Tendermint consensus state machine ("The latest gossip on BFT
//! consensus", Buchman, Kwon, Milosevic, 2018), sans IO.
//!
//! The engine never reads a clock, draws randomness or touches the network
//! or disk. The driver feeds it [`Event`]s and executes the [`Action`]s it
//! returns, in order. The rule numbers in comments (`L22`, `L36`, ...) are
//! the line numbers of Algorithm 1 in the paper.
//!
//! Persistence contract: an action list holds at most one
//! [`Action::Persist`], always first. The driver must make that state durable
//! before it executes any later action of the list (above all before it sends
//! a [`Action::Broadcast`]): everything a vote depends on is in it, so a
//! validator restarted with [`Engine::restore`] never signs a message that
//! conflicts with one it already sent.

use std::collections::{BTreeMap, BTreeSet};

use bincode::{Decode, Encode};
use thiserror::Error;

use crate::certificate::{verify_commit, CommitCertificate, VoteData, VoteKind};
use crate::codec::Canonical;
use crate::crypto::{Hash, SigningKey};
use crate::messages::{
    Evidence, Message, MessageBody, Payload, ProposalData, Signed, SignedProposal, SignedVote,
};
use crate::validators::{ValidatorSet, ValidatorSetError};

/// Bounds how many rule firings one event may cause. Each firing moves the
/// step, the round, or sets a once-per-round flag, so a handful suffices; the
/// bound turns a logic bug into a loud assertion instead of a hang.
const MAX_RULE_FIRINGS_PER_EVENT: usize = 1024;
/// Own signed messages kept (and persisted): prevote and precommit, and the
/// proposal, of the current and the previous round.
const MAX_OWN_VOTES: usize = 4;
const MAX_OWN_PROPOSALS: usize = 2;
/// Messages for the next height, kept until its validator set is known.
const MAX_NEXT_HEIGHT_BUFFER: usize = 1024;
/// ... and at most this many from any one claimed signer.
const MAX_NEXT_HEIGHT_BUFFER_PER_SIGNER: usize = 8;

/// Timing and bounds. Timeouts are abstract milliseconds; the driver maps
/// them to its clock (the simulator to simulated time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub timeout_propose_ms: u64,
    pub timeout_propose_delta_ms: u64,
    pub timeout_prevote_ms: u64,
    pub timeout_prevote_delta_ms: u64,
    pub timeout_precommit_ms: u64,
    pub timeout_precommit_delta_ms: u64,
    /// How often a validator re-sends its own messages of the current and
    /// previous round, and asks for sync if it saw a higher height. This
    /// replaces a gossip layer's retransmissions: lost messages are healed.
    pub rebroadcast_interval_ms: u64,
    /// Largest encoded [`Message`] accepted (bounds proposal values).
    pub max_message_bytes: usize,
    /// Messages for rounds above `round + future_round_window` are dropped.
    pub future_round_window: u32,
    /// Message storage for rounds below `round - past_round_window` is pruned.
    pub past_round_window: u32,
    /// Fault injection for the simulator's self-test: prevote as if never
    /// locked and propose fresh values instead of the valid value (Tendermint
    /// without its locking rules). Honoured only in test builds and with
    /// feature `fault-injection`; ignored otherwise.
    #[doc(hidden)]
    pub unsafe_ignore_lock: bool,
    /// Fault injection: never emit [`Action::Persist`], so a restarted
    /// validator forgets what it signed. Same gating as `unsafe_ignore_lock`.
    #[doc(hidden)]
    pub unsafe_skip_persist: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timeout_propose_ms: 3000,
            timeout_propose_delta_ms: 500,
            timeout_prevote_ms: 1000,
            timeout_prevote_delta_ms: 500,
            timeout_precommit_ms: 1000,
            timeout_precommit_delta_ms: 500,
            rebroadcast_interval_ms: 2000,
            max_message_bytes: 4 * 1024 * 1024,
            future_round_window: 16,
            past_round_window: 64,
            unsafe_ignore_lock: false,
            unsafe_skip_persist: false,
        }
    }
}

impl Config {
    /// The duration of `kind` in `round`: base + delta * round, so rounds
    /// eventually last long enough for any (unknown) post-GST message delay.
    pub fn timeout_ms(&self, kind: TimeoutKind, round: u32) -> u64 {
        let (base, delta) = match kind {
            TimeoutKind::Propose => (self.timeout_propose_ms, self.timeout_propose_delta_ms),
            TimeoutKind::Prevote => (self.timeout_prevote_ms, self.timeout_prevote_delta_ms),
            TimeoutKind::Precommit => (self.timeout_precommit_ms, self.timeout_precommit_delta_ms),
            TimeoutKind::Rebroadcast => (self.rebroadcast_interval_ms, 0),
        };
        base.saturating_add(delta.saturating_mul(u64::from(round)))
    }

    fn ignores_lock(&self) -> bool {
        cfg!(any(test, feature = "fault-injection")) && self.unsafe_ignore_lock
    }

    fn skips_persist(&self) -> bool {
        cfg!(any(test, feature = "fault-injection")) && self.unsafe_skip_persist
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Encode, Decode)]
pub enum Step {
    Propose,
    Prevote,
    Precommit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimeoutKind {
    Propose,
    Prevote,
    Precommit,
    Rebroadcast,
}

/// A timer the driver runs for the engine. Timers are never cancelled: one
/// that fires after its height or round has passed is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timeout {
    pub height: u64,
    pub round: u32,
    pub kind: TimeoutKind,
}

/// Everything a validator's future votes depend on, for its current height.
/// Written by [`Action::Persist`]; read back by [`Engine::restore`].
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct SafetyState<V> {
    pub version: u8,
    pub height: u64,
    pub round: u32,
    pub step: Step,
    /// (lockedRound, id(lockedValue)).
    pub locked: Option<(u32, Hash)>,
    /// (validRound, validValue): re-proposed when this validator proposes.
    pub valid: Option<(u32, V)>,
    /// The +2/3 prevotes for validValue in validRound (its proof-of-lock),
    /// relayed with re-proposals so peers that missed them can accept.
    pub valid_pol: Vec<SignedVote>,
    /// Proposals this validator signed in this and the previous round.
    pub own_proposals: Vec<SignedProposal<V>>,
    /// Votes this validator signed in this and the previous round.
    pub own_votes: Vec<SignedVote>,
}

impl<V: Payload> Canonical for SafetyState<V> {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

/// A value named by its hash alone: what [`SafetyState::split`] leaves in
/// the state, so a driver can store each distinct value once beside it
/// instead of encoding whole values into every persisted state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ValueId(pub Hash);

impl Payload for ValueId {
    fn hash(&self) -> Hash {
        self.0
    }
}

impl<V: Payload> SafetyState<V> {
    /// The state with every value replaced by its [`ValueId`], and the
    /// distinct values it held with their ids, in first-seen order. A
    /// validator's valid value and its own proposals are usually one value.
    pub fn split(self) -> (SafetyState<ValueId>, Vec<(Hash, V)>) {
        let mut values: Vec<(Hash, V)> = Vec::new();
        let mut keep = |value: V| {
            let id = value.hash();
            if values.iter().all(|(kept, _)| *kept != id) {
                values.push((id, value));
            }
            ValueId(id)
        };
        let valid = self.valid.map(|(round, value)| (round, keep(value)));
        let own_proposals = self
            .own_proposals
            .into_iter()
            .map(|proposal| SignedProposal {
                signed: proposal.signed,
                value: keep(proposal.value),
            })
            .collect();
        let state = SafetyState {
            version: self.version,
            height: self.height,
            round: self.round,
            step: self.step,
            locked: self.locked,
            valid,
            valid_pol: self.valid_pol,
            own_proposals,
            own_votes: self.own_votes,
        };
        (state, values)
    }

    /// Undoes [`split`](Self::split): `value` gives the value of an id, and
    /// one it lacks, or whose hash is not the id, fails the join.
    pub fn join(
        state: SafetyState<ValueId>,
        mut value: impl FnMut(&Hash) -> Option<V>,
    ) -> Result<Self, EngineError> {
        let mut lookup = |ValueId(id): ValueId| {
            value(&id)
                .filter(|value| value.hash() == id)
                .ok_or(EngineError::CorruptState(
                    "a value the state names is missing or is another value",
                ))
        };
        let valid = match state.valid {
            Some((round, id)) => Some((round, lookup(id)?)),
            None => None,
        };
        let own_proposals = state
            .own_proposals
            .into_iter()
            .map(|proposal| {
                Ok(SignedProposal {
                    signed: proposal.signed,
                    value: lookup(proposal.value)?,
                })
            })
            .collect::<Result<_, EngineError>>()?;
        Ok(SafetyState {
            version: state.version,
            height: state.height,
            round: state.round,
            step: state.step,
            locked: state.locked,
            valid,
            valid_pol: state.valid_pol,
            own_proposals,
            own_votes: state.own_votes,
        })
    }

    /// The ids of the values the state names (a [`split`](Self::split)
    /// state's are what a driver stored beside it), without repeats.
    pub fn value_ids(&self) -> Vec<Hash> {
        let mut ids: Vec<Hash> = Vec::new();
        let named = self.valid.iter().map(|(_, value)| value);
        for id in named
            .chain(self.own_proposals.iter().map(|p| &p.value))
            .map(Payload::hash)
        {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }
}

/// Inputs to the engine.
#[derive(Clone, Debug)]
pub enum Event<V> {
    /// A decoded gossip message (the engine verifies it against the
    /// validator set of the message's height).
    Message(Message<V>),
    /// A timer set by [`Action::ScheduleTimeout`] expired.
    Timeout(Timeout),
    /// The application's answer to [`Action::RequestProposal`].
    ProposalValue { height: u64, round: u32, value: V },
    /// The application's answer to [`Action::ValidateProposal`].
    ValidationResult {
        height: u64,
        value_hash: Hash,
        valid: bool,
    },
    /// A block with its commit certificate obtained outside consensus (block
    /// sync). Commits the engine's current height if the certificate
    /// verifies against the current validator set.
    CommittedBlock {
        height: u64,
        value: V,
        certificate: CommitCertificate,
    },
}

/// Outputs of the engine, to be executed in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action<V> {
    /// Make this durable before executing any later action of the list.
    Persist(SafetyState<V>),
    /// Send to every peer (including validators not yet at this height).
    Broadcast(Message<V>),
    /// Deliver `Event::Timeout(timeout)` after `after_ms`.
    ScheduleTimeout { timeout: Timeout, after_ms: u64 },
    /// This validator proposes: build a block on the parent state and reply
    /// with `Event::ProposalValue`.
    RequestProposal { height: u64, round: u32 },
    /// Execute `value` against the parent state and reply with
    /// `Event::ValidationResult`. The engine prevotes for a value only after
    /// the application accepted it.
    ValidateProposal { height: u64, round: u32, value: V },
    /// `value` is final at `height`. Store it with its certificate, apply it,
    /// then call [`Engine::start_height`] with the next height's validator set.
    Commit {
        height: u64,
        value: V,
        certificate: CommitCertificate,
    },
    /// A validator equivocated; record the self-verifying proof on chain.
    Evidence(Evidence),
    /// This node is behind: fetch committed blocks (with certificates) from
    /// `height` on and feed them back as `Event::CommittedBlock`.
    NeedSync { height: u64 },
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EngineError {
    #[error("invalid validator set: {0}")]
    ValidatorSet(#[from] ValidatorSetError),
    #[error("chain id must be 1..={max} bytes", max = crate::certificate::MAX_CHAIN_ID_LEN)]
    ChainId,
    #[error("start_height called while height {0} is still undecided")]
    HeightNotDecided(u64),
    #[error("persisted safety state is for height {state}, beyond the next height {next}")]
    StateAhead { state: u64, next: u64 },
    #[error("persisted safety state is inconsistent: {0}")]
    CorruptState(&'static str),
}

/// Counters for observability (and the simulator's sanity checks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub rejected_messages: u64,
    pub duplicate_messages: u64,
    pub dropped_out_of_window: u64,
    pub evidence_found: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Validity {
    Pending,
    Valid,
    Invalid,
}

/// Votes of one kind in one round, keyed by (validator, block). A validator
/// normally has one entry; an equivocating one has at most two (the second
/// is also evidence). Each entry counts only toward the block it names, so no
/// validator's power is ever counted twice for one block: the counting of
/// the paper, under which a Byzantine validator may send different votes to
/// different peers. (Dropping the second vote instead would let an
/// equivocator make a proof-of-lock unverifiable for some honest peers and
/// stall a locked validator forever.)
type VoteSlots = BTreeMap<(usize, Option<Hash>), SignedVote>;

/// Most votes (or proposals) kept per validator and slot.
const MAX_CONFLICTING: usize = 2;

/// Messages of one round of the current height.
#[derive(Debug)]
struct RoundMessages<V> {
    /// The proposer's proposal, and a conflicting one if it equivocated.
    proposals: Vec<SignedProposal<V>>,
    prevotes: VoteSlots,
    precommits: VoteSlots,
}

impl<V> Default for RoundMessages<V> {
    fn default() -> Self {
        RoundMessages {
            proposals: Vec::new(),
            prevotes: BTreeMap::new(),
            precommits: BTreeMap::new(),
        }
    }
}

impl<V> RoundMessages<V> {
    fn votes(&self, kind: VoteKind) -> &VoteSlots {
        match kind {
            VoteKind::Prevote => &self.prevotes,
            VoteKind::Precommit => &self.precommits,
        }
    }

    fn votes_mut(&mut self, kind: VoteKind) -> &mut VoteSlots {
        match kind {
            VoteKind::Prevote => &mut self.prevotes,
            VoteKind::Precommit => &mut self.precommits,
        }
    }
}

/// All of one validator's entries in `slots`.
fn entries_of(slots: &VoteSlots, validator: usize) -> impl Iterator<Item = &SignedVote> {
    slots
        .range((validator, None)..=(validator, Some(Hash([0xff; 32]))))
        .map(|(_, v)| v)
}

/// "For the first time" flags of the current round (not safety-relevant:
/// after a restart they may fire again harmlessly).
#[derive(Debug, Default)]
struct RoundFlags {
    prevote_timeout_scheduled: bool,
    precommit_timeout_scheduled: bool,
    polka_handled: bool,
    proposal_requested: bool,
}

#[derive(Debug)]
pub struct Engine<V: Payload> {
    config: Config,
    chain_id: String,
    key: Option<SigningKey>,
    set: ValidatorSet,
    /// This validator's index in `set`; None for followers.
    my_index: Option<usize>,
    height: u64,
    round: u32,
    step: Step,
    /// Set once the height is decided; cleared by `start_height`.
    decided: bool,
    locked: Option<(u32, Hash)>,
    valid: Option<(u32, V)>,
    valid_pol: Vec<SignedVote>,
    own_proposals: Vec<SignedProposal<V>>,
    own_votes: Vec<SignedVote>,
    rounds: BTreeMap<u32, RoundMessages<V>>,
    validity: BTreeMap<Hash, Validity>,
    flags: RoundFlags,
    /// Equivocations already reported at this height: (validator, round, slot).
    reported: BTreeSet<(usize, u32, u8)>,
    next_height_buffer: Vec<Message<V>>,
    highest_seen_height: u64,
    missing_value_sync_requested: bool,
    far_ahead_sync_requested: bool,
    stats: EngineStats,
    dirty: bool,
    out: Vec<Action<V>>,
}

/// Proposer of (height, round): round-robin over the set's key order.
pub fn proposer_index(set: &ValidatorSet, height: u64, round: u32) -> usize {
    // A set has 1..=MAX_VALIDATORS members, so the modulus is non-zero and
    // the result fits in usize.
    let n = set.len() as u64;
    ((height % n + u64::from(round) % n) % n) as usize
}

/// Slot ids for equivocation bookkeeping.
const SLOT_PROPOSAL: u8 = 2;

impl<V: Payload> Engine<V> {
    /// A fresh engine at `height` (nothing signed there yet). `key: None`
    /// runs a non-voting follower. Call [`Engine::start`] next.
    pub fn new(
        config: Config,
        key: Option<SigningKey>,
        chain_id: &str,
        height: u64,
        set: ValidatorSet,
    ) -> Result<Self, EngineError> {
        if chain_id.is_empty() || chain_id.len() > crate::certificate::MAX_CHAIN_ID_LEN {
            return Err(EngineError::ChainId);
        }
        set.check()?;
        let my_index = key.as_ref().and_then(|k| set.index_of(&k.public()));
        let engine = Engine {
            config,
            chain_id: chain_id.to_string(),
            key,
            set,
            my_index,
            height,
            round: 0,
            step: Step::Propose,
            decided: false,
            locked: None,
            valid: None,
            valid_pol: Vec::new(),
            own_proposals: Vec::new(),
            own_votes: Vec::new(),
            rounds: BTreeMap::new(),
            validity: BTreeMap::new(),
            flags: RoundFlags::default(),
            reported: BTreeSet::new(),
            next_height_buffer: Vec::new(),
            highest_seen_height: height,
            missing_value_sync_requested: false,
            far_ahead_sync_requested: false,
            stats: EngineStats::default(),
            dirty: true,
            out: Vec::new(),
        };
        Ok(engine)
    }

    /// Rebuilds a validator after a crash. `height` is the first height not
    /// in the node's block store and `set` its validator set; `state` is the
    /// last persisted [`SafetyState`]. A state for an earlier height is stale
    /// (that height was committed) and ignored. Call [`Engine::start`] next:
    /// it re-sends the messages signed before the crash instead of signing
    /// new ones.
    pub fn restore(
        config: Config,
        key: Option<SigningKey>,
        chain_id: &str,
        height: u64,
        set: ValidatorSet,
        state: SafetyState<V>,
    ) -> Result<Self, EngineError> {
        let mut engine = Self::new(config, key, chain_id, height, set)?;
        if state.height < height {
            return Ok(engine);
        }
        if state.height > height {
            return Err(EngineError::StateAhead {
                state: state.height,
                next: height,
            });
        }
        if state.version != SafetyState::<V>::VERSION {
            return Err(EngineError::CorruptState("unknown version"));
        }
        let me = engine.key.as_ref().map(|k| k.public());
        if !state.own_votes.iter().all(|v| Some(v.signer) == me)
            || !state
                .own_proposals
                .iter()
                .all(|p| Some(p.signed.signer) == me)
        {
            return Err(EngineError::CorruptState("messages signed by another key"));
        }
        let in_window = |round: u32| round + 1 >= state.round && round <= state.round;
        if state.own_votes.len() > MAX_OWN_VOTES
            || state.own_proposals.len() > MAX_OWN_PROPOSALS
            || !state
                .own_votes
                .iter()
                .all(|v| v.data.height == height && in_window(v.data.round))
            || !state
                .own_proposals
                .iter()
                .all(|p| p.signed.data.height == height && in_window(p.signed.data.round))
            || state.valid_pol.len() > engine.set.len()
            || state.locked.is_some_and(|(r, _)| r > state.round)
            || state.valid.as_ref().is_some_and(|(r, _)| *r > state.round)
        {
            return Err(EngineError::CorruptState(
                "messages outside the state's rounds",
            ));
        }
        engine.round = state.round;
        engine.step = state.step;
        engine.locked = state.locked;
        if let Some((_, value)) = &state.valid {
            engine.validity.insert(value.hash(), Validity::Valid);
        }
        engine.valid = state.valid;
        for vote in &state.valid_pol {
            if let Some(index) = engine.set.index_of(&vote.signer) {
                engine
                    .rounds
                    .entry(vote.data.round)
                    .or_default()
                    .prevotes
                    .insert((index, vote.data.block), vote.clone());
            }
        }
        engine.valid_pol = state.valid_pol;
        for p in &state.own_proposals {
            engine.validity.insert(p.value.hash(), Validity::Valid);
            engine
                .rounds
                .entry(p.signed.data.round)
                .or_default()
                .proposals
                .push(p.clone());
        }
        if let Some(me) = engine.my_index {
            for v in &state.own_votes {
                engine
                    .rounds
                    .entry(v.data.round)
                    .or_default()
                    .votes_mut(v.data.kind)
                    .insert((me, v.data.block), v.clone());
            }
        }
        engine.own_proposals = state.own_proposals;
        engine.own_votes = state.own_votes;
        engine.dirty = false;
        Ok(engine)
    }

    /// Starts (or, after [`Engine::restore`], resumes) the current round.
    pub fn start(&mut self) -> Vec<Action<V>> {
        self.resume_round();
        self.apply_rules();
        self.take_actions()
    }

    pub fn handle(&mut self, event: Event<V>) -> Vec<Action<V>> {
        match event {
            Event::Message(message) => self.on_message(message),
            Event::Timeout(timeout) => self.on_timeout(timeout),
            Event::ProposalValue {
                height,
                round,
                value,
            } => self.on_proposal_value(height, round, value),
            Event::ValidationResult {
                height,
                value_hash,
                valid,
            } => self.on_validation_result(height, value_hash, valid),
            Event::CommittedBlock {
                height,
                value,
                certificate,
            } => self.on_committed_block(height, value, certificate),
        }
        self.apply_rules();
        self.take_actions()
    }

    /// Moves to the next height after [`Action::Commit`], with that height's
    /// validator set (a new epoch if the set changed). Replays buffered
    /// messages for the new height.
    pub fn start_height(&mut self, set: ValidatorSet) -> Result<Vec<Action<V>>, EngineError> {
        if !self.decided {
            return Err(EngineError::HeightNotDecided(self.height));
        }
        set.check()?;
        self.my_index = self.key.as_ref().and_then(|k| set.index_of(&k.public()));
        self.set = set;
        self.height += 1;
        self.highest_seen_height = self.highest_seen_height.max(self.height);
        self.decided = false;
        self.locked = None;
        self.valid = None;
        self.valid_pol.clear();
        self.own_proposals.clear();
        self.own_votes.clear();
        self.rounds.clear();
        self.validity.clear();
        self.reported.clear();
        self.missing_value_sync_requested = false;
        self.far_ahead_sync_requested = false;
        self.enter_round(0);
        let buffered = std::mem::take(&mut self.next_height_buffer);
        for message in buffered {
            self.on_message(message);
        }
        self.apply_rules();
        Ok(self.take_actions())
    }

    pub fn height(&self) -> u64 {
        self.height
    }

    pub fn round(&self) -> u32 {
        self.round
    }

    pub fn step(&self) -> Step {
        self.step
    }

    /// True between [`Action::Commit`] and [`Engine::start_height`].
    pub fn is_decided(&self) -> bool {
        self.decided
    }

    pub fn validator_set(&self) -> &ValidatorSet {
        &self.set
    }

    pub fn locked(&self) -> Option<(u32, Hash)> {
        self.locked
    }

    pub fn valid_round(&self) -> Option<u32> {
        self.valid.as_ref().map(|(r, _)| *r)
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The state [`Action::Persist`] would carry now.
    pub fn safety_state(&self) -> SafetyState<V> {
        SafetyState {
            version: SafetyState::<V>::VERSION,
            height: self.height,
            round: self.round,
            step: self.step,
            locked: self.locked,
            valid: self.valid.clone(),
            valid_pol: self.valid_pol.clone(),
            own_proposals: self.own_proposals.clone(),
            own_votes: self.own_votes.clone(),
        }
    }

    // ---- event handlers -------------------------------------------------

    fn on_message(&mut self, message: Message<V>) {
        let height = message.height();
        if height < self.height || (height == self.height && self.decided) {
            self.stats.dropped_out_of_window += 1;
            return;
        }
        if height > self.height {
            self.on_future_height_message(message);
            return;
        }
        let round = message.round();
        let lowest_kept = self.round.saturating_sub(self.config.past_round_window);
        if round > self.round.saturating_add(self.config.future_round_window) || round < lowest_kept
        {
            self.stats.dropped_out_of_window += 1;
            return;
        }
        if self.is_duplicate(&message) {
            self.stats.duplicate_messages += 1;
            return;
        }
        let signer = match message.verify(&self.chain_id, &self.set) {
            Ok(index) => index,
            Err(_) => {
                self.stats.rejected_messages += 1;
                return;
            }
        };
        match message.body {
            MessageBody::Proposal(proposal) => self.store_proposal(signer, proposal),
            MessageBody::Vote(vote) => self.store_vote(signer, vote),
        }
    }

    fn is_duplicate(&self, message: &Message<V>) -> bool {
        let Some(round) = self.rounds.get(&message.round()) else {
            return false;
        };
        match &message.body {
            MessageBody::Proposal(p) => round
                .proposals
                .iter()
                .any(|q| q.signed.data == p.signed.data),
            // Same signer, round, kind and block: the same vote data (a
            // second signature over it adds nothing).
            MessageBody::Vote(v) => self
                .set
                .index_of(&v.signer)
                .is_some_and(|i| round.votes(v.data.kind).contains_key(&(i, v.data.block))),
        }
    }

    /// Future-height messages: a sign that this node is behind, and (for the
    /// next height) early messages worth keeping until that height starts.
    fn on_future_height_message(&mut self, message: Message<V>) {
        let height = message.height();
        let signer = message.signer();
        if self.set.index_of(&signer).is_none() {
            self.stats.dropped_out_of_window += 1;
            return;
        }
        // An unverified claim (the next epoch's set is unknown here): it only
        // makes the rebroadcast timer ask for sync, at most once per
        // interval, and sync responses are verified by certificate.
        self.highest_seen_height = self.highest_seen_height.max(height);
        let far_ahead = height > self.height + 1;
        if far_ahead
            && !self.far_ahead_sync_requested
            && message.epoch() == self.set.epoch
            && message.verify(&self.chain_id, &self.set).is_ok()
        {
            self.far_ahead_sync_requested = true;
            self.out.push(Action::NeedSync {
                height: self.height,
            });
        }
        let from_signer = self
            .next_height_buffer
            .iter()
            .filter(|m| m.signer() == signer)
            .count();
        if far_ahead
            || self.next_height_buffer.len() >= MAX_NEXT_HEIGHT_BUFFER
            || from_signer >= MAX_NEXT_HEIGHT_BUFFER_PER_SIGNER
            || self.next_height_buffer.contains(&message)
        {
            self.stats.dropped_out_of_window += 1;
            return;
        }
        self.next_height_buffer.push(message);
    }

    fn store_proposal(&mut self, signer: usize, proposal: SignedProposal<V>) {
        let round = proposal.signed.data.round;
        if signer != proposer_index(&self.set, self.height, round) {
            self.stats.rejected_messages += 1;
            return;
        }
        let proposals = &mut self.rounds.entry(round).or_default().proposals;
        if let Some(first) = proposals.first() {
            // Different signed data from the same proposer (duplicates were
            // filtered before verification): equivocation.
            let evidence =
                Evidence::conflicting_proposals(first.signed.clone(), proposal.signed.clone());
            if proposals.len() >= MAX_CONFLICTING {
                return;
            }
            proposals.push(proposal.clone());
            self.report(signer, round, SLOT_PROPOSAL, evidence);
        } else {
            proposals.push(proposal.clone());
        }
        let hash = proposal.signed.data.value_hash;
        if let std::collections::btree_map::Entry::Vacant(entry) = self.validity.entry(hash) {
            entry.insert(Validity::Pending);
            self.out.push(Action::ValidateProposal {
                height: self.height,
                round,
                value: proposal.value,
            });
        }
    }

    fn store_vote(&mut self, signer: usize, vote: SignedVote) {
        let round = vote.data.round;
        let kind = vote.data.kind;
        let votes = self.rounds.entry(round).or_default().votes_mut(kind);
        let existing: Vec<SignedVote> = entries_of(votes, signer).cloned().collect();
        if existing.len() >= MAX_CONFLICTING {
            return;
        }
        votes.insert((signer, vote.data.block), vote.clone());
        if let Some(first) = existing.into_iter().next() {
            let evidence = Evidence::conflicting_votes(first, vote);
            self.report(signer, round, crate::messages::kind_index(kind), evidence);
        }
    }

    fn report(&mut self, signer: usize, round: u32, slot: u8, evidence: Evidence) {
        if self.reported.insert((signer, round, slot)) {
            self.stats.evidence_found += 1;
            self.out.push(Action::Evidence(evidence));
        }
    }

    fn on_timeout(&mut self, timeout: Timeout) {
        if self.decided || timeout.height != self.height || timeout.round != self.round {
            return;
        }
        match timeout.kind {
            // L57: OnTimeoutPropose.
            TimeoutKind::Propose if self.step == Step::Propose => {
                self.sign_vote(VoteKind::Prevote, None);
                self.step = Step::Prevote;
                self.dirty = true;
            }
            // L61: OnTimeoutPrevote.
            TimeoutKind::Prevote if self.step == Step::Prevote => {
                self.sign_vote(VoteKind::Precommit, None);
                self.step = Step::Precommit;
                self.dirty = true;
            }
            // L65: OnTimeoutPrecommit.
            TimeoutKind::Precommit => self.enter_round(self.round + 1),
            TimeoutKind::Rebroadcast => self.rebroadcast(),
            TimeoutKind::Propose | TimeoutKind::Prevote => {}
        }
    }

    fn on_proposal_value(&mut self, height: u64, round: u32, value: V) {
        if self.decided
            || height != self.height
            || round != self.round
            || self.step != Step::Propose
            || !self.is_proposer()
            || self.own_proposal_in(round).is_some()
        {
            return;
        }
        self.sign_proposal(value, None);
    }

    fn on_validation_result(&mut self, height: u64, value_hash: Hash, valid: bool) {
        if height != self.height {
            return;
        }
        if let Some(entry) = self.validity.get_mut(&value_hash) {
            if *entry == Validity::Pending {
                *entry = if valid {
                    Validity::Valid
                } else {
                    Validity::Invalid
                };
            }
        }
    }

    fn on_committed_block(&mut self, height: u64, value: V, certificate: CommitCertificate) {
        if self.decided || height != self.height {
            return;
        }
        let hash = value.hash();
        if verify_commit(&self.chain_id, &self.set, height, &hash, &certificate).is_err() {
            self.stats.rejected_messages += 1;
            return;
        }
        self.decide(value, certificate);
    }

    // ---- rules ------------------------------------------------------------

    fn apply_rules(&mut self) {
        for _ in 0..MAX_RULE_FIRINGS_PER_EVENT {
            if self.decided {
                return;
            }
            self.check_invariants();
            let fired = self.try_commit()
                || self.try_round_skip()
                || self.try_prevote_on_proposal()
                || self.try_schedule_prevote_timeout()
                || self.try_lock_on_polka()
                || self.try_precommit_nil()
                || self.try_schedule_precommit_timeout();
            if !fired {
                return;
            }
        }
        // Every firing moves the step, round, lock or decision forward, so
        // the rules settle after a handful of firings whatever the input;
        // reaching the bound is a bug in the rules, never hostile input.
        #[allow(clippy::panic)]
        {
            panic!("consensus rules fired {MAX_RULE_FIRINGS_PER_EVENT} times for one event");
        }
    }

    /// L49: a proposal's value and +2/3 precommits for it, in any round.
    fn try_commit(&mut self) -> bool {
        let mut found = None;
        for (&round, messages) in &self.rounds {
            if let Some(Some(hash)) = self.quorum_value(&messages.precommits) {
                let signatures: Vec<_> = messages
                    .precommits
                    .iter()
                    .filter(|((_, block), _)| *block == Some(hash))
                    .map(|(&(i, _), v)| (i, v.signature))
                    .collect();
                found = Some((round, hash, signatures));
                break;
            }
        }
        let Some((round, hash, signatures)) = found else {
            return false;
        };
        let Some(value) = self.value_with_hash(&hash) else {
            // +2/3 precommitted a value we never received: only sync helps.
            if !self.missing_value_sync_requested {
                self.missing_value_sync_requested = true;
                self.out.push(Action::NeedSync {
                    height: self.height,
                });
            }
            return false;
        };
        let certificate =
            CommitCertificate::from_precommits(&self.set, self.height, round, hash, signatures);
        self.decide(value, certificate);
        true
    }

    /// L55: f+1 power sent messages for a higher round: join the highest.
    fn try_round_skip(&mut self) -> bool {
        let target = self
            .rounds
            .range(self.round + 1..)
            .rev()
            .find(|(&round, messages)| {
                let mut senders: BTreeSet<usize> =
                    messages.prevotes.keys().map(|&(i, _)| i).collect();
                senders.extend(messages.precommits.keys().map(|&(i, _)| i));
                if !messages.proposals.is_empty() {
                    senders.insert(proposer_index(&self.set, self.height, round));
                }
                self.set
                    .is_one_third(self.power_of(senders.iter().copied()))
            })
            .map(|(&round, _)| round);
        match target {
            Some(round) => {
                self.enter_round(round);
                true
            }
            None => false,
        }
    }

    /// L22 and L28: prevote on the current round's proposal.
    fn try_prevote_on_proposal(&mut self) -> bool {
        if self.step != Step::Propose {
            return false;
        }
        // The first proposal received (a second one is equivocation).
        let Some(proposal) = self
            .rounds
            .get(&self.round)
            .and_then(|m| m.proposals.first())
        else {
            return false;
        };
        let hash = proposal.signed.data.value_hash;
        let pol_round = proposal.signed.data.pol_round;
        let unlocked_for = match pol_round {
            // L22: fresh proposal.
            None => match self.effective_lock() {
                None => true,
                Some((_, locked_hash)) => locked_hash == hash,
            },
            // L28: re-proposal backed by +2/3 prevotes in round `vr`.
            Some(vr) => {
                let has_pol = self
                    .rounds
                    .get(&vr)
                    .is_some_and(|m| self.quorum_for(&m.prevotes, Some(hash)));
                if !has_pol {
                    return false;
                }
                match self.effective_lock() {
                    None => true,
                    Some((locked_round, locked_hash)) => locked_round <= vr || locked_hash == hash,
                }
            }
        };
        let vote = match self.validity.get(&hash) {
            Some(Validity::Valid) if unlocked_for => Some(hash),
            Some(Validity::Pending) | None => return false,
            Some(_) => None,
        };
        self.sign_vote(VoteKind::Prevote, vote);
        self.step = Step::Prevote;
        self.dirty = true;
        true
    }

    /// L34: +2/3 prevotes of any kind in this round: start the prevote timer.
    fn try_schedule_prevote_timeout(&mut self) -> bool {
        if self.step != Step::Prevote || self.flags.prevote_timeout_scheduled {
            return false;
        }
        let power = self.participation(VoteKind::Prevote);
        if !self.set.is_quorum(power) {
            return false;
        }
        self.flags.prevote_timeout_scheduled = true;
        self.schedule(TimeoutKind::Prevote);
        true
    }

    /// L36: a valid proposal and +2/3 prevotes for it in this round: lock
    /// (if still prevoting) and remember it as the valid value.
    fn try_lock_on_polka(&mut self) -> bool {
        if self.step == Step::Propose || self.flags.polka_handled {
            return false;
        }
        let Some(messages) = self.rounds.get(&self.round) else {
            return false;
        };
        let Some(proposal) = messages.proposals.iter().find(|p| {
            let hash = p.signed.data.value_hash;
            self.validity.get(&hash) == Some(&Validity::Valid)
                && self.quorum_for(&messages.prevotes, Some(hash))
        }) else {
            return false;
        };
        let hash = proposal.signed.data.value_hash;
        let value = proposal.value.clone();
        let pol = messages
            .prevotes
            .iter()
            .filter(|((_, block), _)| *block == Some(hash))
            .map(|(_, v)| v.clone())
            .collect();
        self.flags.polka_handled = true;
        if self.step == Step::Prevote {
            self.locked = Some((self.round, hash));
            self.sign_vote(VoteKind::Precommit, Some(hash));
            self.step = Step::Precommit;
        }
        self.valid = Some((self.round, value));
        self.valid_pol = pol;
        self.dirty = true;
        true
    }

    /// L44: +2/3 prevotes for nil: precommit nil.
    fn try_precommit_nil(&mut self) -> bool {
        if self.step != Step::Prevote {
            return false;
        }
        let nil_quorum = self
            .rounds
            .get(&self.round)
            .is_some_and(|m| self.quorum_for(&m.prevotes, None));
        if !nil_quorum {
            return false;
        }
        self.sign_vote(VoteKind::Precommit, None);
        self.step = Step::Precommit;
        self.dirty = true;
        true
    }

    /// L47: +2/3 precommits of any kind in this round: start the precommit timer.
    fn try_schedule_precommit_timeout(&mut self) -> bool {
        if self.flags.precommit_timeout_scheduled {
            return false;
        }
        let power = self.participation(VoteKind::Precommit);
        if !self.set.is_quorum(power) {
            return false;
        }
        self.flags.precommit_timeout_scheduled = true;
        self.schedule(TimeoutKind::Precommit);
        true
    }

    // ---- transitions ------------------------------------------------------

    /// L11 StartRound.
    fn enter_round(&mut self, round: u32) {
        assert!(
            round > self.round || (round == 0 && self.own_votes.is_empty()),
            "rounds only move forward"
        );
        self.round = round;
        self.step = Step::Propose;
        self.flags = RoundFlags::default();
        self.missing_value_sync_requested = false;
        // Keep own messages of this and the previous round (re-sent for
        // peers one round behind); older ones can never be needed again
        // because this validator never signs in a round below `round`.
        let keep_from = round.saturating_sub(1);
        self.own_votes.retain(|v| v.data.round >= keep_from);
        self.own_proposals
            .retain(|p| p.signed.data.round >= keep_from);
        let lowest_kept = round.saturating_sub(self.config.past_round_window);
        self.rounds = self.rounds.split_off(&lowest_kept);
        self.reported.retain(|&(_, r, _)| r >= lowest_kept);
        let valid_hash = self.valid.as_ref().map(|(_, v)| v.hash());
        let rounds = &self.rounds;
        self.validity.retain(|hash, _| {
            Some(*hash) == valid_hash
                || rounds
                    .values()
                    .flat_map(|m| m.proposals.iter())
                    .any(|p| p.signed.data.value_hash == *hash)
        });
        self.dirty = true;
        self.resume_round();
    }

    /// Timers and proposing for the current round; re-sends own messages.
    fn resume_round(&mut self) {
        self.schedule(TimeoutKind::Propose);
        self.schedule(TimeoutKind::Rebroadcast);
        if self.step == Step::Propose
            && self.is_proposer()
            && self.own_proposal_in(self.round).is_none()
        {
            let valid = if self.config.ignores_lock() {
                None
            } else {
                self.valid.clone()
            };
            match valid {
                // L15: re-propose the valid value with its proof-of-lock round.
                Some((valid_round, value)) => {
                    self.sign_proposal(value, Some(valid_round));
                    self.relay_proof_of_lock();
                }
                // L18: ask the application for a new block.
                None if !self.flags.proposal_requested => {
                    self.flags.proposal_requested = true;
                    self.out.push(Action::RequestProposal {
                        height: self.height,
                        round: self.round,
                    });
                }
                None => {}
            }
        }
        self.resend_own_messages();
    }

    fn rebroadcast(&mut self) {
        self.resend_own_messages();
        self.relay_proof_of_lock();
        if self.highest_seen_height > self.height {
            self.out.push(Action::NeedSync {
                height: self.height,
            });
        }
        // Lets try_commit ask again if the committed value is still missing.
        self.missing_value_sync_requested = false;
        self.schedule(TimeoutKind::Rebroadcast);
    }

    /// Relays the prevotes that justify our valid value: a peer that missed
    /// them could otherwise never accept the value when we re-propose it,
    /// and a validator locked on it would block progress forever.
    fn relay_proof_of_lock(&mut self) {
        for vote in &self.valid_pol {
            self.out
                .push(Action::Broadcast(Message::vote(vote.clone())));
        }
    }

    fn resend_own_messages(&mut self) {
        for p in &self.own_proposals {
            self.out
                .push(Action::Broadcast(Message::proposal(p.clone())));
        }
        for v in &self.own_votes {
            self.out.push(Action::Broadcast(Message::vote(v.clone())));
        }
    }

    fn decide(&mut self, value: V, certificate: CommitCertificate) {
        assert!(!self.decided);
        assert_eq!(certificate.height, self.height);
        assert_eq!(certificate.block_hash, value.hash());
        self.decided = true;
        self.out.push(Action::Commit {
            height: self.height,
            value,
            certificate,
        });
    }

    fn sign_proposal(&mut self, value: V, pol_round: Option<u32>) {
        let Some(key) = self.key.clone() else {
            return;
        };
        assert!(self.is_proposer());
        assert!(
            self.own_proposal_in(self.round).is_none(),
            "would sign a second proposal for height {} round {}",
            self.height,
            self.round
        );
        let hash = value.hash();
        let data = ProposalData {
            version: ProposalData::VERSION,
            chain_id: self.chain_id.clone(),
            epoch: self.set.epoch,
            height: self.height,
            round: self.round,
            pol_round,
            value_hash: hash,
        };
        let proposal = SignedProposal {
            signed: Signed::sign(data, &key),
            value,
        };
        self.validity.insert(hash, Validity::Valid);
        // Occupied only if a twin with this key proposed first.
        let proposals = &mut self.rounds.entry(self.round).or_default().proposals;
        if proposals.len() < MAX_CONFLICTING {
            proposals.push(proposal.clone());
        }
        self.own_proposals.push(proposal.clone());
        self.dirty = true;
        self.out
            .push(Action::Broadcast(Message::proposal(proposal)));
    }

    /// Signs and sends this validator's vote of `kind` in the current round.
    /// Followers (no key, or not in the set) only change step.
    fn sign_vote(&mut self, kind: VoteKind, block: Option<Hash>) {
        let (Some(key), Some(me)) = (self.key.clone(), self.my_index) else {
            return;
        };
        let already = self
            .own_votes
            .iter()
            .any(|v| v.data.round == self.round && v.data.kind == kind);
        assert!(
            !already,
            "would sign a second {kind:?} at height {} round {}",
            self.height, self.round
        );
        let data = VoteData {
            version: VoteData::VERSION,
            chain_id: self.chain_id.clone(),
            epoch: self.set.epoch,
            height: self.height,
            round: self.round,
            kind,
            block,
        };
        let vote = Signed::sign(data, &key);
        // The slot is empty unless a twin (a second process with this key)
        // voted first; its bound holds either way.
        let votes = self.rounds.entry(self.round).or_default().votes_mut(kind);
        if entries_of(votes, me).count() < MAX_CONFLICTING {
            votes.entry((me, block)).or_insert_with(|| vote.clone());
        }
        self.own_votes.push(vote.clone());
        self.dirty = true;
        self.out.push(Action::Broadcast(Message::vote(vote)));
    }

    fn schedule(&mut self, kind: TimeoutKind) {
        self.out.push(Action::ScheduleTimeout {
            timeout: Timeout {
                height: self.height,
                round: self.round,
                kind,
            },
            after_ms: self.config.timeout_ms(kind, self.round),
        });
    }

    fn take_actions(&mut self) -> Vec<Action<V>> {
        let mut actions = Vec::with_capacity(self.out.len() + 1);
        if self.dirty && self.my_index.is_some() && !self.config.skips_persist() {
            actions.push(Action::Persist(self.safety_state()));
        }
        self.dirty = false;
        actions.append(&mut self.out);
        actions
    }

    // ---- helpers ----------------------------------------------------------

    fn is_proposer(&self) -> bool {
        self.my_index == Some(proposer_index(&self.set, self.height, self.round))
    }

    fn own_proposal_in(&self, round: u32) -> Option<&SignedProposal<V>> {
        self.own_proposals
            .iter()
            .find(|p| p.signed.data.round == round)
    }

    fn effective_lock(&self) -> Option<(u32, Hash)> {
        if self.config.ignores_lock() {
            None
        } else {
            self.locked
        }
    }

    fn power_of(&self, indexes: impl Iterator<Item = usize>) -> u64 {
        indexes
            .filter_map(|i| self.set.get(i))
            .map(|v| v.power)
            .sum()
    }

    /// Power of the distinct validators with a vote of `kind` in this round.
    fn participation(&self, kind: VoteKind) -> u64 {
        let Some(messages) = self.rounds.get(&self.round) else {
            return 0;
        };
        let voters: BTreeSet<usize> = messages.votes(kind).keys().map(|&(i, _)| i).collect();
        self.power_of(voters.into_iter())
    }

    fn quorum_for(&self, votes: &VoteSlots, block: Option<Hash>) -> bool {
        let power = self.power_of(votes.keys().filter(|(_, b)| *b == block).map(|&(i, _)| i));
        self.set.is_quorum(power)
    }

    /// The block (or nil) that +2/3 of `votes` name, if any.
    fn quorum_value(&self, votes: &VoteSlots) -> Option<Option<Hash>> {
        let mut tally: BTreeMap<Option<Hash>, u64> = BTreeMap::new();
        for &(i, block) in votes.keys() {
            *tally.entry(block).or_default() += self.power_of(std::iter::once(i));
        }
        tally
            .into_iter()
            .find(|&(_, power)| self.set.is_quorum(power))
            .map(|(block, _)| block)
    }

    fn value_with_hash(&self, hash: &Hash) -> Option<V> {
        self.rounds
            .values()
            .flat_map(|m| m.proposals.iter())
            .find(|p| p.signed.data.value_hash == *hash)
            .map(|p| p.value.clone())
            .or_else(|| {
                self.valid
                    .as_ref()
                    .filter(|(_, v)| v.hash() == *hash)
                    .map(|(_, v)| v.clone())
            })
    }

    /// TigerBeetle-style: the state the rules rely on, checked on every step.
    fn check_invariants(&self) {
        if let Some((locked_round, _)) = self.locked {
            assert!(locked_round <= self.round, "locked in a future round");
            let valid_round = self.valid.as_ref().map(|(r, _)| *r);
            assert!(
                valid_round.is_some_and(|r| r >= locked_round),
                "validRound below lockedRound"
            );
        }
        if let Some(me) = self.my_index {
            let signed_prevote = self
                .own_votes
                .iter()
                .any(|v| v.data.round == self.round && v.data.kind == VoteKind::Prevote);
            let signed_precommit = self
                .own_votes
                .iter()
                .any(|v| v.data.round == self.round && v.data.kind == VoteKind::Precommit);
            assert_eq!(
                signed_prevote,
                self.step >= Step::Prevote,
                "validator {me} in step {:?} without matching prevote",
                self.step
            );
            assert_eq!(
                signed_precommit,
                self.step >= Step::Precommit,
                "validator {me} in step {:?} without matching precommit",
                self.step
            );
        }
        assert!(
            self.own_votes.len() <= MAX_OWN_VOTES && self.own_proposals.len() <= MAX_OWN_PROPOSALS
        );
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
