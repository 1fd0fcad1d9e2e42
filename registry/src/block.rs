//! Headers, blocks, committed blocks, the transaction Merkle root and the
//! checks a block must pass against its parent.

use bincode::{Decode, Encode};
use keyreg_consensus::certificate::CommitCertificate;
use keyreg_consensus::codec::{encoded_len, Canonical};
use keyreg_consensus::crypto::{hash, hash_parts, Domain, Hash, PublicKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::tx::Transaction;

/// Largest encoded block: about 6 400 registrations. Under saturation a
/// block's fixed costs (votes, certificate, the tree's top levels, one
/// synced write) spread over more transactions than at 512 KiB, which
/// capped a 2-core testnet's commits (docs/benchmarks.md, session 9), and
/// with validators 50–100 ms apart, where a height's link crossings bound
/// the heights per second, 2 MiB commits 21–57 % more than 1 MiB did
/// (session 22); a compact proposal still fits a gossip frame, a block a
/// sync response.
pub const MAX_BLOCK_BYTES: usize = 2 * 1024 * 1024;
/// Room a block's header, version byte and length prefix take at most:
/// [`Ledger::propose`](crate::Ledger::propose) fills the rest with transactions.
pub const BLOCK_OVERHEAD_BYTES: usize = 1024;
/// More transactions than any block can hold (no transaction encodes in
/// under 64 bytes: each carries at least one 96-byte signature).
pub const MAX_BLOCK_TXS: usize = MAX_BLOCK_BYTES / 64;

/// What validators certify: a block's place in the chain and the roots it
/// commits to.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Header {
    pub version: u8,
    pub chain_id: String,
    /// Epoch of the validator set that certifies this block.
    pub epoch: u64,
    pub height: u64,
    /// Hash of the parent header (the genesis hash for height 0).
    pub prev_hash: Hash,
    pub timestamp_ms: u64,
    pub proposer: PublicKey,
    /// [`tx_root`] of the block's transactions.
    pub tx_root: Hash,
    /// Root of the state tree after this block's transactions.
    pub state_root: Hash,
    /// Hash of the set that certifies this block.
    pub validator_set_hash: Hash,
    /// Hash of the set that certifies the next block; differs from
    /// `validator_set_hash` exactly when this block changed the set, so a
    /// light client follows a handover signed by the outgoing set.
    pub next_validator_set_hash: Hash,
}

impl Canonical for Header {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

impl Header {
    /// The block id: `hash(Domain::Header, canonical bytes)`.
    pub fn hash(&self) -> Hash {
        hash(Domain::Header, &self.to_bytes())
    }

    /// True when the next block is certified by a different set.
    pub fn changes_validators(&self) -> bool {
        self.validator_set_hash != self.next_validator_set_hash
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Block {
    pub version: u8,
    pub header: Header,
    pub transactions: Vec<Transaction>,
}

impl Canonical for Block {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

impl Block {
    /// A block's hash is its header's hash.
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }

    pub fn tx_hashes(&self) -> Vec<Hash> {
        self.transactions.iter().map(Transaction::hash).collect()
    }

    /// The inclusion proof of the `index`-th transaction.
    pub fn tx_proof(&self, index: usize) -> Option<TxInclusionProof> {
        TxInclusionProof::build(&self.tx_hashes(), index)
    }
}

/// A block and the certificate that committed it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct CommittedBlock {
    pub version: u8,
    pub block: Block,
    pub certificate: CommitCertificate,
}

impl Canonical for CommittedBlock {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

fn leaf_hash(tx_hash: &Hash) -> Hash {
    hash_parts(Domain::TransactionRoot, &[&[0], &tx_hash.0])
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    hash_parts(Domain::TransactionRoot, &[&[1], &left.0, &right.0])
}

/// Largest power of two strictly below `n` (n >= 2): where RFC 6962 splits.
fn split_point(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

fn subtree_root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => hash(Domain::TransactionRoot, &[]),
        [one] => leaf_hash(one),
        _ => {
            // 0 < k < len: split_point(n) is a power of two below n.
            let (left, right) = leaves.split_at(split_point(leaves.len()));
            node_hash(&subtree_root(left), &subtree_root(right))
        }
    }
}

/// The binary Merkle root (RFC 6962 shape, [`Domain::TransactionRoot`]) over
/// transaction hashes; leaves and inner nodes are tagged 0 and 1.
pub fn tx_root(tx_hashes: &[Hash]) -> Hash {
    subtree_root(tx_hashes)
}

/// Proves that a transaction hash is leaf `index` of `total` under a tx root.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct TxInclusionProof {
    pub index: u64,
    pub total: u64,
    /// Sibling hashes from the leaf up.
    pub siblings: Vec<Hash>,
}

impl TxInclusionProof {
    pub fn build(tx_hashes: &[Hash], index: usize) -> Option<Self> {
        if index >= tx_hashes.len() {
            return None;
        }
        let mut siblings = Vec::new();
        let (mut leaves, mut i) = (tx_hashes, index);
        let mut path = Vec::new();
        while leaves.len() > 1 {
            let k = split_point(leaves.len());
            // 0 < k < len: split_point(n) is a power of two below n.
            let (left, right) = leaves.split_at(k);
            if i < k {
                path.push(subtree_root(right));
                leaves = left;
            } else {
                path.push(subtree_root(left));
                leaves = right;
                i -= k;
            }
        }
        // Collected top-down; verification goes bottom-up.
        while let Some(h) = path.pop() {
            siblings.push(h);
        }
        Some(TxInclusionProof {
            index: index as u64,
            total: tx_hashes.len() as u64,
            siblings,
        })
    }

    /// True when `tx_hash` is leaf `index` of `total` under `root`.
    pub fn verify(&self, root: &Hash, tx_hash: &Hash) -> bool {
        if self.index >= self.total || self.siblings.len() > 64 {
            return false;
        }
        // Walk top-down to learn, per level, whether we are the left child.
        let (mut index, mut size) = (self.index, self.total);
        let mut is_left = Vec::with_capacity(self.siblings.len());
        while size > 1 {
            let k = split_point(size as usize) as u64;
            if index < k {
                is_left.push(true);
                size = k;
            } else {
                is_left.push(false);
                index -= k;
                size -= k;
            }
        }
        if is_left.len() != self.siblings.len() {
            return false;
        }
        let mut acc = leaf_hash(tx_hash);
        for (sibling, left) in self.siblings.iter().zip(is_left.iter().rev()) {
            acc = if *left {
                node_hash(&acc, sibling)
            } else {
                node_hash(sibling, &acc)
            };
        }
        acc == *root
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BlockError {
    #[error("unsupported version {0}")]
    Version(u8),
    #[error("block is for chain {found:?}, this is {expected:?}")]
    WrongChain { expected: String, found: String },
    #[error("height {found}, expected {expected}")]
    Height { expected: u64, found: u64 },
    #[error("previous hash {found}, expected {expected}")]
    PrevHash { expected: Hash, found: Hash },
    #[error("timestamp {found} is not after the parent's {parent}")]
    Timestamp { parent: u64, found: u64 },
    #[error("transaction root {found}, computed {expected}")]
    TxRoot { expected: Hash, found: Hash },
    #[error("epoch {found}, expected {expected}")]
    Epoch { expected: u64, found: u64 },
    #[error("validator set hash {found}, expected {expected}")]
    ValidatorSetHash { expected: Hash, found: Hash },
    #[error("next validator set hash {found}, execution gives {expected}")]
    NextValidatorSetHash { expected: Hash, found: Hash },
    #[error("state root {found}, execution gives {expected}")]
    StateRoot { expected: Hash, found: Hash },
    #[error("encoded block is {size} bytes, above {MAX_BLOCK_BYTES}")]
    TooLarge { size: usize },
    #[error("proposer {0} is not in the validator set")]
    UnknownProposer(PublicKey),
}

impl Block {
    /// Checks everything about `self` that follows from its parent's header
    /// alone (not execution): version, chain, height, link, time, tx root,
    /// epoch and validator-set hand-over, size.
    pub fn check_against_parent(&self, chain_id: &str, parent: &Header) -> Result<(), BlockError> {
        self.check_against_parent_hashed(chain_id, parent, &self.tx_hashes())
    }

    /// [`check_against_parent`](Self::check_against_parent) given the
    /// transactions' hashes (`tx_hashes[i]` must be the hash of
    /// `transactions[i]`).
    pub fn check_against_parent_hashed(
        &self,
        chain_id: &str,
        parent: &Header,
        tx_hashes: &[Hash],
    ) -> Result<(), BlockError> {
        debug_assert_eq!(tx_hashes.len(), self.transactions.len());
        let h = &self.header;
        if self.version != Block::VERSION {
            return Err(BlockError::Version(self.version));
        }
        if h.version != Header::VERSION {
            return Err(BlockError::Version(h.version));
        }
        if h.chain_id != chain_id {
            return Err(BlockError::WrongChain {
                expected: chain_id.to_string(),
                found: h.chain_id.clone(),
            });
        }
        if h.height != parent.height + 1 {
            return Err(BlockError::Height {
                expected: parent.height + 1,
                found: h.height,
            });
        }
        let parent_hash = parent.hash();
        if h.prev_hash != parent_hash {
            return Err(BlockError::PrevHash {
                expected: parent_hash,
                found: h.prev_hash,
            });
        }
        if h.timestamp_ms <= parent.timestamp_ms {
            return Err(BlockError::Timestamp {
                parent: parent.timestamp_ms,
                found: h.timestamp_ms,
            });
        }
        let expected_epoch = parent.epoch + u64::from(parent.changes_validators());
        if h.epoch != expected_epoch {
            return Err(BlockError::Epoch {
                expected: expected_epoch,
                found: h.epoch,
            });
        }
        if h.validator_set_hash != parent.next_validator_set_hash {
            return Err(BlockError::ValidatorSetHash {
                expected: parent.next_validator_set_hash,
                found: h.validator_set_hash,
            });
        }
        let size = encoded_len(self).unwrap_or(usize::MAX);
        if size > MAX_BLOCK_BYTES {
            return Err(BlockError::TooLarge { size });
        }
        let expected_root = tx_root(tx_hashes);
        if h.tx_root != expected_root {
            return Err(BlockError::TxRoot {
                expected: expected_root,
                found: h.tx_root,
            });
        }
        Ok(())
    }
}
