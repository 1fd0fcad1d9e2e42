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
//! A batch's wire format is [`keyreg_registry::wire::encode_tx_batch`].

use std::sync::Arc;

use keyreg_consensus::Hash;
use keyreg_registry::wire::{
    decode_tx_batch, encode_tx_batch, MAX_TXS_PER_BATCH, MAX_TX_BATCH_BYTES,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::network::{NetworkHandle, Topic};
use crate::node::{Shared, SubmitError};

/// Arrivals waiting for admission, and admitted transactions waiting to be
/// gossiped.
pub const QUEUE: usize = 8192;
const _: () = assert!(MAX_TX_BATCH_BYTES <= crate::network::MAX_GOSSIP_PAYLOAD);
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
const _: () = assert!(MAX_TX_BATCH_BYTES <= crate::network::MAX_GOSSIP_PAYLOAD);

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
                Ok(tx) if bytes + tx.len() <= MAX_TX_BATCH_BYTES => {
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
        .publish(Topic::Transactions, encode_tx_batch(batch))
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
        match decode_tx_batch(payload) {
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
