//! The node's wire messages that need neither storage nor networking: the
//! consensus payload gossiped in proposals, block-sync requests and
//! responses, and the HTTP API's request bodies.
//!
//! They live here, not in `keyreg-node`, so the fuzz targets decode them with
//! the node's own types and functions without building RocksDB or libp2p.

use bincode::{Decode, Encode};
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::messages::Payload;
use keyreg_consensus::Hash;
use serde::Deserialize;

use crate::{Block, CommittedBlock};

/// A block as the consensus engine's value: consensus votes for its header
/// hash. On the wire it is exactly a [`Block`] (a one-field tuple struct
/// encodes as its field).
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct BlockValue(pub Block);

impl Payload for BlockValue {
    fn hash(&self) -> Hash {
        self.0.hash()
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
    Status { height: u64, head_hash: Hash },
    Blocks(Vec<CommittedBlock>),
    Error(String),
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

/// The query of `GET /v1/blocks`: `?from=<height>&limit=<count>`.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    pub from: Option<u64>,
    pub limit: Option<u32>,
}
