//! A thin, bounded HTTP client for one node's API (see `docs/api.md`).
//!
//! Nothing here is trusted: binary objects are decoded from their canonical
//! hex, and the light client verifies them before use. Every request has a
//! timeout and every response body a size limit.

use std::io::Read;
use std::time::Duration;

use keyreg_consensus::codec::{Canonical, CodecError};
use keyreg_consensus::crypto::Hash;
use keyreg_consensus::validators::ValidatorSet;
use keyreg_registry::block::CommittedBlock;
use keyreg_registry::export::MAX_EXPORT_RECORD_BYTES;
use keyreg_registry::lookup::DeviceProof;
use keyreg_registry::names::DeviceName;
use keyreg_registry::tx::Transaction;
use keyreg_registry::wire::max_block_page_bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Limit on responses that carry one proof, status, epoch or block (a
/// committed block in hex is at most twice `MAX_EXPORT_RECORD_BYTES`).
const MAX_SMALL_RESPONSE: u64 = 8 * 1024 * 1024;
const _: () = assert!(2 * MAX_EXPORT_RECORD_BYTES as u64 + 4096 <= MAX_SMALL_RESPONSE);
/// Most blocks one page may hold (the API's cap).
pub use keyreg_registry::wire::MAX_BLOCKS_PER_PAGE;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NodeError {
    #[error("unreachable: {0}")]
    Transport(String),
    #[error("HTTP {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("answer larger than {0} bytes")]
    TooLarge(u64),
    /// One transaction of a batch was refused (the batch itself was served).
    #[error("transaction refused: {code}: {message}")]
    Refused { code: String, message: String },
}

impl NodeError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, NodeError::Api { status: 404, .. })
    }

    /// The node is overloaded (503, or a batch's transaction refused with
    /// `busy`: its mempool is full): the same submission may succeed later.
    pub fn is_busy(&self) -> bool {
        match self {
            NodeError::Api { status: 503, .. } => true,
            NodeError::Refused { code, .. } => code == "busy",
            _ => false,
        }
    }
}

fn decode_hex<T: Canonical>(what: &str, hex_str: &str) -> Result<T, NodeError> {
    let bytes = hex::decode(hex_str).map_err(|e| NodeError::Malformed(format!("{what}: {e}")))?;
    T::from_bytes(&bytes).map_err(|e: CodecError| NodeError::Malformed(format!("{what}: {e}")))
}

/// `GET /v1/status`, as reported (unverified).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub chain_id: String,
    pub genesis_hash: String,
    pub height: u64,
    pub head_hash: String,
    pub state_root: String,
    pub epoch: u64,
    pub validator_set: String,
    pub peers: u32,
    pub syncing: bool,
    pub is_validator: bool,
    pub mempool: u32,
}

/// `GET /v1/epochs/{e}`: a validator set and the block that handed over to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochAnswer {
    pub epoch: u64,
    pub validator_set: ValidatorSet,
    /// The last block of epoch `epoch - 1`; `None` for epoch 0.
    pub handover: Option<CommittedBlock>,
}

/// `GET /v1/transactions/{hash}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxStatus {
    pub hash: String,
    pub status: String,
    #[serde(default)]
    pub height: Option<u64>,
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default)]
    pub error: Option<String>,
}

/// `GET /v1/blocks?from=H&limit=N`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockPage {
    pub blocks: Vec<CommittedBlock>,
    pub next: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

#[derive(Deserialize)]
struct DeviceAnswer {
    proof: String,
}

#[derive(Deserialize)]
struct EpochJson {
    epoch: u64,
    validator_set: String,
    handover: Option<String>,
}

#[derive(Deserialize)]
struct BlockJson {
    block: String,
}

#[derive(Deserialize)]
struct BlockPageJson {
    blocks: Vec<String>,
    next: Option<u64>,
}

#[derive(Serialize)]
struct SubmitBody {
    tx: String,
}

#[derive(Deserialize)]
struct SubmitAnswer {
    hash: String,
}

#[derive(Serialize)]
struct SubmitBatchBody<'a> {
    txs: &'a [String],
}

#[derive(Deserialize)]
struct SubmitBatchAnswer {
    results: Vec<BatchVerdict>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BatchVerdict {
    Pending(SubmitAnswer),
    Refused(ErrorBody),
}

/// Most transactions per `POST /v1/transactions/batch` (the API's cap).
pub use keyreg_registry::wire::MAX_SUBMIT_BATCH;
/// Most hex characters of transactions per batch request, so a request
/// stays under the API's 1 MiB body limit.
const MAX_SUBMIT_BATCH_HEX: usize = 1_000_000;

/// One node's API.
#[derive(Clone, Debug)]
pub struct NodeClient {
    base: String,
    agent: ureq::Agent,
}

impl NodeClient {
    /// `base_url` like `http://10.0.0.1:8080`; `timeout` bounds each request.
    pub fn new(base_url: &str, timeout: Duration) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout(timeout)
            .build();
        NodeClient {
            base: base_url.trim_end_matches('/').to_string(),
            agent,
        }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    pub fn status(&self) -> Result<NodeStatus, NodeError> {
        parse_status(&self.get("/v1/status", MAX_SMALL_RESPONSE)?)
    }

    /// The node's proof for `name` (membership, or non-membership when the
    /// name is unknown), decoded but not verified.
    pub fn device_proof(&self, name: &DeviceName) -> Result<DeviceProof, NodeError> {
        parse_device_answer(&self.get(&format!("/v1/devices/{name}"), MAX_SMALL_RESPONSE)?)
    }

    pub fn epoch(&self, epoch: u64) -> Result<EpochAnswer, NodeError> {
        parse_epoch_answer(&self.get(&format!("/v1/epochs/{epoch}"), MAX_SMALL_RESPONSE)?)
    }

    pub fn block(&self, height: u64) -> Result<CommittedBlock, NodeError> {
        parse_block_answer(&self.get(&format!("/v1/blocks/{height}"), MAX_SMALL_RESPONSE)?)
    }

    pub fn blocks(&self, from: u64, limit: u32) -> Result<BlockPage, NodeError> {
        let limit = limit.clamp(1, MAX_BLOCKS_PER_PAGE);
        let body = self.get(
            &format!("/v1/blocks?from={from}&limit={limit}"),
            max_block_page_bytes(limit as usize),
        )?;
        parse_block_page(&body, limit)
    }

    /// Submits a transaction. `Ok` also when the node already knew it (409):
    /// either way it is in the node's pipeline. Checks that the node names
    /// the hash we computed.
    pub fn submit(&self, tx: &Transaction) -> Result<Hash, NodeError> {
        let bytes = tx.to_bytes();
        let expected = Transaction::id_of_canonical(&bytes);
        let body = SubmitBody {
            tx: hex::encode(&bytes),
        };
        let request = self.agent.post(&format!("{}/v1/transactions", self.base));
        match request.send_json(&body) {
            Ok(response) => {
                parse_submit_answer(&read_body(response, MAX_SMALL_RESPONSE)?, &expected)
            }
            Err(ureq::Error::Status(409, response)) => {
                let err = api_error(409, response);
                match &err {
                    NodeError::Api { code, .. } if code == "already_known" => Ok(expected),
                    _ => Err(err),
                }
            }
            Err(e) => Err(map_ureq(e)),
        }
    }

    /// Submits many transactions, in requests of up to [`MAX_SUBMIT_BATCH`]
    /// (and under the body limit): one verdict per transaction, in order,
    /// `Ok` as for [`NodeClient::submit`] (pending, or already known).
    /// `Err` when a request as a whole failed; the verdicts of the requests
    /// before it are lost with it, and resubmitting them is harmless.
    pub fn submit_batch<'t>(
        &self,
        txs: impl IntoIterator<Item = &'t Transaction>,
    ) -> Result<Vec<Result<Hash, NodeError>>, NodeError> {
        let mut verdicts = Vec::new();
        let mut hexes = Vec::new();
        let mut expected = Vec::new();
        let mut hex_len = 0;
        for tx in txs {
            let bytes = tx.to_bytes();
            let hex = hex::encode(&bytes);
            if !hexes.is_empty()
                && (hexes.len() == MAX_SUBMIT_BATCH || hex_len + hex.len() > MAX_SUBMIT_BATCH_HEX)
            {
                verdicts.extend(self.post_batch(&hexes, &expected)?);
                hexes.clear();
                expected.clear();
                hex_len = 0;
            }
            hex_len += hex.len();
            hexes.push(hex);
            expected.push(Transaction::id_of_canonical(&bytes));
        }
        if !hexes.is_empty() {
            verdicts.extend(self.post_batch(&hexes, &expected)?);
        }
        Ok(verdicts)
    }

    fn post_batch(
        &self,
        hexes: &[String],
        expected: &[Hash],
    ) -> Result<Vec<Result<Hash, NodeError>>, NodeError> {
        let response = self
            .agent
            .post(&format!("{}/v1/transactions/batch", self.base))
            .send_json(&SubmitBatchBody { txs: hexes })
            .map_err(map_ureq)?;
        parse_submit_batch_answer(&read_body(response, MAX_SMALL_RESPONSE)?, expected)
    }

    /// A transaction's status; `None` when the node does not know it.
    pub fn tx_status(&self, hash: &Hash) -> Result<Option<TxStatus>, NodeError> {
        match self.get(&format!("/v1/transactions/{hash}"), MAX_SMALL_RESPONSE) {
            Ok(body) => parse_tx_status(&body).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The body of a successful GET, read up to `limit` bytes.
    fn get(&self, path: &str, limit: u64) -> Result<Vec<u8>, NodeError> {
        let response = self
            .agent
            .get(&format!("{}{path}", self.base))
            .call()
            .map_err(map_ureq)?;
        read_body(response, limit)
    }
}

// The answers' decoders work on bodies already read (and bounded), apart
// from the HTTP transport, so that they can be tested and fuzzed alone.

/// Decodes a `GET /v1/status` body.
pub fn parse_status(body: &[u8]) -> Result<NodeStatus, NodeError> {
    parse_json(body)
}

/// Decodes a `GET /v1/devices/{org}/{name}` body into its (unverified) proof.
pub fn parse_device_answer(body: &[u8]) -> Result<DeviceProof, NodeError> {
    let answer: DeviceAnswer = parse_json(body)?;
    decode_hex("device proof", &answer.proof)
}

/// Decodes a `GET /v1/epochs/{e}` body (unverified).
pub fn parse_epoch_answer(body: &[u8]) -> Result<EpochAnswer, NodeError> {
    let answer: EpochJson = parse_json(body)?;
    Ok(EpochAnswer {
        epoch: answer.epoch,
        validator_set: decode_hex("validator set", &answer.validator_set)?,
        handover: answer
            .handover
            .map(|h| decode_hex("handover block", &h))
            .transpose()?,
    })
}

/// Decodes a `GET /v1/blocks/{height}` body (unverified).
pub fn parse_block_answer(body: &[u8]) -> Result<CommittedBlock, NodeError> {
    let answer: BlockJson = parse_json(body)?;
    decode_hex("block", &answer.block)
}

/// Decodes a `GET /v1/blocks?from=H&limit=N` body, refusing more than `limit`
/// blocks.
pub fn parse_block_page(body: &[u8], limit: u32) -> Result<BlockPage, NodeError> {
    let page: BlockPageJson = parse_json(body)?;
    if page.blocks.len() > limit as usize {
        return Err(NodeError::Malformed(format!(
            "{} blocks in a page of at most {limit}",
            page.blocks.len()
        )));
    }
    Ok(BlockPage {
        blocks: page
            .blocks
            .iter()
            .map(|b| decode_hex("block", b))
            .collect::<Result<_, _>>()?,
        next: page.next,
    })
}

/// Decodes a `POST /v1/transactions` answer and checks that it names
/// `expected`, the hash we computed.
pub fn parse_submit_answer(body: &[u8], expected: &Hash) -> Result<Hash, NodeError> {
    let answer: SubmitAnswer = parse_json(body)?;
    named_hash(&answer, expected)
}

/// The hash a submission answer names, which must be the one we computed.
fn named_hash(answer: &SubmitAnswer, expected: &Hash) -> Result<Hash, NodeError> {
    let hash = Hash::from_hex(&answer.hash)
        .map_err(|e| NodeError::Malformed(format!("transaction hash: {e}")))?;
    if hash != *expected {
        return Err(NodeError::Malformed(format!(
            "node names transaction {hash}, its hash is {expected}"
        )));
    }
    Ok(hash)
}

/// Decodes a `POST /v1/transactions/batch` body for the transactions
/// `expected` (their hashes, in submission order): one verdict each, the
/// node must name each hash it accepted; `already_known` counts as
/// accepted.
pub fn parse_submit_batch_answer(
    body: &[u8],
    expected: &[Hash],
) -> Result<Vec<Result<Hash, NodeError>>, NodeError> {
    let answer: SubmitBatchAnswer = parse_json(body)?;
    if answer.results.len() != expected.len() {
        return Err(NodeError::Malformed(format!(
            "{} verdicts for {} transactions",
            answer.results.len(),
            expected.len()
        )));
    }
    answer
        .results
        .into_iter()
        .zip(expected)
        .map(|(verdict, expected)| match verdict {
            BatchVerdict::Pending(answer) => named_hash(&answer, expected).map(Ok),
            BatchVerdict::Refused(body) if body.error.code == "already_known" => Ok(Ok(*expected)),
            BatchVerdict::Refused(body) => Ok(Err(NodeError::Refused {
                code: printable(&body.error.code),
                message: printable(&body.error.message),
            })),
        })
        .collect()
}

/// Decodes a `GET /v1/transactions/{hash}` body.
pub fn parse_tx_status(body: &[u8]) -> Result<TxStatus, NodeError> {
    parse_json(body)
}

/// The error a 4xx/5xx answer with `body` stands for (printable, bounded).
pub fn parse_api_error(status: u16, body: &[u8]) -> NodeError {
    match parse_json::<ErrorBody>(body) {
        Ok(body) => NodeError::Api {
            status,
            code: printable(&body.error.code),
            message: printable(&body.error.message),
        },
        Err(_) => NodeError::Api {
            status,
            code: "unknown".into(),
            message: "no error body".into(),
        },
    }
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, NodeError> {
    serde_json::from_slice(body).map_err(|e| NodeError::Malformed(e.to_string()))
}

fn read_body(response: ureq::Response, limit: u64) -> Result<Vec<u8>, NodeError> {
    let mut body = Vec::new();
    response
        .into_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| NodeError::Transport(e.to_string()))?;
    if body.len() as u64 > limit {
        return Err(NodeError::TooLarge(limit));
    }
    Ok(body)
}

fn api_error(status: u16, response: ureq::Response) -> NodeError {
    match read_body(response, MAX_SMALL_RESPONSE) {
        Ok(body) => parse_api_error(status, &body),
        Err(_) => parse_api_error(status, &[]),
    }
}

fn map_ureq(e: ureq::Error) -> NodeError {
    match e {
        ureq::Error::Status(status, response) => api_error(status, response),
        ureq::Error::Transport(t) => NodeError::Transport(t.to_string()),
    }
}

/// A node's text made safe to print on one line: bounded, no control characters.
fn printable(s: &str) -> String {
    s.chars()
        .take(300)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyreg_consensus::crypto::{hash, Domain};

    fn hashes(n: u8) -> Vec<Hash> {
        (0..n).map(|i| hash(Domain::Transaction, &[i])).collect()
    }

    #[test]
    fn batch_answers_give_one_verdict_per_transaction() {
        let expected = hashes(3);
        let body = serde_json::json!({"results": [
            {"hash": expected[0].to_hex(), "status": "pending"},
            {"error": {"code": "already_known", "message": "known"}},
            {"error": {"code": "bad_signature", "message": "bad\nsig"}},
        ]})
        .to_string();
        let verdicts = parse_submit_batch_answer(body.as_bytes(), &expected).unwrap();
        assert_eq!(verdicts[0], Ok(expected[0]));
        assert_eq!(
            verdicts[1],
            Ok(expected[1]),
            "already known counts as accepted"
        );
        assert_eq!(
            verdicts[2],
            Err(NodeError::Refused {
                code: "bad_signature".into(),
                message: "bad?sig".into()
            })
        );
        assert!(!verdicts[2].as_ref().unwrap_err().is_busy());
    }

    #[test]
    fn busy_answers_are_told_apart() {
        let refused = |code: &str| NodeError::Refused {
            code: code.into(),
            message: String::new(),
        };
        let api = |status: u16| NodeError::Api {
            status,
            code: "busy".into(),
            message: String::new(),
        };
        assert!(refused("busy").is_busy());
        assert!(api(503).is_busy());
        assert!(!refused("bad_signature").is_busy());
        assert!(!api(429).is_busy());
        assert!(!NodeError::Transport("refused".into()).is_busy());
    }

    #[test]
    fn lying_batch_answers_are_malformed() {
        let expected = hashes(2);
        let pending = |h: &Hash| serde_json::json!({"hash": h.to_hex(), "status": "pending"});
        let too_few = serde_json::json!({"results": [pending(&expected[0])]}).to_string();
        let swapped =
            serde_json::json!({"results": [pending(&expected[1]), pending(&expected[0])]})
                .to_string();
        for body in [too_few.as_str(), &swapped, "{\"results\": 3}", "[]"] {
            assert!(
                matches!(
                    parse_submit_batch_answer(body.as_bytes(), &expected),
                    Err(NodeError::Malformed(_))
                ),
                "{body}"
            );
        }
    }
}
