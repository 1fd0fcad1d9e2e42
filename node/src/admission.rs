//! How transactions reach the mempool and the other nodes, in batches.
//!
//! * In: transactions submitted through the API and batches gossiped by
//!   peers queue (bounded) for one admission task. It takes whatever queued
//!   since its last round and admits it to the mempool with one batch
//!   signature verification on the blocking pool: under load that is one
//!   thread hand-off and one batch per round instead of one per request,
//!   and it runs off the task that routes consensus messages, so a burst of
//!   transactions never delays a vote. A full queue answers `busy` to a
//!   submitter and drops a gossiped batch.
//! * Out: admitted submissions queue (bounded) for a publisher that gossips
//!   whatever queued since its last publish as one message. At low load a
//!   batch is one transaction, published at once; under load one message
//!   carries many, which amortises gossipsub's per-message costs (framing,
//!   message ids, duplicate caches, one copy per mesh peer and hop).
//!
//! Dropped gossip never loses an admitted transaction: the origin node keeps
//! it in its mempool and proposes it in its own turn.
//!
//! Wire format of a batch (topic `keyreg/<chain>/tx`): `count: u32 LE`, then
//! `count` times `len: u32 LE` and the transaction's canonical bytes;
//! `1 <= count <= MAX_TXS_PER_BATCH`, `1 <= len <= MAX_TX_BYTES`, and no
//! bytes after the last transaction. It is canonical: one batch, one
//! encoding.

use std::sync::Arc;

use keyreg_consensus::Hash;
use keyreg_registry::tx::MAX_TX_BYTES;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

use crate::network::{NetworkHandle, Topic};
use crate::node::{Shared, SubmitError};

/// Most transactions in one gossiped batch.
pub const MAX_TXS_PER_BATCH: usize = 512;
/// Most payload bytes of one batch the batcher builds: room for a
/// largest transaction, and under the gossip payload limit.
pub const MAX_BATCH_BYTES: usize = 2 * MAX_TX_BYTES;
/// Arrivals waiting for admission, and admitted transactions waiting to be
/// gossiped.
pub const QUEUE: usize = 8192;
/// Arrivals admitted in one round, at most: bounds one batch verification
/// to about `MAX_ARRIVALS_PER_ROUND * MAX_TXS_PER_BATCH` transactions.
const MAX_ARRIVALS_PER_ROUND: usize = 256;

/// A transaction, or a batch of them, waiting for admission.
pub enum Arrival {
    /// Submitted through the API; the verdict goes back on `reply`.
    Submitted {
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<Hash, SubmitError>>,
    },
    /// A batch gossiped by a peer, undecoded.
    Gossiped(Vec<u8>),
}
const _: () = assert!(MAX_BATCH_BYTES <= crate::network::MAX_GOSSIP_PAYLOAD);

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

/// Encodes `txs` (1..=[`MAX_TXS_PER_BATCH`] canonical transactions, each
/// 1..=`MAX_TX_BYTES` long: the batcher only queues admitted ones).
pub fn encode_batch(txs: &[Vec<u8>]) -> Vec<u8> {
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
pub fn decode_batch(payload: &[u8]) -> Result<Vec<&[u8]>, TxBatchError> {
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

/// Publishes the transactions queued on `outbox` in batches until shutdown.
pub async fn publish_batches(
    network: NetworkHandle,
    mut outbox: mpsc::Receiver<Vec<u8>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            tx = outbox.recv() => match tx {
                Some(tx) => tx,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
        let mut bytes = first.len();
        let mut batch = vec![first];
        while batch.len() < MAX_TXS_PER_BATCH {
            // A transaction that would overflow the batch starts the next one.
            match outbox.try_recv() {
                Ok(tx) if bytes + tx.len() <= MAX_BATCH_BYTES => {
                    bytes += tx.len();
                    batch.push(tx);
                }
                Ok(tx) => {
                    publish(&network, &batch).await;
                    bytes = tx.len();
                    batch = vec![tx];
                }
                Err(_) => break,
            }
        }
        publish(&network, &batch).await;
    }
}

async fn publish(network: &NetworkHandle, batch: &[Vec<u8>]) {
    if let Err(e) = network
        .publish(Topic::Transactions, encode_batch(batch))
        .await
    {
        // Alone or not yet connected: the transactions still wait in this
        // node's mempool and go into its next proposal.
        tracing::debug!(error = %e, txs = batch.len(), "transactions not gossiped");
    }
}

/// Admits what queues on `arrivals` to the mempool, round by round, until
/// shutdown.
pub async fn admit_arrivals(
    shared: Arc<Shared>,
    mut arrivals: mpsc::Receiver<Arrival>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            arrival = arrivals.recv() => match arrival {
                Some(arrival) => arrival,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
        let mut round = vec![first];
        while round.len() < MAX_ARRIVALS_PER_ROUND {
            match arrivals.try_recv() {
                Ok(arrival) => round.push(arrival),
                Err(_) => break,
            }
        }
        let shared = shared.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || admit(&shared, round)).await {
            tracing::error!(error = %e, "transaction admission task failed");
        }
    }
}

/// One round: every transaction of `round` checked in one batch, verdicts
/// sent back to submitters, admitted submissions queued for gossip.
fn admit(shared: &Shared, round: Vec<Arrival>) {
    let mut submitted = Vec::new();
    let mut gossiped = Vec::new();
    for arrival in round {
        match arrival {
            Arrival::Submitted { bytes, reply } => submitted.push((bytes, reply)),
            Arrival::Gossiped(payload) => gossiped.push(payload),
        }
    }
    let mut raw: Vec<&[u8]> = submitted
        .iter()
        .map(|(bytes, _)| bytes.as_slice())
        .collect();
    for payload in &gossiped {
        match decode_batch(payload) {
            Ok(txs) => raw.extend(txs),
            Err(e) => tracing::debug!(error = %e, "undecodable transaction batch"),
        }
    }
    let mut verdicts = shared.submit_batch(&raw).into_iter();
    for ((bytes, reply), verdict) in submitted.into_iter().zip(verdicts.by_ref()) {
        if verdict.is_ok() {
            shared.gossip_transaction(bytes);
        }
        // The submitter may have gone (client timeout); the verdict stands.
        let _ = reply.send(verdict);
    }
    for verdict in verdicts {
        if let Err(e) = verdict {
            tracing::trace!(error = %e, "gossiped transaction not admitted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip() {
        let txs = vec![vec![1u8; 3], vec![2u8; 1], vec![3u8; 300]];
        let encoded = encode_batch(&txs);
        let decoded = decode_batch(&encoded).unwrap();
        assert_eq!(decoded, txs.iter().map(Vec::as_slice).collect::<Vec<_>>());
    }

    #[test]
    fn malformed_batches_are_rejected() {
        let good = encode_batch(&[vec![7u8; 10], vec![8u8; 5]]);
        // Every strict prefix is truncated (or, cut between entries, short).
        for cut in 0..good.len() {
            assert!(decode_batch(&good[..cut]).is_err(), "prefix of {cut} bytes");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode_batch(&trailing), Err(TxBatchError::Trailing(1)));
        assert_eq!(
            decode_batch(&0u32.to_le_bytes()),
            Err(TxBatchError::Count(0))
        );
        let too_many = (MAX_TXS_PER_BATCH as u32 + 1).to_le_bytes();
        assert_eq!(
            decode_batch(&too_many),
            Err(TxBatchError::Count(MAX_TXS_PER_BATCH as u32 + 1))
        );
        // A length prefix beyond the limit is refused before any allocation.
        let mut huge = 1u32.to_le_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_batch(&huge), Err(TxBatchError::Length(u32::MAX)));
        let mut empty_tx = 1u32.to_le_bytes().to_vec();
        empty_tx.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode_batch(&empty_tx), Err(TxBatchError::Length(0)));
    }
}
