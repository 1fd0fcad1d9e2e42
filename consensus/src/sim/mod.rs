//! Deterministic simulator: N validators in one thread over a simulated
//! network, driven by one seeded ChaCha8 stream, with crashes, partitions,
//! message loss/duplication/reordering and Byzantine validators; and the
//! checker that judges each run.
//!
//! A run is a pure function of `(seed, SimConfig)`: the same seed replays
//! the same schedule exactly (no clocks, no hash-map iteration order).
//!
//! Faults: during the fault phase the network drops, duplicates and delays
//! messages, partitions and one-way link failures come and go, and the
//! validator set's powers change at every epoch; honest validators crash (sometimes
//! in the middle of an action list, right after persisting) and restart from
//! their persisted [`SafetyState`] and block store. Up to `byzantine`
//! validators misbehave: equivocating proposer, double voting, invalid
//! signatures, silence, or "twins" (two processes with one key, placed in
//! different partitions). Then the network heals and every honest validator
//! must reach the target height within the liveness budget.
//!
//! Checks: no two honest validators commit different blocks at one height;
//! no honest validator ever sends two different signed votes (or proposals)
//! for one height/round/kind, across crashes; every commit certificate
//! verifies; honest chains are prefix-consistent; evidence verifies and names
//! only Byzantine validators; liveness after healing.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::rc::Rc;

use bincode::{Decode, Encode};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::certificate::{verify_commit, CommitCertificate, VoteKind};
use crate::codec::{encode, Canonical};
use crate::crypto::{hash, Domain, Hash, PublicKey, SigningKey};
use crate::engine::{Action, Config, Engine, Event, SafetyState, Timeout};
use crate::messages::{decode_message, Message, MessageBody, Payload, Signed, SignedProposal};
use crate::validators::{Validator, ValidatorSet};

const CHAIN_ID: &str = "keyreg-sim";
/// Blocks one sync response carries.
const SYNC_BATCH: usize = 8;

/// The simulator's block: small, but hashed and validated like a real one.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct SimBlock {
    pub height: u64,
    pub round: u32,
    pub proposer: u32,
    pub nonce: u64,
    /// The application rejects blocks with `valid == false`.
    pub valid: bool,
}

impl Payload for SimBlock {
    fn hash(&self) -> Hash {
        hash(Domain::Block, &encode(self))
    }
}

/// The fault mix and size of one run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Validators; `None` picks 4..=7 from the seed.
    pub validators: Option<usize>,
    /// Byzantine validators; `None` uses the most the set tolerates
    /// (power strictly below one third). More than that is allowed, to watch
    /// safety break.
    pub byzantine: Option<usize>,
    /// Behaviours Byzantine validators draw from (empty: all).
    pub behaviors: Vec<Behavior>,
    /// Heights every honest validator must commit (at least; see `run`).
    pub heights: u64,
    pub partitions: bool,
    pub crashes: bool,
    /// Per-message loss and duplication probabilities during the fault phase.
    pub loss_permille: u64,
    pub duplicate_permille: u64,
    /// Network delay is uniform in 1..=max_delay_ms (5x spikes in the fault phase).
    pub max_delay_ms: u64,
    pub fault_phase_ms: u64,
    /// After healing, honest validators must reach the target within this.
    pub liveness_budget_ms: u64,
    /// Heights per epoch; the set's epoch number increases at each boundary.
    pub epoch_length: u64,
    pub engine: Config,
    /// Hard bound on processed events (a run exceeding it is a violation).
    pub max_events: u64,
    /// Print every honest node's actions to stderr (for replaying a seed).
    pub trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            validators: None,
            byzantine: None,
            behaviors: Vec::new(),
            heights: 8,
            partitions: true,
            crashes: true,
            loss_permille: 50,
            duplicate_permille: 30,
            max_delay_ms: 20,
            fault_phase_ms: 1500,
            liveness_budget_ms: 60_000,
            epoch_length: 4,
            engine: Config {
                timeout_propose_ms: 150,
                timeout_propose_delta_ms: 50,
                timeout_prevote_ms: 80,
                timeout_prevote_delta_ms: 40,
                timeout_precommit_ms: 80,
                timeout_precommit_delta_ms: 40,
                rebroadcast_interval_ms: 250,
                ..Config::default()
            },
            max_events: 2_000_000,
            trace: false,
        }
    }
}

/// The outcome of one run.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub validators: usize,
    pub byzantine: Vec<String>,
    pub violations: Vec<String>,
    /// Lowest committed height among honest validators at the end.
    pub min_honest_height: u64,
    pub target_height: u64,
    pub sim_time_ms: u64,
    pub messages_delivered: u64,
    pub events: u64,
    pub evidence: u64,
}

/// How a Byzantine validator misbehaves (each runs an honest engine and
/// mangles what it sends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Sends nothing, serves no sync.
    Silent,
    /// Signs a second, different proposal (sometimes invalid) whenever it
    /// proposes, and splits the network between the two.
    EquivocatingProposer,
    /// Signs a conflicting vote (block <-> nil) for every vote and splits the
    /// network between the two.
    DoubleVoter,
    /// Sends copies with corrupted signatures to some peers.
    BadSignatures,
    /// Two processes with one key (each an honest engine), placed on
    /// opposite sides of every partition.
    Twin,
}

impl Behavior {
    pub const ALL: [Behavior; 5] = [
        Behavior::Silent,
        Behavior::EquivocatingProposer,
        Behavior::DoubleVoter,
        Behavior::BadSignatures,
        Behavior::Twin,
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Honest,
    Byzantine(Behavior),
}

struct Node {
    key: SigningKey,
    role: Role,
    engine: Option<Engine<SimBlock>>,
    persisted: Option<SafetyState<SimBlock>>,
    /// The node's durable block store: block `h` at index `h - 1`.
    chain: Vec<(SimBlock, CommitCertificate)>,
    /// Bumped on every crash; timers and replies of a dead incarnation are void.
    incarnation: u32,
    group: u8,
    /// One-way fault: everything this node sends is lost (it still hears).
    muted: bool,
}

impl Node {
    fn next_height(&self) -> u64 {
        self.chain.len() as u64 + 1
    }
}

enum SimEvent {
    Deliver {
        to: usize,
        bytes: Rc<Vec<u8>>,
    },
    Timer {
        node: usize,
        incarnation: u32,
        timeout: Timeout,
    },
    AppReply {
        node: usize,
        incarnation: u32,
        event: Box<Event<SimBlock>>,
    },
    SyncRequest {
        from: usize,
        to: usize,
        height: u64,
    },
    SyncResponse {
        to: usize,
        blocks: Vec<(SimBlock, CommitCertificate)>,
    },
    Crash(usize),
    Restart(usize),
    Repartition,
    Heal,
}

struct Scheduled {
    time: u64,
    seq: u64,
    event: SimEvent,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: BinaryHeap is a max-heap, we pop the earliest event.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

/// What a signed message occupies, for the double-signing check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SignedSlot {
    Proposal,
    Vote(VoteKind),
}

struct Sim {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: Vec<Node>,
    /// Every validator's key and whether it is Byzantine, in creation order.
    validators: Vec<(PublicKey, bool)>,
    faults_active: bool,
    /// Honest commits: height -> block hash.
    commits: BTreeMap<u64, Hash>,
    /// Every message signed by an honest validator that left it:
    /// (signer, height, round, slot) -> the signed data's encoding.
    signed: BTreeMap<(PublicKey, u64, u32, SignedSlot), Vec<u8>>,
    report: SimReport,
}

/// Runs one seed and judges it.
pub fn run(seed: u64, cfg: &SimConfig) -> SimReport {
    let mut sim = Sim::new(seed, cfg.clone());
    sim.run();
    sim.report
}

impl Sim {
    fn new(seed: u64, cfg: SimConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = cfg
            .validators
            .unwrap_or_else(|| 4 + (rng.next_u64() % 4) as usize)
            .max(1);
        let keys: Vec<SigningKey> = (0..n)
            .map(|_| {
                let mut seed_bytes = [0u8; 32];
                rng.fill_bytes(&mut seed_bytes);
                SigningKey::from_seed(seed_bytes)
            })
            .collect();
        // Byzantine validators: the first `b` of a random order, where `b`
        // defaults to the most n = 3f + 1 tolerates. They always have power
        // 1 and honest validators at least 1, so with b <= f their power
        // stays strictly below a third in every epoch.
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let byzantine_count = cfg.byzantine.unwrap_or((n - 1) / 3).min(n);
        let byzantine: Vec<usize> = order[..byzantine_count].to_vec();
        let behaviors: &[Behavior] = if cfg.behaviors.is_empty() {
            &Behavior::ALL
        } else {
            &cfg.behaviors
        };
        let mut nodes = Vec::new();
        let mut report = SimReport {
            seed,
            validators: n,
            ..SimReport::default()
        };
        for (i, key) in keys.iter().enumerate() {
            let role = if byzantine.contains(&i) {
                let b = behaviors[(rng.next_u64() % behaviors.len() as u64) as usize];
                report
                    .byzantine
                    .push(format!("{}:{b:?}", short(&key.public())));
                Role::Byzantine(b)
            } else {
                Role::Honest
            };
            let copies = if role == Role::Byzantine(Behavior::Twin) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                nodes.push(Node {
                    key: key.clone(),
                    role,
                    engine: None,
                    persisted: None,
                    chain: Vec::new(),
                    incarnation: 0,
                    group: 0,
                    muted: false,
                });
            }
        }
        let validators = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.public(), byzantine.contains(&i)))
            .collect();
        Sim {
            cfg,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            validators,
            faults_active: true,
            commits: BTreeMap::new(),
            signed: BTreeMap::new(),
            report,
        }
    }

    /// The validator set of `height`: a new epoch every `epoch_length`
    /// heights, with honest validators' powers redrawn (1..=3) per epoch, so
    /// certificates and votes must be checked against the right set.
    fn set_for(&self, height: u64) -> ValidatorSet {
        let epoch = height.saturating_sub(1) / self.cfg.epoch_length.max(1);
        let mut powers = ChaCha8Rng::seed_from_u64(self.report.seed ^ epoch.rotate_left(32));
        let members = self
            .validators
            .iter()
            .map(|&(key, byzantine)| {
                let drawn = 1 + powers.next_u64() % 3;
                Validator {
                    key,
                    power: if byzantine { 1 } else { drawn },
                }
            })
            .collect();
        // Distinct random keys, powers in 1..=3: always a valid set.
        ValidatorSet::new(epoch, members).expect("simulator validator set")
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn chance(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }

    fn schedule(&mut self, after: u64, event: SimEvent) {
        self.seq += 1;
        self.queue.push(Scheduled {
            time: self.now + after,
            seq: self.seq,
            event,
        });
    }

    fn violation(&mut self, what: String) {
        if self.report.violations.len() < 16 {
            self.report
                .violations
                .push(format!("t={}ms: {what}", self.now));
        }
    }

    fn honest(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == Role::Honest)
    }

    fn run(&mut self) {
        for i in 0..self.nodes.len() {
            self.boot(i);
        }
        if self.cfg.partitions {
            let first_split = 100 + self.below(300);
            self.schedule(first_split, SimEvent::Repartition);
        }
        if self.cfg.crashes {
            self.schedule_next_crash();
        }
        self.schedule(self.cfg.fault_phase_ms, SimEvent::Heal);
        let deadline = self.cfg.fault_phase_ms + self.cfg.liveness_budget_ms;
        let mut target = self.cfg.heights;
        while let Some(next) = self.queue.pop() {
            self.now = next.time;
            self.report.events += 1;
            if self.report.events > self.cfg.max_events {
                self.violation(format!("event budget {} exhausted", self.cfg.max_events));
                break;
            }
            if matches!(next.event, SimEvent::Heal) {
                // Liveness is judged after healing: at least two more heights.
                let best = self
                    .honest()
                    .map(|n| n.chain.len() as u64)
                    .max()
                    .unwrap_or(0);
                target = target.max(best + 2);
            }
            self.dispatch(next.event);
            if !self.report.violations.is_empty() {
                break;
            }
            let done = !self.faults_active && self.honest().all(|n| n.chain.len() as u64 >= target);
            if done || self.now > deadline {
                break;
            }
        }
        self.report.target_height = target;
        self.report.sim_time_ms = self.now;
        self.report.min_honest_height = self
            .honest()
            .map(|n| n.chain.len() as u64)
            .min()
            .unwrap_or(0);
        self.final_checks(target);
    }

    fn final_checks(&mut self, target: u64) {
        if self.report.violations.is_empty() && self.report.min_honest_height < target {
            let states: Vec<String> = self
                .honest()
                .map(|n| match &n.engine {
                    Some(e) => format!(
                        "h{} r{} {:?} lock={:?}",
                        e.height(),
                        e.round(),
                        e.step(),
                        e.locked().map(|(r, _)| r)
                    ),
                    None => "down".into(),
                })
                .collect();
            self.violation(format!(
                "liveness: honest validators {states:?} below target {target} {}ms after healing",
                self.cfg.liveness_budget_ms
            ));
        }
        // Prefix consistency of every pair of honest chains.
        let chains: Vec<Vec<Hash>> = self
            .honest()
            .map(|n| n.chain.iter().map(|(b, _)| b.hash()).collect())
            .collect();
        for a in &chains {
            for b in &chains {
                if a.iter().zip(b).any(|(x, y)| x != y) {
                    self.violation("honest chains are not prefix-consistent".into());
                    return;
                }
            }
        }
    }

    fn dispatch(&mut self, event: SimEvent) {
        match event {
            SimEvent::Deliver { to, bytes } => {
                if self.nodes[to].engine.is_none() {
                    return;
                }
                self.report.messages_delivered += 1;
                match decode_message::<SimBlock>(&bytes, self.cfg.engine.max_message_bytes) {
                    Ok(message) => self.feed(to, Event::Message(message)),
                    Err(e) => self.violation(format!("undecodable message on the wire: {e}")),
                }
            }
            SimEvent::Timer {
                node,
                incarnation,
                timeout,
            } => {
                if self.nodes[node].incarnation == incarnation {
                    self.feed(node, Event::Timeout(timeout));
                }
            }
            SimEvent::AppReply {
                node,
                incarnation,
                event,
            } => {
                if self.nodes[node].incarnation == incarnation {
                    self.feed(node, *event);
                }
            }
            SimEvent::SyncRequest { from, to, height } => self.serve_sync(from, to, height),
            SimEvent::SyncResponse { to, blocks } => {
                for (value, certificate) in blocks {
                    let Some(engine) = &self.nodes[to].engine else {
                        return;
                    };
                    let height = value.height;
                    if engine.height() != height || engine.is_decided() {
                        continue;
                    }
                    self.feed(
                        to,
                        Event::CommittedBlock {
                            height,
                            value,
                            certificate,
                        },
                    );
                }
            }
            SimEvent::Crash(node) => {
                self.crash(node);
                self.schedule_next_crash();
            }
            SimEvent::Restart(node) => self.boot(node),
            SimEvent::Repartition => self.repartition(),
            SimEvent::Heal => {
                self.faults_active = false;
                for node in &mut self.nodes {
                    node.group = 0;
                    node.muted = false;
                }
                for i in 0..self.nodes.len() {
                    if self.nodes[i].engine.is_none() {
                        self.boot(i);
                    }
                }
            }
        }
    }

    /// Starts (or restarts from durable state) node `i`'s engine.
    fn boot(&mut self, i: usize) {
        let node = &self.nodes[i];
        let height = node.next_height();
        let set = self.set_for(height);
        let key = Some(node.key.clone());
        let built = match node.persisted.clone() {
            Some(state) => {
                Engine::restore(self.cfg.engine.clone(), key, CHAIN_ID, height, set, state)
            }
            None => Engine::new(self.cfg.engine.clone(), key, CHAIN_ID, height, set),
        };
        match built {
            Ok(mut engine) => {
                let actions = engine.start();
                self.nodes[i].engine = Some(engine);
                self.execute(i, actions);
            }
            Err(e) => self.violation(format!("node {i} cannot restart: {e}")),
        }
    }

    fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.engine.is_none() {
            return;
        }
        node.engine = None;
        node.incarnation += 1;
        let down_for = 50 + self.below(400);
        self.schedule(down_for, SimEvent::Restart(i));
    }

    fn schedule_next_crash(&mut self) {
        if !self.faults_active {
            return;
        }
        let honest: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].role == Role::Honest)
            .collect();
        if honest.is_empty() {
            return;
        }
        let victim = honest[self.below(honest.len() as u64) as usize];
        let after = 100 + self.below(400);
        self.schedule(after, SimEvent::Crash(victim));
    }

    fn repartition(&mut self) {
        if !self.faults_active {
            return;
        }
        let heal = self.chance(400);
        // Sometimes one node can hear but not be heard (an asymmetric link
        // failure): it may commit while nobody learns of it in time.
        let muted = self
            .chance(300)
            .then(|| self.below(self.nodes.len() as u64) as usize);
        for (i, node) in self.nodes.iter_mut().enumerate() {
            node.muted = Some(i) == muted;
        }
        let mut twin_seen: BTreeMap<PublicKey, u8> = BTreeMap::new();
        for i in 0..self.nodes.len() {
            let group = if heal {
                0
            } else if self.nodes[i].role == Role::Byzantine(Behavior::Twin) {
                // Twins always land on opposite sides of a split.
                let key = self.nodes[i].key.public();
                match twin_seen.get(&key) {
                    Some(&g) => 1 - g,
                    None => {
                        let g = (self.below(2)) as u8;
                        twin_seen.insert(key, g);
                        g
                    }
                }
            } else {
                self.below(2) as u8
            };
            self.nodes[i].group = group;
        }
        let after = 100 + self.below(500);
        self.schedule(after, SimEvent::Repartition);
    }

    /// Sends over the simulated network: partitions, loss, duplication, delay.
    fn send(&mut self, from: usize, to: usize, event_for: impl Fn() -> SimEvent) {
        if self.faults_active
            && (self.nodes[from].group != self.nodes[to].group || self.nodes[from].muted)
        {
            return;
        }
        let copies = if self.faults_active {
            if self.chance(self.cfg.loss_permille) {
                0
            } else if self.chance(self.cfg.duplicate_permille) {
                2
            } else {
                1
            }
        } else {
            1
        };
        for _ in 0..copies {
            let spike = if self.faults_active && self.chance(50) {
                5
            } else {
                1
            };
            let delay = 1 + self.below(self.cfg.max_delay_ms * spike);
            self.schedule(delay, event_for());
        }
    }

    fn feed(&mut self, i: usize, event: Event<SimBlock>) {
        let Some(engine) = self.nodes[i].engine.as_mut() else {
            return;
        };
        let actions = engine.handle(event);
        self.execute(i, actions);
    }

    /// Executes an action list in order, the way the node driver must.
    fn execute(&mut self, i: usize, actions: Vec<Action<SimBlock>>) {
        let mut pending: VecDeque<Action<SimBlock>> = actions.into();
        while let Some(action) = pending.pop_front() {
            if self.nodes[i].engine.is_none() {
                return;
            }
            let persisted = matches!(action, Action::Persist(_));
            let follow_up = self.execute_one(i, action);
            pending.extend(follow_up);
            // Crash right after a write, dropping the rest of the list: what
            // was persisted must be enough to never double-sign.
            if persisted
                && self.faults_active
                && self.cfg.crashes
                && self.nodes[i].role == Role::Honest
                && self.chance(5)
            {
                self.crash(i);
                return;
            }
        }
    }

    fn execute_one(&mut self, i: usize, action: Action<SimBlock>) -> Vec<Action<SimBlock>> {
        let incarnation = self.nodes[i].incarnation;
        if self.cfg.trace {
            self.trace_action(i, &action);
        }
        match action {
            Action::Persist(state) => self.nodes[i].persisted = Some(state),
            Action::Broadcast(message) => self.broadcast(i, message),
            Action::ScheduleTimeout { timeout, after_ms } => self.schedule(
                after_ms,
                SimEvent::Timer {
                    node: i,
                    incarnation,
                    timeout,
                },
            ),
            Action::RequestProposal { height, round } => {
                let value = SimBlock {
                    height,
                    round,
                    proposer: i as u32,
                    nonce: self.rng.next_u64(),
                    valid: true,
                };
                let delay = 1 + self.below(3);
                self.schedule(
                    delay,
                    SimEvent::AppReply {
                        node: i,
                        incarnation,
                        event: Box::new(Event::ProposalValue {
                            height,
                            round,
                            value,
                        }),
                    },
                );
            }
            Action::ValidateProposal { height, value, .. } => {
                let valid = value.valid && value.height == height;
                let delay = 1 + self.below(5);
                self.schedule(
                    delay,
                    SimEvent::AppReply {
                        node: i,
                        incarnation,
                        event: Box::new(Event::ValidationResult {
                            height,
                            value_hash: value.hash(),
                            valid,
                        }),
                    },
                );
            }
            Action::Commit {
                height,
                value,
                certificate,
            } => return self.commit(i, height, value, certificate),
            Action::Evidence(evidence) => {
                self.report.evidence += 1;
                let set = self.set_for(evidence.height());
                if let Err(e) = evidence.verify(CHAIN_ID, &set) {
                    self.violation(format!("node {i} produced unverifiable evidence: {e}"));
                }
                let offender = evidence.offender();
                if self.honest().any(|n| n.key.public() == offender) {
                    self.violation(format!(
                        "node {i} produced evidence against honest validator {}",
                        short(&offender)
                    ));
                }
            }
            Action::NeedSync { height } => {
                let peers = self.nodes.len() as u64;
                let peer = ((i as u64 + 1 + self.below(peers - 1)) % peers) as usize;
                self.send(i, peer, || SimEvent::SyncRequest {
                    from: i,
                    to: peer,
                    height,
                });
            }
        }
        Vec::new()
    }

    fn commit(
        &mut self,
        i: usize,
        height: u64,
        value: SimBlock,
        certificate: CommitCertificate,
    ) -> Vec<Action<SimBlock>> {
        let hash = value.hash();
        let node = &self.nodes[i];
        if height != node.next_height() {
            self.violation(format!(
                "node {i} committed height {height}, expected {}",
                node.next_height()
            ));
            return Vec::new();
        }
        if let Err(e) = verify_commit(CHAIN_ID, &self.set_for(height), height, &hash, &certificate)
        {
            self.violation(format!(
                "node {i}: certificate for height {height} fails: {e}"
            ));
        }
        if self.nodes[i].role == Role::Honest {
            match self.commits.get(&height) {
                Some(other) if *other != hash => self.violation(format!(
                    "SAFETY: height {height} committed as {} and {}",
                    short_hash(other),
                    short_hash(&hash)
                )),
                Some(_) => {}
                None => {
                    self.commits.insert(height, hash);
                }
            }
        }
        let next_set = self.set_for(height + 1);
        let node = &mut self.nodes[i];
        node.chain.push((value, certificate));
        let Some(engine) = node.engine.as_mut() else {
            return Vec::new();
        };
        match engine.start_height(next_set) {
            Ok(actions) => actions,
            Err(e) => {
                self.violation(format!("node {i}: start_height failed: {e}"));
                Vec::new()
            }
        }
    }

    fn serve_sync(&mut self, from: usize, to: usize, height: u64) {
        let server = &self.nodes[to];
        if server.engine.is_none() || server.role == Role::Byzantine(Behavior::Silent) {
            return;
        }
        let start = height.saturating_sub(1) as usize;
        let blocks: Vec<_> = server
            .chain
            .iter()
            .skip(start)
            .take(SYNC_BATCH)
            .cloned()
            .collect();
        if blocks.is_empty() {
            return;
        }
        let blocks = Rc::new(blocks);
        self.send(to, from, || SimEvent::SyncResponse {
            to: from,
            blocks: blocks.as_ref().clone(),
        });
    }

    /// Sends node `i`'s message to every other node, after its role's
    /// mangling; records what honest validators signed.
    fn broadcast(&mut self, i: usize, message: Message<SimBlock>) {
        let role = self.nodes[i].role;
        if role == Role::Honest {
            self.record_signed(i, &message);
        }
        let original = Rc::new(message.to_bytes());
        let conflicting = match role {
            Role::Byzantine(Behavior::Silent) => return,
            Role::Byzantine(Behavior::EquivocatingProposer) => match &message.body {
                MessageBody::Proposal(p) => Some(self.equivocate_proposal(i, p)),
                MessageBody::Vote(_) => None,
            },
            Role::Byzantine(Behavior::DoubleVoter) => match &message.body {
                MessageBody::Vote(v) => {
                    let mut data = v.data.clone();
                    data.block = match data.block {
                        Some(_) => None,
                        None => Some(hash(Domain::Block, &self.rng.next_u64().to_le_bytes())),
                    };
                    Some(Message::vote(Signed::sign(data, &self.nodes[i].key)))
                }
                MessageBody::Proposal(_) => None,
            },
            Role::Byzantine(Behavior::BadSignatures) => {
                let mut forged = message.clone();
                match &mut forged.body {
                    MessageBody::Vote(v) => v.signature.0[7] ^= 0x40,
                    MessageBody::Proposal(p) => p.signed.signature.0[7] ^= 0x40,
                }
                Some(forged)
            }
            Role::Honest | Role::Byzantine(Behavior::Twin) => None,
        };
        let conflicting = conflicting.map(|m| Rc::new(m.to_bytes()));
        // Equivocators split the network: half the time at random, half the
        // time showing the original to a single peer only (the split most
        // likely to let one validator commit or lock while the rest do not).
        let single_target = self
            .chance(500)
            .then(|| self.below(self.nodes.len() as u64) as usize);
        for to in 0..self.nodes.len() {
            if to == i {
                continue;
            }
            let sees_conflicting = match single_target {
                Some(target) => to != target,
                None => self.chance(500),
            };
            let bytes = match &conflicting {
                Some(other) if sees_conflicting => other.clone(),
                _ => original.clone(),
            };
            self.send(i, to, || SimEvent::Deliver {
                to,
                bytes: bytes.clone(),
            });
        }
    }

    fn equivocate_proposal(
        &mut self,
        i: usize,
        proposal: &SignedProposal<SimBlock>,
    ) -> Message<SimBlock> {
        let mut value = proposal.value.clone();
        value.nonce = self.rng.next_u64();
        // Sometimes the second block is also invalid for the application.
        value.valid = self.chance(700);
        let mut data = proposal.signed.data.clone();
        data.value_hash = value.hash();
        Message::proposal(SignedProposal {
            signed: Signed::sign(data, &self.nodes[i].key),
            value,
        })
    }

    fn trace_action(&self, i: usize, action: &Action<SimBlock>) {
        let what = match action {
            Action::Persist(s) => format!(
                "persist h{} r{} {:?} lock={:?} valid={:?}",
                s.height,
                s.round,
                s.step,
                s.locked.map(|(r, h)| (r, short_hash(&h))),
                s.valid.as_ref().map(|(r, v)| (*r, short_hash(&v.hash())))
            ),
            Action::Broadcast(m) => match &m.body {
                MessageBody::Proposal(p) => format!(
                    "send proposal h{} r{} pol={:?} {}",
                    p.signed.data.height,
                    p.signed.data.round,
                    p.signed.data.pol_round,
                    short_hash(&p.signed.data.value_hash)
                ),
                MessageBody::Vote(v) => format!(
                    "send {:?} h{} r{} {:?}",
                    v.data.kind,
                    v.data.height,
                    v.data.round,
                    v.data.block.map(|h| short_hash(&h))
                ),
            },
            Action::ScheduleTimeout { timeout, after_ms } => {
                format!("timer {timeout:?} +{after_ms}")
            }
            Action::RequestProposal { height, round } => {
                format!("request proposal h{height} r{round}")
            }
            Action::ValidateProposal {
                height,
                round,
                value,
            } => {
                format!("validate h{height} r{round} {}", short_hash(&value.hash()))
            }
            Action::Commit { height, value, .. } => {
                format!("COMMIT h{height} {}", short_hash(&value.hash()))
            }
            Action::Evidence(e) => format!("evidence against {}", short(&e.offender())),
            Action::NeedSync { height } => format!("need sync from h{height}"),
        };
        eprintln!("{:>7} n{i} {:?}: {what}", self.now, self.nodes[i].role);
    }

    fn record_signed(&mut self, i: usize, message: &Message<SimBlock>) {
        let (height, round, slot, bytes) = match &message.body {
            MessageBody::Proposal(p) => (
                p.signed.data.height,
                p.signed.data.round,
                SignedSlot::Proposal,
                encode(&p.signed.data),
            ),
            MessageBody::Vote(v) => (
                v.data.height,
                v.data.round,
                SignedSlot::Vote(v.data.kind),
                encode(&v.data),
            ),
        };
        let key = (message.signer(), height, round, slot);
        match self.signed.get(&key) {
            Some(previous) if *previous != bytes => self.violation(format!(
                "SAFETY: honest node {i} signed two different {slot:?} at height {height} round {round}"
            )),
            Some(_) => {}
            None => {
                self.signed.insert(key, bytes);
            }
        }
    }
}

fn short(key: &PublicKey) -> String {
    key.to_hex()[..8].to_string()
}

fn short_hash(hash: &Hash) -> String {
    hash.to_hex()[..12].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_clean(seeds: std::ops::Range<u64>) {
        let cfg = SimConfig::default();
        for seed in seeds {
            let report = run(seed, &cfg);
            assert!(
                report.violations.is_empty(),
                "seed {seed} failed: {:?}\nreplay: cargo run --release -p keyreg-consensus --bin keyreg-sim -- --seeds 1 --first-seed {seed}",
                report.violations
            );
        }
    }

    // 500 seeds of the default fault mix, split so both cores work.
    #[test]
    fn seeds_0_to_250_are_safe_and_live() {
        assert_clean(0..250);
    }

    #[test]
    fn seeds_250_to_500_are_safe_and_live() {
        assert_clean(250..500);
    }

    #[test]
    fn a_seed_replays_exactly() {
        let cfg = SimConfig::default();
        let a = run(7, &cfg);
        let b = run(7, &cfg);
        assert_eq!(
            (
                a.events,
                a.sim_time_ms,
                a.messages_delivered,
                a.min_honest_height,
                a.evidence
            ),
            (
                b.events,
                b.sim_time_ms,
                b.messages_delivered,
                b.min_honest_height,
                b.evidence
            )
        );
        assert_eq!(a.byzantine, b.byzantine);
    }

    #[test]
    fn a_calm_network_commits_every_height_quickly() {
        let cfg = SimConfig {
            byzantine: Some(0),
            partitions: false,
            crashes: false,
            loss_permille: 0,
            duplicate_permille: 0,
            fault_phase_ms: 0,
            heights: 20,
            ..SimConfig::default()
        };
        let report = run(1, &cfg);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert!(report.min_honest_height >= 20);
        // Round 0 of each height needs a handful of message delays, no timeouts.
        assert!(
            report.sim_time_ms < 20 * 100,
            "took {}ms",
            report.sim_time_ms
        );
    }

    /// The checker can fail: with the locking rules switched off, the
    /// simulator finds two different blocks committed at one height.
    #[test]
    fn checker_catches_an_engine_without_locks() {
        let mut cfg = SimConfig {
            validators: Some(5),
            byzantine: Some(1),
            behaviors: vec![Behavior::DoubleVoter],
            fault_phase_ms: 4000,
            heights: 30,
            ..SimConfig::default()
        };
        cfg.engine.unsafe_ignore_lock = true;
        let (seed, report) = first_safety_violation(&cfg, 0..150);
        assert!(report.violations.iter().any(|v| v.contains("committed as")));
        // And the failing seed replays to the same violation.
        assert_eq!(run(seed, &cfg).violations, report.violations);
    }

    /// ... and with persistence switched off, a restarted validator signs a
    /// second, different message for a slot it already signed.
    #[test]
    fn checker_catches_an_engine_that_forgets_what_it_signed() {
        let mut cfg = SimConfig::default();
        cfg.engine.unsafe_skip_persist = true;
        let (_, report) = first_safety_violation(&cfg, 0..50);
        assert!(report
            .violations
            .iter()
            .any(|v| v.contains("signed two different")));
    }

    fn first_safety_violation(cfg: &SimConfig, seeds: std::ops::Range<u64>) -> (u64, SimReport) {
        seeds
            .map(|seed| (seed, run(seed, cfg)))
            .find(|(_, report)| report.violations.iter().any(|v| v.contains("SAFETY")))
            .expect("the checker found no safety violation")
    }
}
