//! The node's wire messages that need neither storage nor networking: the
//! consensus payload gossiped in proposals, gossiped transaction batches,
//! block-sync requests and responses, and the HTTP API's request bodies.
//!
//! They live here, not in `keyreg-node`, so the fuzz targets decode them with
//! the node's own types and functions without building RocksDB or libp2p.

use std::sync::Arc;

use bincode::{Decode, Encode};
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::messages::Payload;
use keyreg_consensus::Hash;
use serde::Deserialize;
use thiserror::Error;

use crate::block::{tx_root, Header, MAX_BLOCK_TXS};
use crate::export::MAX_EXPORT_RECORD_BYTES;
use crate::tx::{Transaction, MAX_TX_BYTES};
use crate::{Block, CommittedBlock};

/// A block as the consensus engine's value: consensus votes for its header
/// hash. On the wire it is exactly a [`Block`] (a one-field tuple struct
/// encodes as its field). Shared, so the engine's copies (proposals, the
/// valid value, actions, the persisted state) cost nothing per transaction.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct BlockValue(pub Arc<Block>);

impl Payload for BlockValue {
    fn hash(&self) -> Hash {
        self.0.hash()
    }
}

/// A proposal's value as gossiped: the block's header and its
/// transactions' hashes, not their bytes. Validators already hold nearly
/// all of them (gossiped on their way into the proposer's mempool), so a
/// receiver rebuilds the block from its mempool and asks a peer for the
/// rest ([`SyncQuery::Transactions`]). Consensus names it by the header
/// hash, as it names the block, so a proposer's signature covers both forms.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct CompactBlock {
    pub header: Header,
    pub tx_hashes: Vec<Hash>,
}

impl Payload for CompactBlock {
    fn hash(&self) -> Hash {
        self.header.hash()
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CompactBlockError {
    #[error("a compact block names {0} transactions (at most {MAX_BLOCK_TXS})")]
    TooManyTxs(usize),
    #[error("the transaction hashes do not match the header's transaction root")]
    TxRoot,
}

impl CompactBlock {
    /// The compact form of `block`.
    pub fn of(block: &Block) -> Self {
        CompactBlock {
            header: block.header.clone(),
            tx_hashes: block.tx_hashes(),
        }
    }

    /// Checks that the hashes are the ones the header commits to, so that
    /// nobody fetches transactions for a block that cannot be valid.
    pub fn check(&self) -> Result<(), CompactBlockError> {
        if self.tx_hashes.len() > MAX_BLOCK_TXS {
            return Err(CompactBlockError::TooManyTxs(self.tx_hashes.len()));
        }
        if tx_root(&self.tx_hashes) != self.header.tx_root {
            return Err(CompactBlockError::TxRoot);
        }
        Ok(())
    }

    /// The block, given its transactions in the order of `tx_hashes` (the
    /// caller looked them up by hash).
    pub fn into_block(self, transactions: Vec<Transaction>) -> Block {
        self.into_block_and_ids(transactions).0
    }

    /// [`into_block`](Self::into_block), also handing back the
    /// transactions' ids, so that validation need not hash them again.
    pub fn into_block_and_ids(self, transactions: Vec<Transaction>) -> (Block, Vec<Hash>) {
        debug_assert_eq!(transactions.len(), self.tx_hashes.len());
        let block = Block {
            version: Block::VERSION,
            header: self.header,
            transactions,
        };
        (block, self.tx_hashes)
    }
}

/// What a block-sync request asks for.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum SyncQuery {
    /// The responder's head.
    Status,
    /// Committed blocks `from..from + limit` (fewer if the head is nearer or
    /// the response would exceed the size limit).
    Blocks { from: u64, limit: u32 },
    /// Uncommitted transactions by hash (those of a compact proposal the
    /// asker lacks), at most [`MAX_BLOCK_TXS`].
    Transactions { hashes: Vec<Hash> },
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct SyncRequest {
    pub version: u8,
    pub query: SyncQuery,
}

impl Canonical for SyncRequest {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum SyncReply {
    Status {
        height: u64,
        head_hash: Hash,
    },
    Blocks(Vec<CommittedBlock>),
    Error(String),
    /// The asked-for transactions the responder holds, in any order.
    Transactions(Vec<Transaction>),
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct SyncResponse {
    pub version: u8,
    pub reply: SyncReply,
}

impl Canonical for SyncResponse {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

/// The body of `POST /v1/transactions`: `{"tx": "<hex of the canonical bytes>"}`.
#[derive(Debug, Deserialize)]
pub struct SubmitBody {
    pub tx: String,
}

impl SubmitBody {
    /// The transaction's bytes (not yet decoded).
    pub fn tx_bytes(&self) -> Result<Vec<u8>, hex::FromHexError> {
        hex::decode(&self.tx)
    }
}

/// Most transactions in one `POST /v1/transactions/batch` (as many as one
/// gossiped batch holds).
pub const MAX_SUBMIT_BATCH: usize = MAX_TXS_PER_BATCH;

/// The body of `POST /v1/transactions/batch`: `{"txs": ["<hex>", ...]}`,
/// 1..=[`MAX_SUBMIT_BATCH`] transactions, each verified and admitted on its
/// own (one verdict per transaction, in order).
#[derive(Debug, Deserialize)]
pub struct SubmitBatchBody {
    pub txs: Vec<String>,
}

/// Why a batch body as a whole is refused (a bad transaction inside a good
/// body gets its own verdict instead).
#[derive(Debug, Error, PartialEq)]
pub enum SubmitBatchError {
    #[error("a batch holds 1..={MAX_SUBMIT_BATCH} transactions, not {0}")]
    Count(usize),
    #[error("txs[{index}] is not hex: {error}")]
    Hex {
        index: usize,
        error: hex::FromHexError,
    },
}

impl SubmitBatchBody {
    /// Every transaction's bytes (not yet decoded), in order.
    pub fn txs_bytes(&self) -> Result<Vec<Vec<u8>>, SubmitBatchError> {
        if !(1..=MAX_SUBMIT_BATCH).contains(&self.txs.len()) {
            return Err(SubmitBatchError::Count(self.txs.len()));
        }
        self.txs
            .iter()
            .enumerate()
            .map(|(index, tx)| {
                hex::decode(tx).map_err(|error| SubmitBatchError::Hex { index, error })
            })
            .collect()
    }
}

/// The query of `GET /v1/blocks`: `?from=<height>&limit=<count>`.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    pub from: Option<u64>,
    pub limit: Option<u32>,
}

/// Most blocks one `GET /v1/blocks` page holds.
pub const MAX_BLOCKS_PER_PAGE: u32 = 100;
/// A `GET /v1/blocks` page takes no further block once its hex reaches
/// this, so it holds at most this plus one block's hex, whatever the block
/// sizes (`next` says where to continue).
pub const MAX_PAGE_HEX_BYTES: usize = 16 << 20;

/// The largest `GET /v1/blocks` response body a page of up to `limit`
/// blocks can be (hex of committed blocks, JSON punctuation): what a
/// client reads at most before it gives up on a node.
pub fn max_block_page_bytes(limit: usize) -> u64 {
    let record_hex = 2 * MAX_EXPORT_RECORD_BYTES;
    let blocks = limit.clamp(1, MAX_BLOCKS_PER_PAGE as usize);
    let hex = (blocks * record_hex).min(MAX_PAGE_HEX_BYTES + record_hex);
    (hex + blocks * 16 + 1024) as u64
}

/// Most transactions in one gossiped batch.
pub const MAX_TXS_PER_BATCH: usize = 512;
/// Most payload bytes of one batch the batcher builds: room for a
/// largest transaction, and under the gossip payload limit.
pub const MAX_TX_BATCH_BYTES: usize = 2 * MAX_TX_BYTES;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TxBatchError {
    #[error("batch is truncated")]
    Truncated,
    #[error("batch holds {0} transactions (1..={MAX_TXS_PER_BATCH} allowed)")]
    Count(u32),
    #[error("transaction of {0} bytes in a batch (1..={MAX_TX_BYTES} allowed)")]
    Length(u32),
    #[error("{0} bytes after the last transaction")]
    Trailing(usize),
}

/// Encodes a batch of gossiped transactions (topic `keyreg/<chain>/tx`):
/// `count: u32 LE`, then `count` times `len: u32 LE` and the transaction's
/// canonical bytes; `1 <= count <=` [`MAX_TXS_PER_BATCH`], `1 <= len <=
/// MAX_TX_BYTES`, no bytes after the last transaction. One batch has one
/// encoding. `txs` must respect those bounds (the node batches only
/// transactions it admitted).
pub fn encode_tx_batch(txs: &[Vec<u8>]) -> Vec<u8> {
    debug_assert!((1..=MAX_TXS_PER_BATCH).contains(&txs.len()));
    let mut out = Vec::with_capacity(4 + txs.iter().map(|t| 4 + t.len()).sum::<usize>());
    out.extend_from_slice(&(txs.len() as u32).to_le_bytes());
    for tx in txs {
        debug_assert!((1..=MAX_TX_BYTES).contains(&tx.len()));
        out.extend_from_slice(&(tx.len() as u32).to_le_bytes());
        out.extend_from_slice(tx);
    }
    out
}

/// Splits a gossiped batch into its transactions' bytes (not yet decoded).
pub fn decode_tx_batch(payload: &[u8]) -> Result<Vec<&[u8]>, TxBatchError> {
    let (count, mut rest) = read_u32(payload)?;
    if count == 0 || count as usize > MAX_TXS_PER_BATCH {
        return Err(TxBatchError::Count(count));
    }
    let mut txs = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (len, after) = read_u32(rest)?;
        if len == 0 || len as usize > MAX_TX_BYTES {
            return Err(TxBatchError::Length(len));
        }
        let (tx, after) = after
            .split_at_checked(len as usize)
            .ok_or(TxBatchError::Truncated)?;
        txs.push(tx);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(TxBatchError::Trailing(rest.len()));
    }
    Ok(txs)
}

fn read_u32(bytes: &[u8]) -> Result<(u32, &[u8]), TxBatchError> {
    let (head, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or(TxBatchError::Truncated)?;
    Ok((u32::from_le_bytes(*head), rest))
}

#[cfg(test)]
mod tx_batch_tests {
    use super::*;

    #[test]
    fn a_block_page_bound_holds_the_largest_page_a_node_builds() {
        let record_hex = 2 * MAX_EXPORT_RECORD_BYTES;
        // One block: its hex and the JSON around it, no more.
        assert_eq!(max_block_page_bytes(1), (record_hex + 16 + 1024) as u64);
        assert_eq!(max_block_page_bytes(0), max_block_page_bytes(1));
        // A full page stops once its hex reaches the page budget, so the
        // worst case is the budget just missed, then one largest block.
        let worst_hex = MAX_PAGE_HEX_BYTES - 1 + record_hex;
        let worst_blocks = MAX_PAGE_HEX_BYTES.div_ceil(record_hex) + 1;
        assert!(worst_blocks <= MAX_BLOCKS_PER_PAGE as usize);
        let bound = max_block_page_bytes(MAX_BLOCKS_PER_PAGE as usize);
        assert!((worst_hex + worst_blocks * 16) as u64 <= bound);
        // Far below the page count times the largest block.
        assert!(bound < (MAX_BLOCKS_PER_PAGE as usize * record_hex / 4) as u64);
        assert_eq!(max_block_page_bytes(usize::MAX), bound);
    }

    #[test]
    fn batches_round_trip() {
        let txs = vec![vec![1u8; 3], vec![2u8; 1], vec![3u8; 300]];
        let encoded = encode_tx_batch(&txs);
        let decoded = decode_tx_batch(&encoded).unwrap();
        assert_eq!(decoded, txs.iter().map(Vec::as_slice).collect::<Vec<_>>());
    }

    #[test]
    fn malformed_batches_are_rejected() {
        let good = encode_tx_batch(&[vec![7u8; 10], vec![8u8; 5]]);
        // Every strict prefix is truncated (or, cut between entries, short).
        for cut in 0..good.len() {
            assert!(
                decode_tx_batch(&good[..cut]).is_err(),
                "prefix of {cut} bytes"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode_tx_batch(&trailing), Err(TxBatchError::Trailing(1)));
        assert_eq!(
            decode_tx_batch(&0u32.to_le_bytes()),
            Err(TxBatchError::Count(0))
        );
        let too_many = (MAX_TXS_PER_BATCH as u32 + 1).to_le_bytes();
        assert_eq!(
            decode_tx_batch(&too_many),
            Err(TxBatchError::Count(MAX_TXS_PER_BATCH as u32 + 1))
        );
        // A length prefix beyond the limit is refused before any allocation.
        let mut huge = 1u32.to_le_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_tx_batch(&huge), Err(TxBatchError::Length(u32::MAX)));
        let mut empty_tx = 1u32.to_le_bytes().to_vec();
        empty_tx.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode_tx_batch(&empty_tx), Err(TxBatchError::Length(0)));
    }
}

#[cfg(test)]
mod compact_block_tests {
    use keyreg_consensus::crypto::Hash;

    use super::*;
    use crate::testkit::test_key;
    use crate::tx::{Authority, Revocation, TxBody};
    use crate::DeviceName;

    fn block(txs: usize) -> Block {
        let admin = test_key("admin");
        let transactions: Vec<Transaction> = (0..txs)
            .map(|i| {
                let name = DeviceName::new(&format!("org/device-{i}")).unwrap();
                let body = TxBody::RevokeDevice(Revocation {
                    name,
                    reason: "test".into(),
                    authority: Authority::Admin,
                });
                Transaction::new("chain", body).signed_by(&[&admin])
            })
            .collect();
        let hashes: Vec<Hash> = transactions.iter().map(Transaction::hash).collect();
        let header = Header {
            version: Header::VERSION,
            chain_id: "chain".into(),
            epoch: 0,
            height: 1,
            prev_hash: Hash([1; 32]),
            timestamp_ms: 1,
            proposer: admin.public(),
            tx_root: tx_root(&hashes),
            state_root: Hash([2; 32]),
            validator_set_hash: Hash([3; 32]),
            next_validator_set_hash: Hash([3; 32]),
        };
        Block {
            version: Block::VERSION,
            header,
            transactions,
        }
    }

    #[test]
    fn a_compact_block_names_the_block_and_rebuilds_it() {
        let block = block(3);
        let compact = CompactBlock::of(&block);
        assert_eq!(compact.tx_hashes, block.tx_hashes());
        assert_eq!(
            compact.hash(),
            block.hash(),
            "both forms carry one signature"
        );
        compact.check().unwrap();
        assert_eq!(compact.into_block(block.transactions.clone()), block);
    }

    #[test]
    fn hashes_that_do_not_match_the_root_or_exceed_a_block_are_refused() {
        let block = block(2);
        let mut swapped = CompactBlock::of(&block);
        swapped.tx_hashes.reverse();
        assert_eq!(swapped.check(), Err(CompactBlockError::TxRoot));
        let mut dropped = CompactBlock::of(&block);
        dropped.tx_hashes.pop();
        assert_eq!(dropped.check(), Err(CompactBlockError::TxRoot));
        let mut huge = CompactBlock::of(&block);
        huge.tx_hashes = vec![Hash([0; 32]); MAX_BLOCK_TXS + 1];
        assert_eq!(
            huge.check(),
            Err(CompactBlockError::TooManyTxs(MAX_BLOCK_TXS + 1))
        );
    }
}
