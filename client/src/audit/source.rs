//! Where the auditor's blocks come from: a node's HTTP API, an export file,
//! or memory. Sources hand over canonical bytes; the auditor decodes them,
//! so an undecodable block is reported at its height.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::time::Duration;

use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::Hash;
use keyreg_registry::export::{ExportError, ExportReader};
use keyreg_registry::wire::{max_block_page_bytes, MAX_BLOCKS_PER_PAGE};
use keyreg_registry::{CommittedBlock, Genesis, GenesisError};
use serde::Deserialize;
use thiserror::Error;

/// Most blocks one `GET /v1/blocks` page returns (API contract, the node's
/// own cap).
pub const MAX_PAGE_BLOCKS: usize = MAX_BLOCKS_PER_PAGE as usize;

/// A height and the hash of its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainHead {
    pub height: u64,
    pub hash: Hash,
}

/// What a source says it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceInfo {
    pub chain_id: String,
    pub genesis_hash: Hash,
    /// The head the audit goes up to and must reproduce.
    pub head: ChainHead,
}

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("GET {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("GET {url}: malformed response: {reason}")]
    Response { url: String, reason: String },
    #[error("export file: {0}")]
    Export(#[from] ExportError),
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("the source returned {got} blocks, {asked} were asked for")]
    TooMany { asked: usize, got: usize },
    #[error("the source returned no block at height {height}, below its head {head}")]
    Ended { height: u64, head: u64 },
    #[error("the source was used before open()")]
    NotOpened,
    #[error("building the genesis header: {0}")]
    Genesis(#[from] GenesisError),
}

/// A supply of committed blocks, consumed in height order from one thread
/// (the auditor's verifier thread, hence `Send`).
pub trait BlockSource: Send {
    /// Chain id, genesis hash and head. Called once, first.
    fn open(&mut self) -> Result<SourceInfo, SourceError>;

    /// Canonical bytes of up to `max` consecutive blocks from height `from`
    /// (>= 1; calls come with increasing `from`). Empty once `from` is past
    /// the head; a source that cannot reach its head returns an error.
    fn fetch(&mut self, from: u64, max: usize) -> Result<Vec<Vec<u8>>, SourceError>;
}

impl<S: BlockSource + ?Sized> BlockSource for Box<S> {
    fn open(&mut self) -> Result<SourceInfo, SourceError> {
        (**self).open()
    }

    fn fetch(&mut self, from: u64, max: usize) -> Result<Vec<Vec<u8>>, SourceError> {
        (**self).fetch(from, max)
    }
}

/// A node's HTTP API (`GET /v1/status`, `GET /v1/blocks?from=&limit=`).
pub struct HttpSource {
    agent: ureq::Agent,
    base_url: String,
    head: Option<u64>,
}

#[derive(Deserialize)]
struct StatusResponse {
    chain_id: String,
    genesis_hash: Hash,
    height: u64,
    head_hash: Hash,
}

#[derive(Deserialize)]
struct BlocksResponse {
    blocks: Vec<String>,
}

/// A status response is small.
const MAX_STATUS_BYTES: u64 = 64 * 1024;

impl HttpSource {
    /// `base_url` like `http://10.0.0.1:8080` (no trailing `/v1`); `timeout`
    /// bounds connecting and each read.
    pub fn new(base_url: &str, timeout: Duration) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout_read(timeout)
            .timeout_write(timeout)
            .build();
        HttpSource {
            agent,
            base_url: base_url.trim_end_matches('/').to_string(),
            head: None,
        }
    }

    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        max_bytes: u64,
    ) -> Result<T, SourceError> {
        let url = format!("{}{}", self.base_url, path);
        let response = self.agent.get(&url).call().map_err(|e| SourceError::Http {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        // Read one byte past the bound so an oversize body fails to parse
        // rather than being silently cut to a valid prefix.
        let body = response.into_reader().take(max_bytes + 1);
        serde_json::from_reader(body).map_err(|e| SourceError::Response {
            url,
            reason: e.to_string(),
        })
    }
}

impl BlockSource for HttpSource {
    fn open(&mut self) -> Result<SourceInfo, SourceError> {
        let status: StatusResponse = self.get_json("/v1/status", MAX_STATUS_BYTES)?;
        self.head = Some(status.height);
        Ok(SourceInfo {
            chain_id: status.chain_id,
            genesis_hash: status.genesis_hash,
            head: ChainHead {
                height: status.height,
                hash: status.head_hash,
            },
        })
    }

    fn fetch(&mut self, from: u64, max: usize) -> Result<Vec<Vec<u8>>, SourceError> {
        let head = self.head.ok_or(SourceError::NotOpened)?;
        if from > head {
            return Ok(Vec::new());
        }
        // Never past the head we promised to audit, even if the node moved on.
        let remaining = usize::try_from(head - from + 1).unwrap_or(usize::MAX);
        let limit = max.min(MAX_PAGE_BLOCKS).min(remaining).max(1);
        let path = format!("/v1/blocks?from={from}&limit={limit}");
        let page: BlocksResponse = self.get_json(&path, max_block_page_bytes(limit))?;
        if page.blocks.len() > limit {
            return Err(SourceError::TooMany {
                asked: limit,
                got: page.blocks.len(),
            });
        }
        if page.blocks.is_empty() {
            return Err(SourceError::Ended { height: from, head });
        }
        page.blocks
            .iter()
            .map(|h| {
                hex::decode(h).map_err(|e| SourceError::Response {
                    url: format!("{}{}", self.base_url, path),
                    reason: format!("block hex: {e}"),
                })
            })
            .collect()
    }
}

/// An export file written by `keyreg-node export`.
pub struct FileSource<R: Read + Send> {
    reader: Option<R>,
    export: Option<ExportReader<R>>,
}

impl FileSource<BufReader<File>> {
    pub fn open_path(path: &Path) -> Result<Self, SourceError> {
        let file = File::open(path).map_err(|source| SourceError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(FileSource::new(BufReader::new(file)))
    }
}

impl<R: Read + Send> FileSource<R> {
    pub fn new(reader: R) -> Self {
        FileSource {
            reader: Some(reader),
            export: None,
        }
    }
}

impl<R: Read + Send> BlockSource for FileSource<R> {
    fn open(&mut self) -> Result<SourceInfo, SourceError> {
        let reader = self.reader.take().ok_or(SourceError::NotOpened)?;
        let export = ExportReader::open(reader)?;
        let header = export.header().clone();
        self.export = Some(export);
        Ok(SourceInfo {
            chain_id: header.chain_id,
            genesis_hash: header.genesis_hash,
            head: ChainHead {
                height: header.head_height,
                hash: header.head_hash,
            },
        })
    }

    fn fetch(&mut self, from: u64, max: usize) -> Result<Vec<Vec<u8>>, SourceError> {
        let export = self.export.as_mut().ok_or(SourceError::NotOpened)?;
        export.skip_to(from)?;
        let mut blocks = Vec::new();
        while blocks.len() < max {
            // Past the head this reads and verifies the end marker.
            match export.next_block_bytes()? {
                Some(bytes) => blocks.push(bytes),
                None => break,
            }
        }
        Ok(blocks)
    }
}

/// Blocks held in memory (tests, the bench, and a node auditing its own
/// store). `blocks[i]` is height `i + 1`; tests may alter the bytes.
pub struct MemSource {
    pub info: SourceInfo,
    pub blocks: Vec<Vec<u8>>,
}

impl MemSource {
    /// Serves `blocks` (heights 1..=n) of the chain of `genesis`, reporting
    /// the last one as the head.
    pub fn new(genesis: &Genesis, blocks: &[CommittedBlock]) -> Result<Self, SourceError> {
        let head = match blocks.last() {
            Some(last) => ChainHead {
                height: last.block.header.height,
                hash: last.block.hash(),
            },
            None => ChainHead {
                height: 0,
                hash: genesis.initial_state()?.header.hash(),
            },
        };
        Ok(MemSource {
            info: SourceInfo {
                chain_id: genesis.chain_id.clone(),
                genesis_hash: genesis.hash(),
                head,
            },
            blocks: blocks.iter().map(Canonical::to_bytes).collect(),
        })
    }
}

impl BlockSource for MemSource {
    fn open(&mut self) -> Result<SourceInfo, SourceError> {
        Ok(self.info.clone())
    }

    fn fetch(&mut self, from: u64, max: usize) -> Result<Vec<Vec<u8>>, SourceError> {
        let start = usize::try_from(from.saturating_sub(1)).unwrap_or(usize::MAX);
        let head = usize::try_from(self.info.head.height).unwrap_or(usize::MAX);
        let end = start.saturating_add(max).min(head).min(self.blocks.len());
        if start >= head {
            return Ok(Vec::new());
        }
        if start >= end {
            return Err(SourceError::Ended {
                height: from,
                head: self.info.head.height,
            });
        }
        self.blocks
            .get(start..end)
            .map(<[Vec<u8>]>::to_vec)
            .ok_or(SourceError::Ended {
                height: from,
                head: self.info.head.height,
            })
    }
}
