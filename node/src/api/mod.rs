//! The HTTP API, as `docs/api.md` specifies.
//!
//! Binary objects travel as lowercase hex of their canonical encoding;
//! errors are `{"error": {"code", "message"}}`; request bodies are limited to
//! 1 MiB. Ledger reads run on the blocking pool, never on the async workers.

mod error;
mod limits;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::Hash;
pub use keyreg_registry::wire::MAX_BLOCKS_PER_PAGE;
use keyreg_registry::wire::{PageQuery, SubmitBatchBody, SubmitBody, MAX_PAGE_HEX_BYTES};
use keyreg_registry::{DeviceName, LedgerError, TxError};
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub use error::ApiError;

use crate::config::ApiLimits;
use crate::epochs;
use crate::metrics::Rejection;
use crate::node::{Shared, SubmitError};

/// Largest request body accepted (the contract's 1 MiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;

type ApiResult = Result<(StatusCode, Json<Value>), ApiError>;

fn ok(body: Value) -> ApiResult {
    Ok((StatusCode::OK, Json(body)))
}

/// The API's routes behind its limits (see [`limits`]).
pub fn router(shared: Arc<Shared>, limits: &ApiLimits) -> Router {
    let limiter = Arc::new(limits::Limiter::new(limits, shared.metrics.clone()));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/transactions", post(submit_transaction))
        .route("/v1/transactions/batch", post(submit_transactions))
        .route("/v1/transactions/{hash}", get(transaction_status))
        .route("/v1/devices/{org}/{name}", get(device))
        .route("/v1/blocks", get(blocks_page))
        .route("/v1/blocks/{height}", get(block))
        .route("/v1/epochs/{epoch}", get(epoch))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(limiter, limits::limit))
        .with_state(shared)
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Runs a ledger read on the blocking pool.
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Shared) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || f(&shared))
        .await
        .map_err(ApiError::internal)?
}

fn ledger_error(e: LedgerError) -> ApiError {
    match e {
        LedgerError::NoCertifiedBlock => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_certified_block",
            "no block is committed yet; proofs start at height 1",
        ),
        LedgerError::Pruned { .. } => ApiError::new(StatusCode::GONE, "pruned", e),
        e => ApiError::internal(e),
    }
}

/// `TxError::BadSignature { .. }` -> `"bad_signature"`: the variant's name
/// in snake case, as the contract asks ("code names the TxError").
fn tx_error_code(e: &TxError) -> String {
    let debug = format!("{e:?}");
    let name = debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or("invalid");
    let mut code = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                code.push('_');
            }
            code.push(c.to_ascii_lowercase());
        } else {
            code.push(c);
        }
    }
    code
}

/// The API error for a refused submission; a full mempool or admission
/// queue is counted in `keyreg_api_rejected_total`.
fn refused(shared: &Shared, e: SubmitError) -> ApiError {
    match &e {
        SubmitError::TooLarge(_) => ApiError::bad_request("too_large", &e),
        SubmitError::Malformed(_) => ApiError::bad_request("malformed", &e),
        SubmitError::Invalid(tx_error) => ApiError::bad_request(tx_error_code(tx_error), &e),
        SubmitError::AlreadyKnown => ApiError::new(StatusCode::CONFLICT, "already_known", &e),
        SubmitError::Busy => {
            shared.metrics.count_rejection(Rejection::MempoolFull);
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", &e)
                .with_retry_after(std::time::Duration::from_secs(1))
        }
        SubmitError::Internal(_) => ApiError::internal(&e),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared
        .metrics
        .peers
        .set(shared.network.connected_peers() as i64);
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

async fn status(State(shared): State<Arc<Shared>>) -> ApiResult {
    let body = blocking(&shared, |shared| {
        let ledger = shared.read_ledger();
        let head = ledger.head();
        let set = ledger.validator_set();
        Ok(json!({
            "chain_id": shared.chain_id,
            "genesis_hash": shared.genesis_hash.to_hex(),
            "height": head.height,
            "head_hash": head.hash().to_hex(),
            "state_root": head.state_root.to_hex(),
            "epoch": set.epoch,
            "validator_set": hex::encode(set.to_bytes()),
            "peers": shared.network.connected_peers() as u32,
            "syncing": shared.is_syncing(),
            "is_validator": set.index_of(&shared.public_key).is_some(),
            "mempool": shared.mempool_len() as u32,
        }))
    })
    .await?;
    ok(body)
}

async fn submit_transaction(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<SubmitBody>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body?;
    let bytes = body
        .tx_bytes()
        .map_err(|e| ApiError::bad_request("bad_hex", format!("tx is not hex: {e}")))?;
    let hash = shared
        .submit(bytes)
        .await
        .map_err(|e| refused(&shared, e))?;
    Ok((StatusCode::ACCEPTED, Json(pending(hash))))
}

/// An admitted submission's answer.
fn pending(hash: Hash) -> Value {
    json!({"hash": hash.to_hex(), "status": "pending"})
}

/// `POST /v1/transactions/batch`: 200 with one verdict per transaction, in
/// order; the request as a whole fails only when its body is malformed or
/// the admission queue is full (503 `busy`, nothing was admitted).
async fn submit_transactions(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<SubmitBatchBody>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body?;
    let txs = body
        .txs_bytes()
        .map_err(|e| ApiError::bad_request("bad_batch", e))?;
    let verdicts = shared
        .submit_many(txs)
        .await
        .map_err(|e| refused(&shared, e))?;
    let results: Vec<Value> = verdicts
        .into_iter()
        .map(|verdict| match verdict {
            Ok(hash) => pending(hash),
            Err(e) => refused(&shared, e).body(),
        })
        .collect();
    ok(json!({ "results": results }))
}

async fn transaction_status(
    State(shared): State<Arc<Shared>>,
    hash: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(hash) = hash?;
    let hash = Hash::from_hex(&hash).map_err(|e| ApiError::bad_request("bad_hash", e))?;
    let body = blocking(&shared, move |shared| {
        let location = shared
            .read_ledger()
            .tx_location(&hash)
            .map_err(ledger_error)?;
        Ok(match location {
            Some(loc) => match loc.result {
                Ok(()) => json!({
                    "hash": hash.to_hex(), "status": "committed",
                    "height": loc.height, "index": loc.index,
                }),
                Err(e) => json!({
                    "hash": hash.to_hex(), "status": "rejected",
                    "height": loc.height, "index": loc.index, "error": e.to_string(),
                }),
            },
            None if shared.is_pending(&hash) => json!({"hash": hash.to_hex(), "status": "pending"}),
            None => return Err(ApiError::not_found(format!("unknown transaction {hash}"))),
        })
    })
    .await?;
    ok(body)
}

async fn device(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult {
    let Path((org, local)) = path?;
    let name = DeviceName::new(&format!("{org}/{local}"))
        .map_err(|e| ApiError::bad_request("bad_name", e))?;
    let body = blocking(&shared, move |shared| {
        let proof = shared
            .read_ledger()
            .device_proof(&name)
            .map_err(ledger_error)?;
        let record = serde_json::to_value(&proof.record).map_err(ApiError::internal)?;
        Ok(json!({
            "proof": hex::encode(proof.to_bytes()),
            "record": record,
            "height": proof.header.height,
            "state_root": proof.header.state_root.to_hex(),
        }))
    })
    .await?;
    ok(body)
}

async fn block(
    State(shared): State<Arc<Shared>>,
    height: Result<Path<u64>, PathRejection>,
) -> ApiResult {
    let Path(height) = height?;
    let body = blocking(&shared, move |shared| {
        let committed = shared
            .read_ledger()
            .committed_block(height)
            .map_err(ledger_error)?
            .ok_or_else(|| ApiError::not_found(format!("no committed block at height {height}")))?;
        let header = serde_json::to_value(&committed.block.header).map_err(ApiError::internal)?;
        Ok(json!({"block": hex::encode(committed.to_bytes()), "header": header}))
    })
    .await?;
    ok(body)
}

async fn blocks_page(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult {
    let Query(query) = query?;
    let from = query.from.unwrap_or(1).max(1);
    let limit = query.limit.unwrap_or(MAX_BLOCKS_PER_PAGE);
    if limit == 0 || limit > MAX_BLOCKS_PER_PAGE {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("limit must be 1..={MAX_BLOCKS_PER_PAGE}"),
        ));
    }
    let body = blocking(&shared, move |shared| {
        let ledger = shared.read_ledger();
        let head = ledger.height();
        let mut blocks = Vec::new();
        let mut hex_bytes = 0usize;
        let mut next = from;
        while next <= head && blocks.len() < limit as usize && hex_bytes < MAX_PAGE_HEX_BYTES {
            let committed = ledger
                .committed_block(next)
                .map_err(ledger_error)?
                .ok_or_else(|| {
                    ApiError::internal(format!("block {next} missing below the head"))
                })?;
            let encoded = hex::encode(committed.to_bytes());
            hex_bytes += encoded.len();
            blocks.push(encoded);
            next += 1;
        }
        let next = (next <= head).then_some(next);
        Ok(json!({"blocks": blocks, "next": next}))
    })
    .await?;
    ok(body)
}

async fn epoch(
    State(shared): State<Arc<Shared>>,
    epoch: Result<Path<u64>, PathRejection>,
) -> ApiResult {
    let Path(epoch) = epoch?;
    let body = blocking(&shared, move |shared| {
        let (set, handover) = epochs::lookup(&shared.read_ledger(), epoch)
            .map_err(ledger_error)?
            .ok_or_else(|| ApiError::not_found(format!("unknown epoch {epoch}")))?;
        Ok(json!({
            "epoch": epoch,
            "validator_set": hex::encode(set.to_bytes()),
            "handover": handover.map(|b| hex::encode(b.to_bytes())),
        }))
    })
    .await?;
    ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_error_codes_are_snake_case_variant_names() {
        assert_eq!(tx_error_code(&TxError::Replay), "replay");
        assert_eq!(tx_error_code(&TxError::Malformed("x".into())), "malformed");
        assert_eq!(
            tx_error_code(&TxError::WrongChain {
                expected: "a".into(),
                found: "b".into()
            }),
            "wrong_chain"
        );
    }
}
