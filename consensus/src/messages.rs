//! Signed consensus messages, their wire form, and equivocation evidence.
//!
//! * A vote is a [`VoteData`] signed under [`Domain::Vote`] over exactly
//!   [`VoteData::sign_bytes`], so the precommits of a round are the
//!   signatures of a [`CommitCertificate`](crate::CommitCertificate).
//! * A proposal is a [`ProposalData`] (which names the value by hash) signed
//!   under [`Domain::Proposal`]; the value travels next to it. Votes carry only
//!   the hash, so a block of many transactions crosses the wire once per
//!   proposal.
//! * [`decode_message`] + [`Message::verify`] are the gossip layer's entry
//!   points: they reject oversized input, malformed or non-canonical bytes,
//!   wrong chain or epoch, unknown signers and bad signatures.

use std::fmt;

use bincode::{Decode, Encode};
use thiserror::Error;

use crate::certificate::{VoteData, VoteKind};
use crate::codec::{encode, Canonical, CodecError};
use crate::crypto::{Domain, Hash, PublicKey, Signature, SigningKey};
use crate::validators::ValidatorSet;

/// What consensus agrees on: a whole block in keyreg. The engine only needs
/// its hash (what votes and certificates name) and its canonical encoding.
pub trait Payload: Clone + fmt::Debug + PartialEq + Encode + Decode<()> {
    /// The hash validators vote for; must commit to the whole value.
    fn hash(&self) -> Hash;
}

/// Exactly what a proposer signs (under [`Domain::Proposal`]).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ProposalData {
    pub version: u8,
    pub chain_id: String,
    pub epoch: u64,
    pub height: u64,
    pub round: u32,
    /// The round of the proof-of-lock (+2/3 prevotes) the proposer saw for
    /// this value, if it re-proposes a value from an earlier round.
    pub pol_round: Option<u32>,
    pub value_hash: Hash,
}

impl Canonical for ProposalData {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

/// Data a validator signs in consensus: its sign bytes, domain and position.
pub trait SignedData: Clone + fmt::Debug + PartialEq + Encode + Decode<()> {
    const DOMAIN: Domain;
    fn sign_bytes(&self) -> Vec<u8> {
        encode(self)
    }
    fn chain_id(&self) -> &str;
    fn epoch(&self) -> u64;
    fn height(&self) -> u64;
    fn round(&self) -> u32;
}

/// Both signed kinds carry the same routing fields under the same names.
macro_rules! impl_signed_data {
    ($($ty:ty => $domain:expr),+ $(,)?) => {$(
        impl SignedData for $ty {
            const DOMAIN: Domain = $domain;
            fn chain_id(&self) -> &str {
                &self.chain_id
            }
            fn epoch(&self) -> u64 {
                self.epoch
            }
            fn height(&self) -> u64 {
                self.height
            }
            fn round(&self) -> u32 {
                self.round
            }
        }
    )+};
}

impl_signed_data!(VoteData => Domain::Vote, ProposalData => Domain::Proposal);

/// `data` signed by `signer`.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Signed<T> {
    pub data: T,
    pub signer: PublicKey,
    pub signature: Signature,
}

pub type SignedVote = Signed<VoteData>;

impl<T: SignedData> Signed<T> {
    pub fn sign(data: T, key: &SigningKey) -> Self {
        let signature = key.sign(T::DOMAIN, &data.sign_bytes());
        Signed {
            data,
            signer: key.public(),
            signature,
        }
    }

    /// Checks chain, epoch, membership and signature; returns the signer's
    /// index in `set`.
    pub fn verify(&self, chain_id: &str, set: &ValidatorSet) -> Result<usize, MessageError> {
        if self.data.chain_id() != chain_id {
            return Err(MessageError::WrongChain);
        }
        if self.data.epoch() != set.epoch {
            return Err(MessageError::WrongEpoch {
                expected: set.epoch,
                found: self.data.epoch(),
            });
        }
        let index = set
            .index_of(&self.signer)
            .ok_or(MessageError::UnknownSigner(self.signer))?;
        self.signer
            .verify(T::DOMAIN, &self.data.sign_bytes(), &self.signature)
            .map_err(|_| MessageError::BadSignature(self.signer))?;
        Ok(index)
    }
}

/// A signed proposal and the value it names.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct SignedProposal<V> {
    pub signed: Signed<ProposalData>,
    pub value: V,
}

impl<V: Payload> SignedProposal<V> {
    pub fn data(&self) -> &ProposalData {
        &self.signed.data
    }
}

#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum MessageBody<V> {
    Proposal(SignedProposal<V>),
    Vote(SignedVote),
}

/// One consensus message as gossiped.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct Message<V> {
    pub version: u8,
    pub body: MessageBody<V>,
}

impl<V: Payload> Canonical for Message<V> {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MessageError {
    #[error("message of {found} bytes exceeds the {limit}-byte limit")]
    TooLarge { found: usize, limit: usize },
    #[error("undecodable message: {0}")]
    Codec(#[from] CodecError),
    #[error("message is for another chain")]
    WrongChain,
    #[error("message is for epoch {found}, the validator set is epoch {expected}")]
    WrongEpoch { expected: u64, found: u64 },
    #[error("signer {0} is not in the validator set")]
    UnknownSigner(PublicKey),
    #[error("bad signature from {0}")]
    BadSignature(PublicKey),
    #[error("proposal names value {claimed} but carries a value hashing to {actual}")]
    ValueHashMismatch { claimed: Hash, actual: Hash },
    #[error("proposal's proof-of-lock round {pol_round} is not below its round {round}")]
    BadPolRound { pol_round: u32, round: u32 },
}

/// Decodes a gossiped message, rejecting anything above `max_len` bytes
/// before decoding (bounds the value a proposal may carry).
pub fn decode_message<V: Payload>(
    bytes: &[u8],
    max_len: usize,
) -> Result<Message<V>, MessageError> {
    if bytes.len() > max_len {
        return Err(MessageError::TooLarge {
            found: bytes.len(),
            limit: max_len,
        });
    }
    Ok(Message::from_bytes(bytes)?)
}

impl<V> Message<V> {
    /// The same message carrying `f(value)` in place of a proposal's value
    /// (votes carry none). The signature stays valid exactly when the new
    /// value hashes as the old one did: a proposer signs the value's hash.
    pub fn map_value<W, E>(self, f: impl FnOnce(V) -> Result<W, E>) -> Result<Message<W>, E> {
        let body = match self.body {
            MessageBody::Proposal(p) => MessageBody::Proposal(SignedProposal {
                signed: p.signed,
                value: f(p.value)?,
            }),
            MessageBody::Vote(v) => MessageBody::Vote(v),
        };
        Ok(Message {
            version: self.version,
            body,
        })
    }
}

impl<V: Payload> Message<V> {
    pub fn proposal(p: SignedProposal<V>) -> Self {
        Message {
            version: Self::VERSION,
            body: MessageBody::Proposal(p),
        }
    }

    pub fn vote(v: SignedVote) -> Self {
        Message {
            version: Self::VERSION,
            body: MessageBody::Vote(v),
        }
    }

    pub fn height(&self) -> u64 {
        match &self.body {
            MessageBody::Proposal(p) => p.signed.data.height,
            MessageBody::Vote(v) => v.data.height,
        }
    }

    pub fn round(&self) -> u32 {
        match &self.body {
            MessageBody::Proposal(p) => p.signed.data.round,
            MessageBody::Vote(v) => v.data.round,
        }
    }

    pub fn epoch(&self) -> u64 {
        match &self.body {
            MessageBody::Proposal(p) => p.signed.data.epoch,
            MessageBody::Vote(v) => v.data.epoch,
        }
    }

    /// The hash of the value a proposal carries; `None` for a vote.
    pub fn proposed_hash(&self) -> Option<Hash> {
        match &self.body {
            MessageBody::Proposal(p) => Some(p.signed.data.value_hash),
            MessageBody::Vote(_) => None,
        }
    }

    pub fn signer(&self) -> PublicKey {
        match &self.body {
            MessageBody::Proposal(p) => p.signed.signer,
            MessageBody::Vote(v) => v.signer,
        }
    }

    /// Full check against the validator set of the message's height:
    /// chain, epoch, signer membership, signature, and for proposals the
    /// value's hash and the proof-of-lock round. Returns the signer's index.
    /// (Whether the signer is the round's proposer is the engine's check.)
    pub fn verify(&self, chain_id: &str, set: &ValidatorSet) -> Result<usize, MessageError> {
        match &self.body {
            MessageBody::Vote(v) => v.verify(chain_id, set),
            MessageBody::Proposal(p) => {
                let data = &p.signed.data;
                if let Some(pol_round) = data.pol_round {
                    if pol_round >= data.round {
                        return Err(MessageError::BadPolRound {
                            pol_round,
                            round: data.round,
                        });
                    }
                }
                let actual = p.value.hash();
                if actual != data.value_hash {
                    return Err(MessageError::ValueHashMismatch {
                        claimed: data.value_hash,
                        actual,
                    });
                }
                p.signed.verify(chain_id, set)
            }
        }
    }
}

/// Proof that one validator signed two conflicting messages for the same
/// height and round: two different votes of one kind, or two different
/// proposals. The pair is stored in canonical order (`first` encodes below
/// `second`) so the same offence has exactly one encoding.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Evidence {
    pub version: u8,
    pub offence: Offence,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Offence {
    ConflictingVotes {
        first: SignedVote,
        second: SignedVote,
    },
    ConflictingProposals {
        first: Signed<ProposalData>,
        second: Signed<ProposalData>,
    },
}

impl Canonical for Evidence {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EvidenceError {
    #[error("the two messages have different signers")]
    DifferentSigners,
    #[error("the two messages are not for the same height, round and kind")]
    DifferentSlot,
    #[error("the two messages are identical: no conflict")]
    NotConflicting,
    #[error("the pair is not in canonical order")]
    NotCanonical,
    #[error("unsupported evidence version {0}")]
    Version(u8),
    #[error("a signed message does not verify: {0}")]
    Message(#[from] MessageError),
}

fn ordered<T: SignedData>(a: Signed<T>, b: Signed<T>) -> (Signed<T>, Signed<T>) {
    if encode(&a) <= encode(&b) {
        (a, b)
    } else {
        (b, a)
    }
}

impl Evidence {
    pub fn conflicting_votes(a: SignedVote, b: SignedVote) -> Self {
        let (first, second) = ordered(a, b);
        Evidence {
            version: Self::VERSION,
            offence: Offence::ConflictingVotes { first, second },
        }
    }

    pub fn conflicting_proposals(a: Signed<ProposalData>, b: Signed<ProposalData>) -> Self {
        let (first, second) = ordered(a, b);
        Evidence {
            version: Self::VERSION,
            offence: Offence::ConflictingProposals { first, second },
        }
    }

    /// The validator that equivocated.
    pub fn offender(&self) -> PublicKey {
        match &self.offence {
            Offence::ConflictingVotes { first, .. } => first.signer,
            Offence::ConflictingProposals { first, .. } => first.signer,
        }
    }

    pub fn height(&self) -> u64 {
        match &self.offence {
            Offence::ConflictingVotes { first, .. } => first.data.height,
            Offence::ConflictingProposals { first, .. } => first.data.height,
        }
    }

    /// Self-contained check: both messages verify under `set` (the validator
    /// set of the evidence's height), have one signer, occupy the same
    /// (height, round[, kind]) and differ.
    pub fn verify(&self, chain_id: &str, set: &ValidatorSet) -> Result<(), EvidenceError> {
        if self.version != Self::VERSION {
            return Err(EvidenceError::Version(self.version));
        }
        match &self.offence {
            Offence::ConflictingVotes { first, second } => {
                let same_slot = first.data.height == second.data.height
                    && first.data.round == second.data.round
                    && first.data.kind == second.data.kind;
                check_pair(chain_id, set, first, second, same_slot)
            }
            Offence::ConflictingProposals { first, second } => {
                let same_slot = first.data.height == second.data.height
                    && first.data.round == second.data.round;
                check_pair(chain_id, set, first, second, same_slot)
            }
        }
    }
}

fn check_pair<T: SignedData>(
    chain_id: &str,
    set: &ValidatorSet,
    first: &Signed<T>,
    second: &Signed<T>,
    same_slot: bool,
) -> Result<(), EvidenceError> {
    if first.signer != second.signer {
        return Err(EvidenceError::DifferentSigners);
    }
    if !same_slot {
        return Err(EvidenceError::DifferentSlot);
    }
    if first.data == second.data {
        return Err(EvidenceError::NotConflicting);
    }
    if encode(first) >= encode(second) {
        return Err(EvidenceError::NotCanonical);
    }
    first.verify(chain_id, set)?;
    second.verify(chain_id, set)?;
    Ok(())
}

/// The kind of a vote as a small ordinal, for compact bookkeeping keys.
pub(crate) fn kind_index(kind: VoteKind) -> u8 {
    match kind {
        VoteKind::Prevote => 0,
        VoteKind::Precommit => 1,
    }
}
