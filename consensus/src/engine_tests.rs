//! Unit tests of the engine's rules, driven by hand-made signed messages.

use super::*;
use crate::codec::Canonical;
use crate::messages::{decode_message, EvidenceError, MessageError, Offence};
use crate::sim::SimBlock;
use crate::validators::Validator;

const CHAIN: &str = "unit-chain";

struct Net {
    keys: Vec<SigningKey>,
    set: ValidatorSet,
}

impl Net {
    /// Four validators of power 1; keys ordered like the set.
    fn new(epoch: u64) -> Self {
        let mut keys: Vec<SigningKey> = (1..=4u8).map(|i| SigningKey::from_seed([i; 32])).collect();
        keys.sort_by_key(|k| k.public());
        let set = ValidatorSet::new(
            epoch,
            keys.iter()
                .map(|k| Validator {
                    key: k.public(),
                    power: 1,
                })
                .collect(),
        )
        .unwrap();
        Net { keys, set }
    }

    fn engine(&self, who: Option<usize>, height: u64) -> Engine<SimBlock> {
        Engine::new(
            Config::default(),
            who.map(|i| self.keys[i].clone()),
            CHAIN,
            height,
            self.set.clone(),
        )
        .unwrap()
    }

    fn vote(
        &self,
        who: usize,
        h: u64,
        r: u32,
        kind: VoteKind,
        block: Option<Hash>,
    ) -> Message<SimBlock> {
        let data = VoteData {
            version: VoteData::VERSION,
            chain_id: CHAIN.into(),
            epoch: self.set.epoch,
            height: h,
            round: r,
            kind,
            block,
        };
        Message::vote(Signed::sign(data, &self.keys[who]))
    }

    fn proposal(
        &self,
        h: u64,
        r: u32,
        value: &SimBlock,
        pol_round: Option<u32>,
    ) -> Message<SimBlock> {
        let proposer = proposer_index(&self.set, h, r);
        let data = ProposalData {
            version: ProposalData::VERSION,
            chain_id: CHAIN.into(),
            epoch: self.set.epoch,
            height: h,
            round: r,
            pol_round,
            value_hash: value.hash(),
        };
        Message::proposal(SignedProposal {
            signed: Signed::sign(data, &self.keys[proposer]),
            value: value.clone(),
        })
    }

    /// A validator that is not the proposer of (h, r).
    fn non_proposer(&self, h: u64, r: u32) -> usize {
        (proposer_index(&self.set, h, r) + 1) % 4
    }

    fn others(&self, me: usize) -> Vec<usize> {
        (0..4).filter(|&i| i != me).collect()
    }
}

fn block(height: u64, nonce: u64) -> SimBlock {
    SimBlock {
        height,
        round: 0,
        proposer: 0,
        nonce,
        valid: true,
    }
}

fn msg(m: Message<SimBlock>) -> Event<SimBlock> {
    Event::Message(m)
}

fn timeout(height: u64, round: u32, kind: TimeoutKind) -> Event<SimBlock> {
    Event::Timeout(Timeout {
        height,
        round,
        kind,
    })
}

fn valid(height: u64, v: &SimBlock) -> Event<SimBlock> {
    Event::ValidationResult {
        height,
        value_hash: v.hash(),
        valid: true,
    }
}

fn sent_votes(actions: &[Action<SimBlock>]) -> Vec<(VoteKind, u32, Option<Hash>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Broadcast(m) => match &m.body {
                MessageBody::Vote(v) => Some((v.data.kind, v.data.round, v.data.block)),
                MessageBody::Proposal(_) => None,
            },
            _ => None,
        })
        .collect()
}

fn commits(actions: &[Action<SimBlock>]) -> Vec<(u64, SimBlock, CommitCertificate)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Commit {
                height,
                value,
                certificate,
            } => Some((*height, value.clone(), certificate.clone())),
            _ => None,
        })
        .collect()
}

/// Drives a non-proposer validator to prevote `v` at (1, 0).
fn prevoted(net: &Net, me: usize, v: &SimBlock) -> Engine<SimBlock> {
    let mut e = net.engine(Some(me), 1);
    e.start();
    let a = e.handle(msg(net.proposal(1, 0, v, None)));
    assert!(matches!(a.as_slice(), [Action::ValidateProposal { .. }]));
    let a = e.handle(valid(1, v));
    assert_eq!(sent_votes(&a), vec![(VoteKind::Prevote, 0, Some(v.hash()))]);
    e
}

/// Drives `me` to lock on `v` at (1, 0) and then into round 1.
fn locked_in_round_1(net: &Net, me: usize, v: &SimBlock) -> Engine<SimBlock> {
    let mut e = prevoted(net, me, v);
    let mut voters = net.others(me).into_iter();
    e.handle(msg(net.vote(
        voters.next().unwrap(),
        1,
        0,
        VoteKind::Prevote,
        Some(v.hash()),
    )));
    let a = e.handle(msg(net.vote(
        voters.next().unwrap(),
        1,
        0,
        VoteKind::Prevote,
        Some(v.hash()),
    )));
    assert_eq!(
        sent_votes(&a),
        vec![(VoteKind::Precommit, 0, Some(v.hash()))]
    );
    assert_eq!(e.locked(), Some((0, v.hash())));
    for who in net.others(me).into_iter().take(2) {
        e.handle(msg(net.vote(who, 1, 0, VoteKind::Precommit, None)));
    }
    e.handle(timeout(1, 0, TimeoutKind::Precommit));
    assert_eq!((e.round(), e.step()), (1, Step::Propose));
    e
}

#[test]
fn proposer_proposes_prevotes_and_commits_with_a_verifiable_certificate() {
    let net = Net::new(0);
    let me = proposer_index(&net.set, 1, 0);
    let mut e = net.engine(Some(me), 1);
    let a = e.start();
    assert!(matches!(a[0], Action::Persist(_)));
    assert!(a.contains(&Action::RequestProposal {
        height: 1,
        round: 0
    }));
    let v = block(1, 7);
    let a = e.handle(Event::ProposalValue {
        height: 1,
        round: 0,
        value: v.clone(),
    });
    assert!(
        matches!(a[0], Action::Persist(_)),
        "persist before the signed messages"
    );
    assert!(matches!(&a[1], Action::Broadcast(m) if matches!(m.body, MessageBody::Proposal(_))));
    assert_eq!(sent_votes(&a), vec![(VoteKind::Prevote, 0, Some(v.hash()))]);
    let others = net.others(me);
    e.handle(msg(net.vote(
        others[0],
        1,
        0,
        VoteKind::Prevote,
        Some(v.hash()),
    )));
    let a = e.handle(msg(net.vote(
        others[1],
        1,
        0,
        VoteKind::Prevote,
        Some(v.hash()),
    )));
    assert!(matches!(a[0], Action::Persist(_)));
    assert_eq!(
        sent_votes(&a),
        vec![(VoteKind::Precommit, 0, Some(v.hash()))]
    );
    e.handle(msg(net.vote(
        others[0],
        1,
        0,
        VoteKind::Precommit,
        Some(v.hash()),
    )));
    let a = e.handle(msg(net.vote(
        others[1],
        1,
        0,
        VoteKind::Precommit,
        Some(v.hash()),
    )));
    let c = commits(&a);
    assert_eq!(c.len(), 1);
    let (height, value, cert) = &c[0];
    assert_eq!((*height, value), (1, &v));
    verify_commit(CHAIN, &net.set, 1, &v.hash(), cert).unwrap();
    assert!(e.is_decided());
    // The next height, in a new epoch.
    let next = Net::new(1);
    let a = e.start_height(next.set.clone()).unwrap();
    assert_eq!((e.height(), e.round(), e.validator_set().epoch), (2, 0, 1));
    assert!(matches!(a[0], Action::Persist(ref s) if s.height == 2 && s.own_votes.is_empty()));
}

#[test]
fn prevotes_only_after_the_application_validated() {
    let net = Net::new(0);
    let me = net.non_proposer(1, 0);
    let v = block(1, 1);
    let mut e = net.engine(Some(me), 1);
    e.start();
    let a = e.handle(msg(net.proposal(1, 0, &v, None)));
    assert_eq!(
        a,
        vec![Action::ValidateProposal {
            height: 1,
            round: 0,
            value: v.clone()
        }]
    );
    let a = e.handle(Event::ValidationResult {
        height: 1,
        value_hash: v.hash(),
        valid: false,
    });
    assert_eq!(sent_votes(&a), vec![(VoteKind::Prevote, 0, None)]);
    assert!(matches!(a[0], Action::Persist(_)));
    // And a valid one gets a prevote for the block.
    prevoted(&net, me, &v);
}

/// A validator that proposes in neither round 0 nor round 1 of height 1.
fn bystander(net: &Net) -> usize {
    (0..4)
        .find(|&i| i != proposer_index(&net.set, 1, 0) && i != proposer_index(&net.set, 1, 1))
        .unwrap()
}

#[test]
fn locked_validator_prevotes_nil_for_a_fresh_other_value() {
    let net = Net::new(0);
    let me = bystander(&net);
    let (v, w) = (block(1, 1), block(1, 2));
    let mut e = locked_in_round_1(&net, me, &v);
    e.handle(msg(net.proposal(1, 1, &w, None)));
    let a = e.handle(valid(1, &w));
    assert_eq!(sent_votes(&a), vec![(VoteKind::Prevote, 1, None)]);
    // The locked value itself, re-proposed fresh, still gets a prevote.
    let me2 = bystander(&net);
    let mut e = locked_in_round_1(&net, me2, &v);
    let a = e.handle(msg(net.proposal(1, 1, &v, None)));
    assert_eq!(sent_votes(&a), vec![(VoteKind::Prevote, 1, Some(v.hash()))]);
}

#[test]
fn a_later_proof_of_lock_unlocks() {
    let net = Net::new(0);
    let me = bystander(&net);
    let (v, w) = (block(1, 1), block(1, 2));
    let mut e = locked_in_round_1(&net, me, &v);
    // Round 1: this validator misses the proposal, the others prevote w.
    let a = e.handle(timeout(1, 1, TimeoutKind::Propose));
    assert_eq!(sent_votes(&a), vec![(VoteKind::Prevote, 1, None)]);
    for who in net.others(me) {
        e.handle(msg(net.vote(who, 1, 1, VoteKind::Prevote, Some(w.hash()))));
    }
    let a = e.handle(timeout(1, 1, TimeoutKind::Prevote));
    assert_eq!(sent_votes(&a), vec![(VoteKind::Precommit, 1, None)]);
    for who in net.others(me).into_iter().take(2) {
        e.handle(msg(net.vote(who, 1, 1, VoteKind::Precommit, None)));
    }
    e.handle(timeout(1, 1, TimeoutKind::Precommit));
    assert_eq!(e.round(), 2);
    assert_eq!(e.locked(), Some((0, v.hash())));
    // Round 2 re-proposes w with its proof-of-lock from round 1 >= lockedRound 0.
    e.handle(msg(net.proposal(1, 2, &w, Some(1))));
    let a = e.handle(valid(1, &w));
    assert_eq!(sent_votes(&a), vec![(VoteKind::Prevote, 2, Some(w.hash()))]);
}

#[test]
fn proof_of_lock_below_the_lock_does_not_unlock() {
    let net = Net::new(0);
    let v = block(1, 1);
    let w = block(1, 2);
    let me = bystander(&net);
    let mut e = locked_in_round_1(&net, me, &v);
    // Move to round 2 with a nil round 1.
    e.handle(timeout(1, 1, TimeoutKind::Propose));
    for who in net.others(me).into_iter().take(2) {
        e.handle(msg(net.vote(who, 1, 1, VoteKind::Precommit, None)));
    }
    e.handle(timeout(1, 1, TimeoutKind::Prevote));
    e.handle(timeout(1, 1, TimeoutKind::Precommit));
    assert_eq!(e.round(), 2);
    // w re-proposed claiming a proof-of-lock in round 0, where this
    // validator saw +2/3 for v, not w: it waits, then prevotes nil.
    e.handle(msg(net.proposal(1, 2, &w, Some(0))));
    let a = e.handle(valid(1, &w));
    assert!(sent_votes(&a).is_empty(), "waits for the proof-of-lock");
    let a = e.handle(timeout(1, 2, TimeoutKind::Propose));
    assert_eq!(sent_votes(&a), vec![(VoteKind::Prevote, 2, None)]);
}

#[test]
fn fault_injection_switch_ignores_the_lock() {
    let net = Net::new(0);
    let me = bystander(&net);
    let v = block(1, 1);
    let w = block(1, 2);
    let mut e = locked_in_round_1(&net, me, &v);
    e.config.unsafe_ignore_lock = true;
    e.handle(msg(net.proposal(1, 1, &w, None)));
    let a = e.handle(valid(1, &w));
    assert_eq!(sent_votes(&a), vec![(VoteKind::Prevote, 1, Some(w.hash()))]);
}

#[test]
fn one_third_of_power_in_a_higher_round_skips_to_it() {
    let net = Net::new(0);
    let me = 0;
    let mut e = net.engine(Some(me), 1);
    e.start();
    e.handle(msg(net.vote(1, 1, 5, VoteKind::Prevote, None)));
    assert_eq!(e.round(), 0, "1 of 4 is not more than a third");
    let a = e.handle(msg(net.vote(2, 1, 5, VoteKind::Precommit, None)));
    assert_eq!(e.round(), 5);
    assert!(a
        .iter()
        .any(|x| matches!(x, Action::ScheduleTimeout { timeout, .. } if timeout.round == 5)));
    // Far beyond the window: dropped, no skip.
    e.handle(msg(net.vote(1, 1, 500, VoteKind::Prevote, None)));
    e.handle(msg(net.vote(2, 1, 500, VoteKind::Prevote, None)));
    assert_eq!(e.round(), 5);
    assert!(e.stats().dropped_out_of_window >= 2);
}

#[test]
fn timeouts_grow_with_the_round() {
    let c = Config::default();
    for kind in [
        TimeoutKind::Propose,
        TimeoutKind::Prevote,
        TimeoutKind::Precommit,
    ] {
        assert!(c.timeout_ms(kind, 0) < c.timeout_ms(kind, 1));
        assert!(c.timeout_ms(kind, 1) < c.timeout_ms(kind, 10));
    }
    assert_eq!(
        c.timeout_ms(TimeoutKind::Propose, u32::MAX),
        3000 + 500 * u64::from(u32::MAX)
    );
    // The engine schedules the round's propose timeout with the grown value.
    let net = Net::new(0);
    let mut e = net.engine(Some(0), 1);
    e.start();
    e.handle(msg(net.vote(1, 1, 3, VoteKind::Prevote, None)));
    let a = e.handle(msg(net.vote(2, 1, 3, VoteKind::Prevote, None)));
    let propose_after = a.iter().find_map(|x| match x {
        Action::ScheduleTimeout { timeout, after_ms } if timeout.kind == TimeoutKind::Propose => {
            Some(*after_ms)
        }
        _ => None,
    });
    assert_eq!(propose_after, Some(c.timeout_ms(TimeoutKind::Propose, 3)));
}

#[test]
fn equivocation_becomes_verifiable_evidence_and_counts_once_per_value() {
    let net = Net::new(0);
    let me = 0;
    let mut e = net.engine(Some(me), 1);
    e.start();
    let x = Some(Hash([1; 32]));
    let y = Some(Hash([2; 32]));
    e.handle(msg(net.vote(1, 1, 0, VoteKind::Prevote, x)));
    let a = e.handle(msg(net.vote(1, 1, 0, VoteKind::Prevote, y)));
    let ev = match a.as_slice() {
        [Action::Evidence(ev)] => ev.clone(),
        other => panic!("expected evidence, got {other:?}"),
    };
    ev.verify(CHAIN, &net.set).unwrap();
    assert_eq!(ev.offender(), net.keys[1].public());
    assert_eq!(Evidence::from_bytes(&ev.to_bytes()).unwrap(), ev);
    // A third vote is neither stored nor reported again.
    let a = e.handle(msg(net.vote(1, 1, 0, VoteKind::Prevote, None)));
    assert!(a.is_empty());
    // Evidence is self-verifying: a tampered copy fails.
    let mut bad = ev.clone();
    if let Offence::ConflictingVotes { second, .. } = &mut bad.offence {
        second.signature.0[0] ^= 1;
    }
    assert!(matches!(
        bad.verify(CHAIN, &net.set),
        Err(EvidenceError::Message(_))
    ));
    let mut same = ev.clone();
    if let Offence::ConflictingVotes { first, second } = &mut same.offence {
        *second = first.clone();
    }
    assert_eq!(
        same.verify(CHAIN, &net.set),
        Err(EvidenceError::NotConflicting)
    );

    // Conflicting proposals from the round's proposer.
    let proposer = proposer_index(&net.set, 1, 0);
    let me = net.non_proposer(1, 0);
    let mut e = net.engine(Some(me), 1);
    e.start();
    e.handle(msg(net.proposal(1, 0, &block(1, 1), None)));
    let a = e.handle(msg(net.proposal(1, 0, &block(1, 2), None)));
    let ev = a
        .iter()
        .find_map(|x| match x {
            Action::Evidence(ev) => Some(ev.clone()),
            _ => None,
        })
        .expect("proposal evidence");
    ev.verify(CHAIN, &net.set).unwrap();
    assert_eq!(ev.offender(), net.keys[proposer].public());
    assert!(matches!(ev.offence, Offence::ConflictingProposals { .. }));
}

#[test]
fn restored_validator_resends_instead_of_signing_again() {
    let net = Net::new(0);
    let me = net.non_proposer(1, 0);
    let v = block(1, 1);
    let e = prevoted(&net, me, &v);
    let state = e.safety_state();
    assert_eq!(state.step, Step::Prevote);
    assert_eq!(
        SafetyState::<SimBlock>::from_bytes(&state.to_bytes()).unwrap(),
        state
    );
    drop(e);

    let mut e = Engine::restore(
        Config::default(),
        Some(net.keys[me].clone()),
        CHAIN,
        1,
        net.set.clone(),
        state,
    )
    .unwrap();
    let a = e.start();
    assert!(
        !a.iter().any(|x| matches!(x, Action::Persist(_))),
        "nothing new to persist"
    );
    assert_eq!(
        sent_votes(&a),
        vec![(VoteKind::Prevote, 0, Some(v.hash()))],
        "the same vote again"
    );
    // Neither a propose timeout nor a different proposal makes it sign a second prevote.
    let a = e.handle(timeout(1, 0, TimeoutKind::Propose));
    assert!(sent_votes(&a).is_empty());
    let w = block(1, 2);
    e.handle(msg(net.proposal(1, 0, &w, None)));
    let a = e.handle(valid(1, &w));
    assert!(sent_votes(&a).is_empty());
    assert_eq!(e.step(), Step::Prevote);

    // A proposer restored after signing its proposal re-sends it and ignores
    // a late (different) value from the application.
    let proposer = proposer_index(&net.set, 1, 0);
    let mut p = net.engine(Some(proposer), 1);
    p.start();
    p.handle(Event::ProposalValue {
        height: 1,
        round: 0,
        value: v.clone(),
    });
    let state = p.safety_state();
    let mut p = Engine::restore(
        Config::default(),
        Some(net.keys[proposer].clone()),
        CHAIN,
        1,
        net.set.clone(),
        state,
    )
    .unwrap();
    let a = p.start();
    assert!(!a
        .iter()
        .any(|x| matches!(x, Action::RequestProposal { .. })));
    let resent: Vec<_> = a
        .iter()
        .filter_map(|x| match x {
            Action::Broadcast(m) => match &m.body {
                MessageBody::Proposal(pr) => Some(pr.value.clone()),
                MessageBody::Vote(_) => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(resent, vec![v.clone()]);
    let a = p.handle(Event::ProposalValue {
        height: 1,
        round: 0,
        value: w,
    });
    assert!(a.is_empty());
}

#[test]
fn a_split_safety_state_names_each_value_once_and_joins_back() {
    let net = Net::new(0);
    let proposer = proposer_index(&net.set, 1, 0);
    let mut p = net.engine(Some(proposer), 1);
    p.start();
    let (v, w) = (block(1, 1), block(1, 2));
    p.handle(Event::ProposalValue {
        height: 1,
        round: 0,
        value: v.clone(),
    });
    let mut state = p.safety_state();
    state.valid = Some((0, v.clone()));
    let mut other = state.own_proposals[0].clone();
    other.value = w.clone();
    state.own_proposals.push(other);

    let (split, values) = state.clone().split();
    assert_eq!(
        values,
        vec![(v.hash(), v.clone()), (w.hash(), w.clone())],
        "each value once, with its id"
    );
    assert_eq!(split.value_ids(), vec![v.hash(), w.hash()]);
    assert_eq!(state.value_ids(), split.value_ids());
    assert_eq!(
        SafetyState::<ValueId>::from_bytes(&split.to_bytes()).unwrap(),
        split
    );
    let by_id = |id: &Hash| {
        values
            .iter()
            .find(|(kept, _)| kept == id)
            .map(|(_, x)| x.clone())
    };
    assert_eq!(SafetyState::join(split.clone(), by_id).unwrap(), state);

    let without_w = |id: &Hash| (*id == v.hash()).then(|| v.clone());
    assert!(matches!(
        SafetyState::join(split.clone(), without_w),
        Err(EngineError::CorruptState(_))
    ));
    let always_v = |_: &Hash| Some(v.clone());
    assert!(matches!(
        SafetyState::join(split, always_v),
        Err(EngineError::CorruptState(_))
    ));
}

#[test]
fn stale_or_ahead_safety_states_are_handled() {
    let net = Net::new(0);
    let me = net.non_proposer(1, 0);
    let state = prevoted(&net, me, &block(1, 1)).safety_state();
    // Height 1 is in the block store: the state is stale, start fresh at 2.
    let e = Engine::restore(
        Config::default(),
        Some(net.keys[me].clone()),
        CHAIN,
        2,
        net.set.clone(),
        state.clone(),
    )
    .unwrap();
    assert_eq!((e.height(), e.round(), e.step()), (2, 0, Step::Propose));
    // The block store lost a block the state already moved past: refuse.
    let mut ahead = state.clone();
    ahead.height = 5;
    ahead.own_votes.clear();
    assert!(matches!(
        Engine::restore(
            Config::default(),
            Some(net.keys[me].clone()),
            CHAIN,
            2,
            net.set.clone(),
            ahead
        ),
        Err(EngineError::StateAhead { state: 5, next: 2 })
    ));
    let mut corrupt = state;
    corrupt.round = 9;
    assert!(matches!(
        Engine::restore(
            Config::default(),
            Some(net.keys[me].clone()),
            CHAIN,
            1,
            net.set.clone(),
            corrupt
        ),
        Err(EngineError::CorruptState(_))
    ));
}

#[test]
fn catches_up_with_a_certificate_and_rejects_a_weak_one() {
    let net = Net::new(0);
    let v = block(1, 3);
    let data = VoteData {
        version: VoteData::VERSION,
        chain_id: CHAIN.into(),
        epoch: 0,
        height: 1,
        round: 4,
        kind: VoteKind::Precommit,
        block: Some(v.hash()),
    };
    let cert_of = |n: usize| {
        CommitCertificate::from_precommits(
            &net.set,
            1,
            4,
            v.hash(),
            (0..n).map(|i| (i, data.sign(&net.keys[i]))).collect(),
        )
    };
    let mut e = net.engine(None, 1);
    e.start();
    let a = e.handle(Event::CommittedBlock {
        height: 1,
        value: v.clone(),
        certificate: cert_of(2),
    });
    assert!(commits(&a).is_empty());
    assert_eq!(e.stats().rejected_messages, 1);
    let a = e.handle(Event::CommittedBlock {
        height: 1,
        value: v.clone(),
        certificate: cert_of(3),
    });
    assert_eq!(commits(&a).len(), 1);
    assert_eq!(e.start_height(net.set.clone()).map(|_| e.height()), Ok(2));
    assert_eq!(
        e.start_height(net.set.clone()),
        Err(EngineError::HeightNotDecided(2))
    );
}

#[test]
fn precommit_quorum_without_the_value_and_far_future_heights_ask_for_sync() {
    let net = Net::new(0);
    let mut e = net.engine(Some(0), 1);
    e.start();
    let h = Some(Hash([5; 32]));
    e.handle(msg(net.vote(1, 1, 0, VoteKind::Precommit, h)));
    e.handle(msg(net.vote(2, 1, 0, VoteKind::Precommit, h)));
    let a = e.handle(msg(net.vote(3, 1, 0, VoteKind::Precommit, h)));
    assert!(a.contains(&Action::NeedSync { height: 1 }));

    let mut e = net.engine(Some(0), 1);
    e.start();
    let a = e.handle(msg(net.vote(1, 2, 0, VoteKind::Prevote, None)));
    assert!(
        !a.contains(&Action::NeedSync { height: 1 }),
        "next height: normal, buffered"
    );
    let a = e.handle(msg(net.vote(1, 7, 0, VoteKind::Prevote, None)));
    assert!(a.contains(&Action::NeedSync { height: 1 }));
    // The rebroadcast timer asks again while behind.
    let a = e.handle(timeout(1, 0, TimeoutKind::Rebroadcast));
    assert!(a.contains(&Action::NeedSync { height: 1 }));
}

#[test]
fn next_height_messages_are_buffered_and_replayed() {
    let net = Net::new(0);
    let v = block(1, 1);
    let mut e = net.engine(None, 1);
    e.start();
    // Height 2's proposal arrives before height 1 is decided.
    let v2 = block(2, 9);
    e.handle(msg(net.proposal(2, 0, &v2, None)));
    e.handle(msg(net.proposal(1, 0, &v, None)));
    e.handle(valid(1, &v));
    for who in 0..3 {
        e.handle(msg(net.vote(
            who,
            1,
            0,
            VoteKind::Precommit,
            Some(v.hash()),
        )));
    }
    assert!(e.is_decided());
    let a = e.start_height(net.set.clone()).unwrap();
    assert!(a.contains(&Action::ValidateProposal {
        height: 2,
        round: 0,
        value: v2
    }));
}

#[test]
fn follower_commits_without_signing_or_persisting() {
    let net = Net::new(0);
    let v = block(1, 1);
    let mut e = net.engine(None, 1);
    let mut all = e.start();
    all.extend(e.handle(msg(net.proposal(1, 0, &v, None))));
    all.extend(e.handle(valid(1, &v)));
    for who in 0..3 {
        all.extend(e.handle(msg(net.vote(who, 1, 0, VoteKind::Prevote, Some(v.hash())))));
    }
    for who in 0..3 {
        all.extend(e.handle(msg(net.vote(
            who,
            1,
            0,
            VoteKind::Precommit,
            Some(v.hash()),
        ))));
    }
    assert_eq!(commits(&all).len(), 1);
    assert!(!all
        .iter()
        .any(|a| matches!(a, Action::Persist(_) | Action::Broadcast(_))));
}

#[test]
fn rejects_bad_signatures_unknown_signers_wrong_chain_and_epoch() {
    let net = Net::new(0);
    let mut e = net.engine(Some(0), 1);
    e.start();
    let good = net.vote(1, 1, 0, VoteKind::Prevote, None);

    let mut bad_sig = good.clone();
    if let MessageBody::Vote(v) = &mut bad_sig.body {
        v.signature.0[3] ^= 1;
    }
    assert!(matches!(
        bad_sig.verify(CHAIN, &net.set),
        Err(MessageError::BadSignature(_))
    ));

    let stranger = SigningKey::from_seed([99; 32]);
    let mut unknown = good.clone();
    if let MessageBody::Vote(v) = &mut unknown.body {
        *v = Signed::sign(v.data.clone(), &stranger);
    }
    assert!(matches!(
        unknown.verify(CHAIN, &net.set),
        Err(MessageError::UnknownSigner(_))
    ));

    let mut wrong_chain = good.clone();
    if let MessageBody::Vote(v) = &mut wrong_chain.body {
        let mut d = v.data.clone();
        d.chain_id = "other".into();
        *v = Signed::sign(d, &net.keys[1]);
    }
    assert_eq!(
        wrong_chain.verify(CHAIN, &net.set),
        Err(MessageError::WrongChain)
    );

    let other_epoch = Net::new(3);
    let wrong_epoch = other_epoch.vote(1, 1, 0, VoteKind::Prevote, None);
    assert!(matches!(
        wrong_epoch.verify(CHAIN, &net.set),
        Err(MessageError::WrongEpoch { .. })
    ));

    let v = block(1, 1);
    let mut mismatched = net.proposal(1, 0, &v, None);
    if let MessageBody::Proposal(p) = &mut mismatched.body {
        p.value.nonce += 1;
    }
    assert!(matches!(
        mismatched.verify(CHAIN, &net.set),
        Err(MessageError::ValueHashMismatch { .. })
    ));

    for m in [bad_sig, unknown, wrong_chain, wrong_epoch, mismatched] {
        let a = e.handle(msg(m));
        assert!(a.is_empty());
    }
    assert_eq!(e.stats().rejected_messages, 5);
    // The genuine vote still counts.
    assert!(e.handle(msg(good)).is_empty());
    assert_eq!(e.stats().rejected_messages, 5);
}

#[test]
fn wire_format_round_trips_and_bounds_size() {
    let net = Net::new(0);
    let m = net.proposal(1, 0, &block(1, 1), None);
    let bytes = m.to_bytes();
    assert_eq!(decode_message::<SimBlock>(&bytes, 1 << 20).unwrap(), m);
    assert!(matches!(
        decode_message::<SimBlock>(&bytes, bytes.len() - 1),
        Err(MessageError::TooLarge { .. })
    ));
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(
        decode_message::<SimBlock>(&trailing, 1 << 20),
        Err(MessageError::Codec(_))
    ));
    let vote = net.vote(2, 1, 0, VoteKind::Precommit, Some(Hash([1; 32])));
    // A precommit's signature is a certificate signature.
    if let MessageBody::Vote(v) = &vote.body {
        let cert = CommitCertificate::from_precommits(
            &net.set,
            1,
            0,
            Hash([1; 32]),
            vec![(2, v.signature)],
        );
        assert!(matches!(
            verify_commit(CHAIN, &net.set, 1, &Hash([1; 32]), &cert),
            Err(crate::certificate::CertificateError::NoQuorum { .. })
        ));
    }
}

#[test]
fn every_new_signature_is_preceded_by_persist_in_its_action_list() {
    // Run a small honest network by hand and check each action list.
    let net = Net::new(0);
    let mut engines: Vec<Engine<SimBlock>> = (0..4).map(|i| net.engine(Some(i), 1)).collect();
    let mut inbox: Vec<(usize, Event<SimBlock>)> = Vec::new();
    let check_and_route =
        |from: usize, actions: Vec<Action<SimBlock>>, inbox: &mut Vec<(usize, Event<SimBlock>)>| {
            for (pos, a) in actions.into_iter().enumerate() {
                match a {
                    Action::Persist(_) => assert_eq!(pos, 0, "Persist comes first"),
                    Action::Broadcast(m) => {
                        for to in (0..4).filter(|&t| t != from) {
                            inbox.push((to, Event::Message(m.clone())));
                        }
                    }
                    Action::RequestProposal { height, round } => inbox.push((
                        from,
                        Event::ProposalValue {
                            height,
                            round,
                            value: block(height, 100 + from as u64),
                        },
                    )),
                    Action::ValidateProposal { height, value, .. } => {
                        inbox.push((from, valid(height, &value)))
                    }
                    _ => {}
                }
            }
        };
    for (i, e) in engines.iter_mut().enumerate() {
        let a = e.start();
        check_and_route(i, a, &mut inbox);
    }
    let mut steps = 0;
    while let Some((to, event)) = inbox.pop() {
        steps += 1;
        assert!(steps < 10_000);
        let before = engines[to].safety_state();
        let a = engines[to].handle(event);
        // Any newly signed message implies a Persist at the head of the list.
        let signed_new = engines[to].safety_state().own_votes.len() > before.own_votes.len()
            || engines[to].safety_state().own_proposals.len() > before.own_proposals.len();
        if signed_new {
            assert!(matches!(a.first(), Some(Action::Persist(_))));
        }
        check_and_route(to, a, &mut inbox);
        if engines.iter().all(|e| e.is_decided()) {
            break;
        }
    }
    assert!(engines.iter().all(|e| e.is_decided()));
}
