//! The light client: verified look-ups without trusting any node.
//!
//! Trust starts at the genesis file (its hash is the trust anchor) and its
//! epoch-0 validator set. From there:
//!
//! * **Validator-set changes** are followed one epoch at a time: the handover
//!   block of epoch `e` (the last block of `e - 1`) must be certified by the
//!   set we trust for `e - 1`, and its `next_validator_set_hash` must equal the
//!   hash of the offered set `e`. No path skips a signature check, and no
//!   epoch is skipped.
//! * **A look-up** is accepted only when the answer is for the name asked,
//!   its header is certified by the trusted set (`verify_device_proof`: chain,
//!   epoch, set hash, >2/3 signatures), the record (or its absence) is proven
//!   under the header's state root, the header is within the freshness window
//!   (so an old proof cannot revive a revoked key), and its height is not
//!   below one already verified. A node failing any check is skipped and the
//!   next one asked; every failure is reported with its reason.
//! * **Forks**: two validly certified headers with different hashes at one
//!   height mean at least a third of the voting power equivocated; that is
//!   reported as [`LightError::Fork`] carrying both, never skipped over.
//!
//! The client also implements [`PeerVerifier`]: a peer's stapled proof is
//! checked offline against this state (so devices authenticate each other
//! with no node reachable); a missing or stale staple falls back to a
//! look-up.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bincode::{Decode, Encode};
use keyreg_consensus::certificate::{verify_commit, CertificateError, CommitCertificate};
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::{Hash, PublicKey};
use keyreg_consensus::validators::ValidatorSet;
use keyreg_registry::block::{tx_root, Block, CommittedBlock, Header};
use keyreg_registry::genesis::{Genesis, GenesisError};
use keyreg_registry::lookup::{verify_device_proof, DeviceProof, ProofCheckError};
use keyreg_registry::names::DeviceName;
use keyreg_registry::records::{DeviceRecord, DeviceStatus};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::node::{NodeClient, NodeError};
use crate::session::{PeerVerifier, RefusalReason, VerificationSource, VerifiedPeer};

/// Certified headers remembered for fork detection.
const MAX_RECENT_HEADERS: usize = 256;
/// Validator sets of past epochs kept for verifying older blocks.
const MAX_KNOWN_SETS: usize = 64;
/// Verified records remembered (so an older staple cannot override a newer
/// verified record, e.g. a revocation).
const MAX_CACHED_RECORDS: usize = 4096;
/// Largest light-client state file.
const MAX_STATE_FILE_LEN: u64 = 4 * 1024 * 1024;
const STATE_FILE_VERSION: u8 = 1;

/// A header with the certificate that commits it: what devices put in
/// their handshakes as "the newest certified header I know".
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct CertifiedHeader {
    pub version: u8,
    pub header: Header,
    pub certificate: CommitCertificate,
}

impl Canonical for CertifiedHeader {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

impl CertifiedHeader {
    pub fn new(header: Header, certificate: CommitCertificate) -> Self {
        CertifiedHeader {
            version: Self::VERSION,
            header,
            certificate,
        }
    }
}

/// What the client trusts before it has seen any node: the genesis.
#[derive(Clone, Debug)]
pub struct TrustAnchor {
    pub chain_id: String,
    pub genesis_hash: Hash,
    pub validator_set: ValidatorSet,
}

impl TrustAnchor {
    pub fn from_genesis(genesis: &Genesis) -> Result<Self, LightError> {
        Ok(TrustAnchor {
            chain_id: genesis.chain_id.clone(),
            genesis_hash: genesis.hash(),
            validator_set: genesis.validator_set()?,
        })
    }

    pub fn from_genesis_file(path: &Path) -> Result<Self, LightError> {
        let text = read_bounded(path, MAX_STATE_FILE_LEN)?;
        Self::from_genesis(&Genesis::from_json(&text)?)
    }
}

/// Policy knobs.
#[derive(Clone, Debug)]
pub struct LightConfig {
    /// A looked-up header older than this (by its timestamp against the
    /// local clock) is refused.
    pub max_header_age: Duration,
    /// A stapled proof older than this is not used (a look-up is made).
    pub max_staple_age: Duration,
    /// How far in the future a header's timestamp may be (clock skew).
    pub max_clock_skew: Duration,
    /// Most validator-set handovers followed for one query.
    pub max_epoch_steps: u64,
    /// Ask every node (not just the first good one) and compare answers, so
    /// a split view shows up as a fork.
    pub cross_check: bool,
}

impl Default for LightConfig {
    fn default() -> Self {
        LightConfig {
            max_header_age: Duration::from_secs(600),
            max_staple_age: Duration::from_secs(3600),
            max_clock_skew: Duration::from_secs(30),
            max_epoch_steps: 1000,
            cross_check: false,
        }
    }
}

/// Two certified headers at one height.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkEvidence {
    pub height: u64,
    pub known: CertifiedHeader,
    pub known_from: String,
    pub conflicting: CertifiedHeader,
    pub conflicting_from: String,
}

/// Why one answer (from a node, or a staple) was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AnswerError {
    #[error("{0}")]
    Node(#[from] NodeError),
    #[error("answered for {answered}, asked for {requested}")]
    WrongName {
        requested: DeviceName,
        answered: DeviceName,
    },
    #[error("{0}")]
    Proof(#[from] ProofCheckError),
    #[error("header is for chain {found:?}, expected {expected:?}")]
    WrongChain { expected: String, found: String },
    #[error("header names validator set {found}, epoch {epoch}'s set hashes to {expected}")]
    ValidatorSetMismatch {
        epoch: u64,
        expected: Hash,
        found: Hash,
    },
    #[error("certificate: {0}")]
    Certificate(#[from] CertificateError),
    #[error("block's transactions hash to {computed}, its header says {header}")]
    TxRoot { header: Hash, computed: Hash },
    #[error("header is {age_ms} ms old, beyond the {max_age_ms} ms freshness window")]
    Stale { age_ms: u64, max_age_ms: u64 },
    #[error("header is {ahead_ms} ms in the future")]
    FromTheFuture { ahead_ms: u64 },
    #[error("height {height} is below the already verified height {verified}")]
    Rollback { height: u64, verified: u64 },
    #[error("header of epoch {found} predates the trusted epoch {trusted}")]
    OldEpoch { found: u64, trusted: u64 },
    #[error("header of epoch {found} is ahead of the trusted epoch {trusted} (no node to follow the handovers)")]
    EpochAhead { found: u64, trusted: u64 },
    #[error("{needed} validator-set handovers needed, at most {max} per query")]
    TooManyEpochs { needed: u64, max: u64 },
    #[error("handover to epoch {epoch}: {reason}")]
    Handover { epoch: u64, reason: String },
    #[error("fork at height {}", .0.height)]
    Fork(Box<ForkEvidence>),
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("asked for height {expected}, got height {found}")]
    WrongHeight { expected: u64, found: u64 },
    #[error("no node number {0}")]
    NoSuchNode(usize),
}

impl AnswerError {
    /// Failures that only mean "too old or too new to use offline": a fresher
    /// proof (a look-up) may still succeed.
    fn is_staleness(&self) -> bool {
        matches!(
            self,
            AnswerError::Stale { .. }
                | AnswerError::OldEpoch { .. }
                | AnswerError::EpochAhead { .. }
        )
    }
}

/// One node's failure within a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFailure {
    pub node: String,
    pub error: AnswerError,
}

#[derive(Debug, Error)]
pub enum LightError {
    #[error("no node to ask")]
    NoNodes,
    #[error("no node gave a valid answer: {}", describe_failures(.0))]
    AllNodesFailed(Vec<NodeFailure>),
    #[error("FORK at height {}: {} (from {}) and {} (from {}) are both certified", .0.height, .0.known.header.hash(), .0.known_from, .0.conflicting.header.hash(), .0.conflicting_from)]
    Fork(Box<ForkEvidence>),
    #[error("genesis: {0}")]
    Genesis(#[from] GenesisError),
    #[error(
        "{0} is not registered and active with this device's agreement key: nothing to staple"
    )]
    NotStapleable(DeviceName),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

fn describe_failures(failures: &[NodeFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("{}: {}", f.node, f.error))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A verified answer about one device.
#[derive(Clone, Debug)]
pub struct VerifiedLookup {
    pub name: DeviceName,
    /// `None`: the device is proven absent.
    pub record: Option<DeviceRecord>,
    pub header: Header,
    /// Keys of the validators whose signatures certified `header`.
    pub signers: Vec<PublicKey>,
    /// Their voting power, and the set's total.
    pub signed_power: u64,
    pub total_power: u64,
    /// Where the proof came from (a node URL, or "staple").
    pub source: String,
    /// The verified proof itself (staple it: `proof.to_bytes()`).
    pub proof: DeviceProof,
    /// Nodes asked before (or besides) `source` that failed, and why.
    pub skipped: Vec<NodeFailure>,
}

/// A verified block.
#[derive(Clone, Debug)]
pub struct VerifiedBlock {
    pub block: CommittedBlock,
    pub signers: Vec<PublicKey>,
    pub source: String,
}

/// The light client's state and its nodes.
pub struct LightClient {
    anchor: TrustAnchor,
    config: LightConfig,
    nodes: Vec<NodeClient>,
    /// The newest trusted set (epoch `trusted.epoch`).
    trusted: ValidatorSet,
    /// Sets of recent epochs, by epoch (includes `trusted`).
    known_sets: BTreeMap<u64, ValidatorSet>,
    /// Certified headers seen, by height, with where each came from.
    recent: BTreeMap<u64, (CertifiedHeader, String)>,
    /// The highest verified header.
    highest: Option<(CertifiedHeader, String)>,
    /// Verified records by name, with the height they were verified at.
    records: BTreeMap<DeviceName, (u64, Option<DeviceRecord>)>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u8,
    chain_id: String,
    genesis_hash: Hash,
    /// Hex of the canonical trusted [`ValidatorSet`].
    validator_set: String,
    /// Hex of the canonical highest verified [`CertifiedHeader`].
    highest: Option<String>,
    highest_source: Option<String>,
}

impl LightClient {
    /// A client that trusts only the anchor.
    pub fn new(anchor: TrustAnchor, nodes: Vec<NodeClient>, config: LightConfig) -> Self {
        let trusted = anchor.validator_set.clone();
        let mut known_sets = BTreeMap::new();
        known_sets.insert(trusted.epoch, trusted.clone());
        LightClient {
            anchor,
            config,
            nodes,
            trusted,
            known_sets,
            recent: BTreeMap::new(),
            highest: None,
            records: BTreeMap::new(),
        }
    }

    /// A client resuming from a state file written by [`save`](Self::save)
    /// (or starting from the anchor when the file does not exist). The file
    /// must belong to the anchor's chain.
    pub fn open(
        anchor: TrustAnchor,
        nodes: Vec<NodeClient>,
        config: LightConfig,
        state_path: &Path,
    ) -> Result<Self, LightError> {
        let mut client = Self::new(anchor, nodes, config);
        if !state_path.exists() {
            return Ok(client);
        }
        let file_error = |reason: String| LightError::File {
            path: state_path.to_path_buf(),
            reason,
        };
        let text = read_bounded(state_path, MAX_STATE_FILE_LEN)?;
        let state: StateFile =
            serde_json::from_str(&text).map_err(|e| file_error(e.to_string()))?;
        if state.version != STATE_FILE_VERSION {
            return Err(file_error(format!("unsupported version {}", state.version)));
        }
        if state.genesis_hash != client.anchor.genesis_hash
            || state.chain_id != client.anchor.chain_id
        {
            return Err(file_error(format!(
                "belongs to chain {} (genesis {}), not to this genesis",
                state.chain_id, state.genesis_hash
            )));
        }
        let set = hex::decode(&state.validator_set)
            .map_err(|e| e.to_string())
            .and_then(|b| ValidatorSet::from_bytes(&b).map_err(|e| e.to_string()))
            .and_then(|s| s.check().map(|()| s).map_err(|e| e.to_string()))
            .map_err(|e| file_error(format!("validator set: {e}")))?;
        if set.epoch < client.trusted.epoch {
            return Err(file_error("validator set older than genesis".into()));
        }
        client.known_sets.insert(set.epoch, set.clone());
        client.trusted = set;
        if let Some(h) = &state.highest {
            let header = hex::decode(h)
                .map_err(|e| e.to_string())
                .and_then(|b| CertifiedHeader::from_bytes(&b).map_err(|e| e.to_string()))
                .map_err(|e| file_error(format!("highest header: {e}")))?;
            let source = state.highest_source.unwrap_or_else(|| "state file".into());
            client
                .recent
                .insert(header.header.height, (header.clone(), source.clone()));
            client.highest = Some((header, source));
        }
        Ok(client)
    }

    /// Writes the trusted set and highest verified header (atomically).
    pub fn save(&self, state_path: &Path) -> Result<(), LightError> {
        let state = StateFile {
            version: STATE_FILE_VERSION,
            chain_id: self.anchor.chain_id.clone(),
            genesis_hash: self.anchor.genesis_hash,
            validator_set: hex::encode(self.trusted.to_bytes()),
            highest: self
                .highest
                .as_ref()
                .map(|(h, _)| hex::encode(h.to_bytes())),
            highest_source: self.highest.as_ref().map(|(_, s)| s.clone()),
        };
        let text = serde_json::to_string_pretty(&state).unwrap_or_default();
        let file_error = |e: std::io::Error| LightError::File {
            path: state_path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut tmp = state_path.as_os_str().to_owned();
        // Unique per process: two commands may share one state file.
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        fs::write(&tmp, text).map_err(file_error)?;
        fs::rename(&tmp, state_path).map_err(file_error)
    }

    pub fn chain_id(&self) -> &str {
        &self.anchor.chain_id
    }

    pub fn anchor(&self) -> &TrustAnchor {
        &self.anchor
    }

    pub fn nodes(&self) -> &[NodeClient] {
        &self.nodes
    }

    pub fn trusted_set(&self) -> &ValidatorSet {
        &self.trusted
    }

    /// The highest verified header and where it came from.
    pub fn highest(&self) -> Option<&(CertifiedHeader, String)> {
        self.highest.as_ref()
    }

    pub fn verified_height(&self) -> u64 {
        self.highest.as_ref().map_or(0, |(h, _)| h.header.height)
    }

    fn node(&self, index: usize) -> Result<&NodeClient, AnswerError> {
        self.nodes.get(index).ok_or(AnswerError::NoSuchNode(index))
    }

    fn node_url(&self, index: usize) -> String {
        self.nodes
            .get(index)
            .map_or_else(String::new, |n| n.url().to_string())
    }

    /// Looks `name` up and verifies the answer (see the module docs).
    pub fn lookup(&mut self, name: &DeviceName) -> Result<VerifiedLookup, LightError> {
        if self.nodes.is_empty() {
            return Err(LightError::NoNodes);
        }
        let mut failures = Vec::new();
        let mut best: Option<VerifiedLookup> = None;
        for i in 0..self.nodes.len() {
            match self.lookup_at(i, name) {
                Ok(found) => {
                    let better = best
                        .as_ref()
                        .is_none_or(|b| found.header.height > b.header.height);
                    if better {
                        best = Some(found);
                    }
                    if !self.config.cross_check {
                        break;
                    }
                }
                Err(AnswerError::Fork(evidence)) => return Err(LightError::Fork(evidence)),
                Err(error) => failures.push(NodeFailure {
                    node: self.node_url(i),
                    error,
                }),
            }
        }
        match best {
            Some(mut found) => {
                found.skipped = failures;
                Ok(found)
            }
            None => Err(LightError::AllNodesFailed(failures)),
        }
    }

    fn lookup_at(&mut self, node: usize, name: &DeviceName) -> Result<VerifiedLookup, AnswerError> {
        let proof = self.node(node)?.device_proof(name)?;
        if proof.name != *name {
            return Err(AnswerError::WrongName {
                requested: name.clone(),
                answered: proof.name,
            });
        }
        self.reach_epoch(node, proof.header.epoch)?;
        let source = self.node(node)?.url().to_string();
        let lookup = self.verify_proof(proof, &source, self.config.max_header_age)?;
        if let Some((highest, _)) = &self.highest {
            if lookup.header.height < highest.header.height {
                return Err(AnswerError::Rollback {
                    height: lookup.header.height,
                    verified: highest.header.height,
                });
            }
        }
        self.accept(&lookup);
        Ok(lookup)
    }

    /// Checks a device proof against the trusted set (which must be of the
    /// proof's epoch), then fork and freshness. Does not record anything.
    fn verify_proof(
        &self,
        proof: DeviceProof,
        source: &str,
        max_age: Duration,
    ) -> Result<VerifiedLookup, AnswerError> {
        let epoch = proof.header.epoch;
        if epoch < self.trusted.epoch {
            return Err(AnswerError::OldEpoch {
                found: epoch,
                trusted: self.trusted.epoch,
            });
        }
        if epoch > self.trusted.epoch {
            return Err(AnswerError::EpochAhead {
                found: epoch,
                trusted: self.trusted.epoch,
            });
        }
        let record = verify_device_proof(&self.anchor.chain_id, &self.trusted, &proof)?;
        let certified = CertifiedHeader::new(proof.header.clone(), proof.certificate.clone());
        self.check_fork(&certified, source)?;
        self.check_fresh(proof.header.timestamp_ms, max_age)?;
        let (signers, signed_power) = signers_of(&self.trusted, &proof.certificate);
        Ok(VerifiedLookup {
            name: proof.name.clone(),
            record,
            header: proof.header.clone(),
            signers,
            signed_power,
            total_power: self.trusted.total_power(),
            source: source.to_string(),
            proof,
            skipped: Vec::new(),
        })
    }

    /// Records a verified answer: its header (fork memory, highest) and its
    /// record (cache).
    fn accept(&mut self, lookup: &VerifiedLookup) {
        let certified =
            CertifiedHeader::new(lookup.header.clone(), lookup.proof.certificate.clone());
        self.remember_header(certified, &lookup.source);
        let height = lookup.header.height;
        let newer = self
            .records
            .get(&lookup.name)
            .is_none_or(|(h, _)| *h <= height);
        if newer {
            if self.records.len() >= MAX_CACHED_RECORDS && !self.records.contains_key(&lookup.name)
            {
                // Forget the record verified longest ago.
                if let Some(oldest) = self
                    .records
                    .iter()
                    .min_by_key(|(_, (h, _))| *h)
                    .map(|(n, _)| n.clone())
                {
                    self.records.remove(&oldest);
                }
            }
            self.records
                .insert(lookup.name.clone(), (height, lookup.record.clone()));
        }
    }

    /// Follows handovers from the trusted epoch up to `target`, asking `node`.
    fn reach_epoch(&mut self, node: usize, target: u64) -> Result<(), AnswerError> {
        let trusted = self.trusted.epoch;
        if target < trusted {
            return Err(AnswerError::OldEpoch {
                found: target,
                trusted,
            });
        }
        let needed = target - trusted;
        if needed > self.config.max_epoch_steps {
            return Err(AnswerError::TooManyEpochs {
                needed,
                max: self.config.max_epoch_steps,
            });
        }
        // Bounded by `max_epoch_steps`: each pass moves one epoch or fails.
        while self.trusted.epoch < target {
            self.follow_handover(node)?;
        }
        Ok(())
    }

    /// Moves trust from epoch `e` to `e + 1`, or fails without changing anything.
    fn follow_handover(&mut self, node: usize) -> Result<(), AnswerError> {
        let next = self.trusted.epoch + 1;
        let fail = |reason: String| AnswerError::Handover {
            epoch: next,
            reason,
        };
        let answer = self.node(node)?.epoch(next)?;
        if answer.epoch != next || answer.validator_set.epoch != next {
            return Err(fail(format!(
                "answered epoch {} with a set of epoch {}",
                answer.epoch, answer.validator_set.epoch
            )));
        }
        answer
            .validator_set
            .check()
            .map_err(|e| fail(format!("invalid set: {e}")))?;
        let handover = answer
            .handover
            .ok_or_else(|| fail("no handover block".into()))?;
        let header = &handover.block.header;
        let source = self.node(node)?.url().to_string();
        // Certified by the outgoing (trusted) set: chain, epoch, set hash, signatures.
        let certified = CertifiedHeader::new(header.clone(), handover.certificate.clone());
        self.verify_certified(&certified)?;
        let new_set_hash = answer.validator_set.hash();
        if header.next_validator_set_hash != new_set_hash {
            return Err(fail(format!(
                "the handover block names next set {}, the offered set hashes to {new_set_hash}",
                header.next_validator_set_hash
            )));
        }
        self.check_fork(&certified, &source)?;
        if let Some((highest, _)) = &self.highest {
            if header.height < highest.header.height {
                return Err(fail(format!(
                    "handover at height {} is below the verified height {} of its epoch",
                    header.height, highest.header.height
                )));
            }
        }
        self.remember_header(certified, &source);
        let set = answer.validator_set;
        self.known_sets.insert(set.epoch, set.clone());
        while self.known_sets.len() > MAX_KNOWN_SETS {
            self.known_sets.pop_first();
        }
        self.trusted = set;
        Ok(())
    }

    /// Checks a header's chain, epoch and set hash against a known set, and
    /// its certificate.
    fn verify_certified(&self, certified: &CertifiedHeader) -> Result<Vec<PublicKey>, AnswerError> {
        let header = &certified.header;
        if header.chain_id != self.anchor.chain_id {
            return Err(AnswerError::WrongChain {
                expected: self.anchor.chain_id.clone(),
                found: header.chain_id.clone(),
            });
        }
        let set =
            self.known_sets
                .get(&header.epoch)
                .ok_or(if header.epoch > self.trusted.epoch {
                    AnswerError::EpochAhead {
                        found: header.epoch,
                        trusted: self.trusted.epoch,
                    }
                } else {
                    AnswerError::OldEpoch {
                        found: header.epoch,
                        trusted: self.trusted.epoch,
                    }
                })?;
        let set_hash = set.hash();
        if header.validator_set_hash != set_hash {
            return Err(AnswerError::ValidatorSetMismatch {
                epoch: header.epoch,
                expected: set_hash,
                found: header.validator_set_hash,
            });
        }
        verify_commit(
            &self.anchor.chain_id,
            set,
            header.height,
            &header.hash(),
            &certified.certificate,
        )?;
        Ok(signers_of(set, &certified.certificate).0)
    }

    /// A certified header with another hash at the same height is a fork.
    fn check_fork(&self, certified: &CertifiedHeader, source: &str) -> Result<(), AnswerError> {
        let height = certified.header.height;
        match self.recent.get(&height) {
            Some((known, known_from)) if known.header.hash() != certified.header.hash() => {
                Err(AnswerError::Fork(Box::new(ForkEvidence {
                    height,
                    known: known.clone(),
                    known_from: known_from.clone(),
                    conflicting: certified.clone(),
                    conflicting_from: source.to_string(),
                })))
            }
            _ => Ok(()),
        }
    }

    fn check_fresh(&self, timestamp_ms: u64, max_age: Duration) -> Result<(), AnswerError> {
        let now = now_ms();
        let skew = duration_ms(self.config.max_clock_skew);
        if timestamp_ms > now.saturating_add(skew) {
            return Err(AnswerError::FromTheFuture {
                ahead_ms: timestamp_ms - now,
            });
        }
        let age_ms = now.saturating_sub(timestamp_ms);
        let max_age_ms = duration_ms(max_age);
        if age_ms > max_age_ms {
            return Err(AnswerError::Stale { age_ms, max_age_ms });
        }
        Ok(())
    }

    /// Remembers a verified header for fork detection, and as the highest.
    fn remember_header(&mut self, certified: CertifiedHeader, source: &str) {
        let height = certified.header.height;
        let is_highest = self
            .highest
            .as_ref()
            .is_none_or(|(h, _)| h.header.height < height);
        if is_highest {
            self.highest = Some((certified.clone(), source.to_string()));
        }
        self.recent.insert(height, (certified, source.to_string()));
        while self.recent.len() > MAX_RECENT_HEADERS {
            self.recent.pop_first();
        }
    }

    /// Verifies a peer's stapled proof for `name` offline. When this client
    /// verified a newer record for the name, that record wins.
    pub fn verify_staple(
        &mut self,
        name: &DeviceName,
        staple: &[u8],
    ) -> Result<VerifiedLookup, AnswerError> {
        let proof = DeviceProof::from_bytes(staple)
            .map_err(|e| AnswerError::Malformed(format!("staple: {e}")))?;
        if proof.name != *name {
            return Err(AnswerError::WrongName {
                requested: name.clone(),
                answered: proof.name,
            });
        }
        let mut lookup = self.verify_proof(proof, "staple", self.config.max_staple_age)?;
        self.accept(&lookup);
        if let Some((height, record)) = self.records.get(name) {
            if *height > lookup.header.height {
                lookup.record = record.clone();
                lookup.source =
                    format!("staple, superseded by a record verified at height {height}");
            }
        }
        Ok(lookup)
    }

    /// Verifies a peer's newest header (fork detection across devices).
    /// Headers of other epochs cannot be judged offline and are ignored.
    pub fn check_peer_header(&mut self, bytes: &[u8], peer: &str) -> Result<(), AnswerError> {
        let certified = CertifiedHeader::from_bytes(bytes)
            .map_err(|e| AnswerError::Malformed(format!("peer header: {e}")))?;
        if !self.known_sets.contains_key(&certified.header.epoch) {
            return Ok(());
        }
        self.verify_certified(&certified)?;
        let source = format!("peer {peer}");
        self.check_fork(&certified, &source)?;
        self.remember_header(certified, &source);
        Ok(())
    }

    /// Fetches and verifies block `height` (any height: no freshness or
    /// rollback rule, but certificate, transaction root and fork checks).
    pub fn verified_block(&mut self, height: u64) -> Result<VerifiedBlock, LightError> {
        if self.nodes.is_empty() {
            return Err(LightError::NoNodes);
        }
        let mut failures = Vec::new();
        for i in 0..self.nodes.len() {
            match self.block_at(i, height) {
                Ok(block) => return Ok(block),
                Err(AnswerError::Fork(evidence)) => return Err(LightError::Fork(evidence)),
                Err(error) => failures.push(NodeFailure {
                    node: self.node_url(i),
                    error,
                }),
            }
        }
        Err(LightError::AllNodesFailed(failures))
    }

    fn block_at(&mut self, node: usize, height: u64) -> Result<VerifiedBlock, AnswerError> {
        let block = self.node(node)?.block(height)?;
        if block.block.header.height != height {
            return Err(AnswerError::WrongHeight {
                expected: height,
                found: block.block.header.height,
            });
        }
        self.verify_block(node, block)
    }

    /// Verifies a block `node` served (following handovers through `node`
    /// when the block is of a later epoch): certificate, transaction root,
    /// fork check.
    pub fn verify_block(
        &mut self,
        node: usize,
        block: CommittedBlock,
    ) -> Result<VerifiedBlock, AnswerError> {
        if node >= self.nodes.len() {
            return Err(AnswerError::NoSuchNode(node));
        }
        // The version bytes of the block and of its envelope are outside the
        // certified header hash: check them, or a node could alter them
        // undetected (both found by fuzzing; the envelope's when it arrives
        // nested, as in a sync response, where decoding does not check it).
        if block.block.version != Block::VERSION || block.version != CommittedBlock::VERSION {
            return Err(AnswerError::Malformed(format!(
                "block version {}, envelope version {}",
                block.block.version, block.version
            )));
        }
        let header = &block.block.header;
        if header.epoch > self.trusted.epoch {
            self.reach_epoch(node, header.epoch)?;
        }
        let certified = CertifiedHeader::new(header.clone(), block.certificate.clone());
        let signers = self.verify_certified(&certified)?;
        let computed = tx_root(&block.block.tx_hashes());
        if computed != header.tx_root {
            return Err(AnswerError::TxRoot {
                header: header.tx_root,
                computed,
            });
        }
        let source = self.node(node)?.url().to_string();
        self.check_fork(&certified, &source)?;
        self.remember_header(certified, &source);
        Ok(VerifiedBlock {
            block,
            signers,
            source,
        })
    }

    /// A look-up of this device's own record, for stapling to handshakes:
    /// refuses when the record does not carry `agreement_key`.
    pub fn own_staple(
        &mut self,
        name: &DeviceName,
        agreement_key: &[u8; 32],
    ) -> Result<Vec<u8>, LightError> {
        let lookup = self.lookup(name)?;
        match &lookup.record {
            Some(r) if r.is_active() && r.agreement_key.0 == *agreement_key => {
                Ok(lookup.proof.to_bytes())
            }
            _ => Err(LightError::NotStapleable(name.clone())),
        }
    }
}

/// Judges a verified record for a session peer.
fn judge_peer(
    name: &DeviceName,
    record: Option<&DeviceRecord>,
    remote_static: &[u8; 32],
) -> Result<[u8; 32], RefusalReason> {
    let record = record.ok_or_else(|| RefusalReason::UnknownDevice(name.to_string()))?;
    if let DeviceStatus::Revoked { .. } = record.status {
        return Err(RefusalReason::Revoked(name.to_string()));
    }
    if record.is_expired_at(now_ms()) {
        return Err(RefusalReason::Expired(name.to_string()));
    }
    if record.agreement_key.0 != *remote_static {
        return Err(RefusalReason::KeyMismatch(name.to_string()));
    }
    Ok(record.agreement_key.0)
}

impl PeerVerifier for LightClient {
    fn newest_header(&mut self) -> Option<Vec<u8>> {
        self.highest.as_ref().map(|(h, _)| h.to_bytes())
    }

    fn verify_peer(
        &mut self,
        claimed_name: &str,
        remote_static: &[u8; 32],
        staple: Option<&[u8]>,
        newest_header: Option<&[u8]>,
    ) -> Result<VerifiedPeer, RefusalReason> {
        let name = DeviceName::new(claimed_name)
            .map_err(|e| RefusalReason::InvalidProof(format!("claimed name: {e}")))?;
        if let Some(header) = newest_header {
            self.check_peer_header(header, claimed_name)
                .map_err(|e| refusal_for(e, "peer's newest header"))?;
        }
        let from_staple = match staple {
            Some(bytes) => match self.verify_staple(&name, bytes) {
                Ok(lookup) => Some(lookup),
                Err(e) if e.is_staleness() => None,
                Err(e) => return Err(refusal_for(e, "stapled proof")),
            },
            None => None,
        };
        let (lookup, source) = match from_staple {
            Some(lookup) => (lookup, VerificationSource::Staple),
            None => match self.lookup(&name) {
                Ok(lookup) => (lookup, VerificationSource::Lookup),
                Err(LightError::Fork(evidence)) => {
                    return Err(refusal_for(AnswerError::Fork(evidence), "look-up"))
                }
                Err(e) => {
                    return Err(RefusalReason::Unverifiable(format!(
                        "no usable staple and the look-up failed: {e}"
                    )))
                }
            },
        };
        let static_key = judge_peer(&name, lookup.record.as_ref(), remote_static)?;
        Ok(VerifiedPeer {
            name: name.to_string(),
            static_key,
            height: lookup.header.height,
            source,
        })
    }
}

fn refusal_for(error: AnswerError, what: &str) -> RefusalReason {
    match error {
        AnswerError::Fork(evidence) => RefusalReason::Fork(format!(
            "{what}: height {} has certified headers {} ({}) and {} ({})",
            evidence.height,
            evidence.known.header.hash(),
            evidence.known_from,
            evidence.conflicting.header.hash(),
            evidence.conflicting_from
        )),
        e if e.is_staleness() => RefusalReason::StaleProof(format!("{what}: {e}")),
        e => RefusalReason::InvalidProof(format!("{what}: {e}")),
    }
}

/// The signers named by a certificate already verified against `set`.
fn signers_of(set: &ValidatorSet, certificate: &CommitCertificate) -> (Vec<PublicKey>, u64) {
    let validators = set.validators();
    let mut power = 0;
    let keys = certificate
        .signer_indexes()
        .into_iter()
        .filter_map(|i| validators.get(i))
        .map(|v| {
            power += v.power;
            v.key
        })
        .collect();
    (keys, power)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, duration_ms)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn read_bounded(path: &Path, limit: u64) -> Result<String, LightError> {
    use std::io::Read;
    let file_error = |reason: String| LightError::File {
        path: path.to_path_buf(),
        reason,
    };
    let file = fs::File::open(path).map_err(|e| file_error(e.to_string()))?;
    let mut text = String::new();
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(|e| file_error(e.to_string()))?;
    if text.len() as u64 > limit {
        return Err(file_error(format!("larger than {limit} bytes")));
    }
    Ok(text)
}

#[cfg(test)]
mod tests;
