//! Block sync: the request-response protocol that lets a node behind its
//! peers (restarted, partitioned, or an observer) fetch committed blocks.
//!
//! The server side answers from the ledger. The client side only fetches:
//! every block goes to the consensus driver, which verifies the certificate
//! against the validator set of the block's epoch (following handovers, since
//! blocks are applied in order) and re-executes the block before storing it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use keyreg_consensus::codec::{encoded_len, Canonical, CodecError};
use keyreg_consensus::Hash;
use keyreg_registry::block::MAX_BLOCK_TXS;
pub use keyreg_registry::wire::{SyncQuery, SyncReply, SyncRequest, SyncResponse};
use keyreg_registry::Transaction;
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot, watch};

use crate::network::{NetworkHandle, MAX_RESPONSE_BYTES};
use crate::node::{DriverInput, Shared};

/// Most blocks in one response (also bounded by bytes).
pub const MAX_BLOCKS_PER_RESPONSE: u32 = 64;
/// How often the client compares heights with its peers.
const SYNC_INTERVAL: Duration = Duration::from_millis(1000);
/// Peers asked for their height per round.
const PEERS_PER_ROUND: usize = 4;

fn response(reply: SyncReply) -> Vec<u8> {
    SyncResponse {
        version: SyncResponse::VERSION,
        reply,
    }
    .to_bytes()
}

/// Answers one request from the ledger. The request arrived size-checked
/// (the network codec bounds it); decoding is canonical and bounded.
pub fn serve(shared: &Shared, request: &[u8]) -> Vec<u8> {
    let query = match SyncRequest::from_bytes(request) {
        Ok(r) => r.query,
        Err(e) => return response(SyncReply::Error(format!("bad request: {e}"))),
    };
    match query {
        SyncQuery::Status => {
            let ledger = shared.read_ledger();
            response(SyncReply::Status {
                height: ledger.height(),
                head_hash: ledger.head().hash(),
            })
        }
        SyncQuery::Transactions { hashes } => response(serve_transactions(shared, &hashes)),
        SyncQuery::Blocks { from, limit } => {
            let ledger = shared.read_ledger();
            let count = u64::from(limit.clamp(1, MAX_BLOCKS_PER_RESPONSE));
            let last = ledger.height().min(from.saturating_add(count - 1));
            let mut blocks = Vec::new();
            // Room for the response envelope and the length prefixes.
            let mut budget = MAX_RESPONSE_BYTES - 1024;
            for height in from.max(1)..=last {
                match ledger.committed_block(height) {
                    Ok(Some(block)) => {
                        let size = encoded_len(&block).unwrap_or(usize::MAX).saturating_add(8);
                        if size > budget {
                            break;
                        }
                        budget -= size;
                        blocks.push(block);
                    }
                    Ok(None) => break,
                    Err(e) => return response(SyncReply::Error(e.to_string())),
                }
            }
            response(SyncReply::Blocks(blocks))
        }
    }
}

/// The asked-for pending transactions this node holds, within the response
/// size limit.
fn serve_transactions(shared: &Shared, hashes: &[Hash]) -> SyncReply {
    if hashes.len() > MAX_BLOCK_TXS {
        return SyncReply::Error(format!(
            "asked for {} transactions (at most {MAX_BLOCK_TXS})",
            hashes.len()
        ));
    }
    // Room for the response envelope and the length prefixes.
    let mut budget = MAX_RESPONSE_BYTES - 1024;
    let mut txs = Vec::new();
    for tx in shared.pending_txs(hashes).into_iter().flatten() {
        let size = encoded_len(&tx).unwrap_or(usize::MAX).saturating_add(8);
        if size > budget {
            break;
        }
        budget -= size;
        txs.push(tx);
    }
    SyncReply::Transactions(txs)
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error("undecodable response: {0}")]
    Codec(#[from] CodecError),
    #[error("peer answered with an error: {0}")]
    Remote(String),
    #[error("unexpected answer")]
    Unexpected,
}

async fn ask(
    network: &NetworkHandle,
    peer: PeerId,
    query: SyncQuery,
) -> Result<SyncReply, FetchError> {
    let request = SyncRequest {
        version: SyncRequest::VERSION,
        query,
    };
    let bytes = network.request(peer, request.to_bytes()).await?;
    match SyncResponse::from_bytes(&bytes)?.reply {
        SyncReply::Error(e) => Err(FetchError::Remote(e)),
        reply => Ok(reply),
    }
}

/// How long one peer may take to answer a transaction fetch: a proposal
/// waits for it, and the round's timeout is not much longer.
const TX_FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks `peers`, in order, for the pending transactions `hashes` until
/// every one is found. Returns those found, each checked to hash as asked.
pub async fn fetch_transactions(
    network: &NetworkHandle,
    peers: &[PeerId],
    hashes: Vec<Hash>,
) -> Vec<(Hash, Transaction)> {
    let mut wanted: HashSet<Hash> = hashes.into_iter().collect();
    let mut found = Vec::new();
    for peer in peers {
        if wanted.is_empty() {
            break;
        }
        let query = SyncQuery::Transactions {
            hashes: wanted.iter().copied().collect(),
        };
        match tokio::time::timeout(TX_FETCH_TIMEOUT, ask(network, *peer, query)).await {
            Ok(Ok(SyncReply::Transactions(txs))) => {
                for tx in txs {
                    let hash = tx.hash();
                    if wanted.remove(&hash) {
                        found.push((hash, tx));
                    }
                }
            }
            Ok(Ok(_)) => tracing::debug!(%peer, "unexpected answer to a transaction fetch"),
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "transaction fetch failed"),
            Err(_) => tracing::debug!(%peer, "transaction fetch timed out"),
        }
    }
    found
}

/// The client loop: compares heights with a few peers each round and, when
/// behind, fetches the next blocks from the best peer and hands them to the
/// driver, waiting for the driver to apply them.
pub async fn run(
    shared: Arc<Shared>,
    network: NetworkHandle,
    driver: mpsc::Sender<DriverInput>,
    mut hints: mpsc::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut round = 0usize;
    let mut interval = tokio::time::interval(SYNC_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            Some(_) = hints.recv() => {}
            _ = shutdown.changed() => return,
        }
        // A peer may hold a request unanswered for the whole request
        // timeout; shutting down must not wait for it.
        tokio::select! {
            result = sync_round(&shared, &network, &driver, round) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "sync round failed");
                }
            }
            _ = shutdown.changed() => return,
        }
        round = round.wrapping_add(1);
    }
}

async fn sync_round(
    shared: &Shared,
    network: &NetworkHandle,
    driver: &mpsc::Sender<DriverInput>,
    round: usize,
) -> Result<(), FetchError> {
    let mut peers = network.status().await?.connected;
    peers.sort();
    // Successive rounds ask successive groups of peers, so one group that
    // lags cannot hide a peer that is ahead.
    let skip = round.wrapping_mul(PEERS_PER_ROUND) % peers.len().max(1);
    peers.rotate_left(skip);
    let mut best: Option<(PeerId, u64)> = None;
    for peer in peers.into_iter().take(PEERS_PER_ROUND) {
        match ask(network, peer, SyncQuery::Status).await {
            Ok(SyncReply::Status { height, .. }) => {
                if best.is_none_or(|(_, h)| height > h) {
                    best = Some((peer, height));
                }
            }
            Ok(_) => tracing::debug!(%peer, "unexpected status answer"),
            Err(e) => tracing::debug!(%peer, error = %e, "status request failed"),
        }
    }
    let ours = shared.height();
    let Some((peer, theirs)) = best else {
        shared.set_sync_lag(0);
        return Ok(());
    };
    shared.set_sync_lag(theirs.saturating_sub(ours));
    // Within a block of the best peer, consensus itself keeps up.
    if theirs <= ours + 1 {
        return Ok(());
    }
    let mut next = ours + 1;
    while next <= theirs {
        let SyncReply::Blocks(blocks) = ask(
            network,
            peer,
            SyncQuery::Blocks {
                from: next,
                limit: MAX_BLOCKS_PER_RESPONSE,
            },
        )
        .await?
        else {
            return Err(FetchError::Unexpected);
        };
        if blocks.is_empty() {
            break;
        }
        let (done, applied) = oneshot::channel();
        if driver
            .send(DriverInput::Synced { blocks, done })
            .await
            .is_err()
        {
            return Ok(());
        }
        match applied.await {
            Ok(Ok(height)) if height >= next => next = height + 1,
            Ok(Ok(_)) => break,
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "synced blocks rejected");
                break;
            }
            Err(_) => return Ok(()),
        }
        shared.set_sync_lag(theirs.saturating_sub(next - 1));
    }
    Ok(())
}
