//! How transactions reach the mempool and the other nodes, in batches.
//!
//! * In: transactions submitted through the API and batches gossiped by
//!   peers queue (bounded) for one admission task. It takes whatever queued
//!   since its last round and admits it to the mempool with one batch
//!   signature verification on the blocking pool: under load that is one
//!   thread hand-off and one batch per round instead of one per request,
//!   and it runs off the task that routes consensus messages, so a burst of
//!   transactions never delays a vote. A full queue answers `busy` to a
//!   submitter and drops a gossiped batch. A round holds at most
//!   [`ROUND_BYTES`] (plus one arrival), and small arrivals (a device's own
//!   transaction, an operator's revocation, an urgent one gossiped alone)
//!   go into the next round ahead of bulk batches that queued before them:
//!   under a flood of bulk batches they wait for one short round, not for
//!   the whole backlog. Bulk batches still go in order, one at least in
//!   every round, and small ones fill at most half a round's arrivals.
//! * Out: admitted submissions queue (bounded) for a publisher that gossips
//!   whatever queues within [`GOSSIP_LINGER`] of the first transaction as
//!   one message. At low load a batch is one transaction, published a few
//!   milliseconds late; under load one message carries many, which
//!   amortises gossipsub's per-message costs (framing, message ids,
//!   duplicate caches, one copy per mesh peer and hop) and each peer's
//!   admission round. A transaction admitted to the mempool's urgent lane
//!   (a revocation) is published alone and at once, so it is a small
//!   arrival at every peer.
//!
//! Dropped gossip never loses an admitted transaction: the origin node keeps
//! it in its mempool and proposes it in its own turn.
//!
//! A batch's wire format is [`keyreg_registry::wire::encode_tx_batch`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keyreg_consensus::Hash;
use keyreg_registry::wire::{
    decode_tx_batch, encode_tx_batch, MAX_TXS_PER_BATCH, MAX_TX_BATCH_BYTES,
};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::mempool::{Lane, Origin};
use crate::network::{NetworkHandle, PendingRelay, RelayVerdict, Topic};
use crate::node::{recv_or_shutdown, Shared, SubmitError};

/// Arrivals waiting for admission, and admitted transactions waiting to be
/// gossiped (the admission task takes up to as many more out of its queue
/// to pick its rounds from; their bytes still count).
pub const QUEUE: usize = 8192;
/// Bytes of transactions waiting for admission, at most: with batches of
/// up to 1 MiB, the count bound alone would allow gigabytes.
pub const QUEUED_BYTES: usize = 64 << 20;
/// How long an outgoing gossip batch waits for more transactions once it
/// has one: each message costs every peer a receive, an id, a queue slot and
/// an admission round, so one-transaction messages under load would cost
/// more than the transactions. Short next to a block interval.
const GOSSIP_LINGER: Duration = Duration::from_millis(5);
/// Arrivals admitted in one round, at most.
const MAX_ARRIVALS_PER_ROUND: usize = 256;
/// Bytes of transactions a round takes, at most (beyond its first arrival):
/// about 3 000 registrations, 6 000 signatures, tens of milliseconds of
/// verification, which is as long as a small arrival waits behind a
/// flood. Rounds under the benchmarks' saturation average a tenth of it.
const ROUND_BYTES: usize = 1 << 20;
/// Arrivals of at most this many bytes go first (about a dozen
/// registrations).
const SMALL_ARRIVAL_BYTES: usize = 4096;

/// A transaction, or a batch of them, waiting for admission.
pub enum Arrival {
    /// Submitted through the API (one transaction, or a batch); one verdict
    /// per transaction goes back on `reply`, in order.
    Submitted {
        txs: Vec<Vec<u8>>,
        reply: oneshot::Sender<Vec<Result<Hash, SubmitError>>>,
    },
    /// A batch gossiped by a peer, undecoded, relayed once it is checked.
    Gossiped { batch: Vec<u8>, relay: PendingRelay },
}

impl Arrival {
    fn bytes(&self) -> usize {
        match self {
            Arrival::Submitted { txs, .. } => txs.iter().map(Vec::len).sum(),
            Arrival::Gossiped { batch, .. } => batch.len(),
        }
    }
}

/// An arrival in the queue, holding its share of [`QUEUED_BYTES`].
pub struct Queued {
    arrival: Arrival,
    _budget: OwnedSemaphorePermit,
}

/// The sending side of the admission queue, bounded by count and bytes,
/// and how far admission has got through it.
pub struct Arrivals {
    queue: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
    /// Arrivals queued so far.
    queued: AtomicU64,
    /// Arrivals admitted so far (the admission task adds each round's).
    admitted: watch::Sender<u64>,
}

impl Arrivals {
    pub fn new() -> (Self, mpsc::Receiver<Queued>) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let budget = Arc::new(Semaphore::new(QUEUED_BYTES));
        let arrivals = Arrivals {
            queue,
            budget,
            queued: AtomicU64::new(0),
            admitted: watch::Sender::new(0),
        };
        (arrivals, receiver)
    }

    /// Waits until admission has got through as many arrivals as were
    /// queued before this call, at most `max_wait`; false on the deadline.
    /// (Small arrivals may pass bulk ones, so this counts, it does not
    /// name them: a fetch that follows may find what a bulk batch still
    /// waiting would have brought.)
    pub async fn admitted_so_far(&self, max_wait: Duration) -> bool {
        let target = self.queued.load(Ordering::Acquire);
        let mut admitted = self.admitted.subscribe();
        let done = tokio::time::timeout(max_wait, admitted.wait_for(|n| *n >= target)).await;
        matches!(done, Ok(Ok(_)))
    }

    fn count_admitted(&self, arrivals: usize) {
        self.admitted
            .send_modify(|admitted| *admitted += arrivals as u64);
    }

    /// Queues `arrival`, or gives it back when the queue is full (by count
    /// or by bytes).
    pub fn try_queue(&self, arrival: Arrival) -> Result<(), Arrival> {
        let permit = u32::try_from(arrival.bytes())
            .ok()
            .and_then(|bytes| self.budget.clone().try_acquire_many_owned(bytes).ok());
        let Some(permit) = permit else {
            return Err(arrival);
        };
        self.queue
            .try_send(Queued {
                arrival,
                _budget: permit,
            })
            .map_err(|e| e.into_inner().arrival)?;
        self.queued.fetch_add(1, Ordering::Release);
        Ok(())
    }
}
const _: () = assert!(MAX_TX_BATCH_BYTES <= crate::network::MAX_GOSSIP_PAYLOAD);

/// Publishes the transactions queued on `outbox` in batches until shutdown.
pub async fn publish_batches(
    network: NetworkHandle,
    mut outbox: mpsc::Receiver<(Vec<u8>, Lane)>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let Some((first, lane)) = recv_or_shutdown(&mut outbox, &mut shutdown).await else {
            return;
        };
        if lane == Lane::Urgent {
            publish(&network, &[first]).await;
            continue;
        }
        let linger_until = Instant::now() + GOSSIP_LINGER;
        let mut bytes = first.len();
        let mut batch = vec![first];
        while batch.len() < MAX_TXS_PER_BATCH {
            let next = match outbox.try_recv() {
                Ok(next) => next,
                Err(TryRecvError::Empty) => {
                    match tokio::time::timeout_at(linger_until, outbox.recv()).await {
                        Ok(Some(next)) => next,
                        Ok(None) | Err(_) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            let tx = match next {
                (tx, Lane::Normal) => tx,
                (urgent, Lane::Urgent) => {
                    publish(&network, &[urgent]).await;
                    continue;
                }
            };
            // A transaction that would overflow the batch starts the next one.
            if bytes + tx.len() <= MAX_TX_BATCH_BYTES {
                bytes += tx.len();
                batch.push(tx);
            } else {
                publish(&network, &batch).await;
                bytes = tx.len();
                batch = vec![tx];
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
    mut arrivals: mpsc::Receiver<Queued>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Taken out of the channel but not admitted yet, in arrival order; at
    // most `QUEUE` (their bytes still count against `QUEUED_BYTES`).
    let mut waiting: VecDeque<Queued> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            let Some(first) = recv_or_shutdown(&mut arrivals, &mut shutdown).await else {
                return;
            };
            waiting.push_back(first);
        }
        while waiting.len() < QUEUE {
            match arrivals.try_recv() {
                Ok(arrival) => waiting.push_back(arrival),
                Err(_) => break,
            }
        }
        let round = take_round(&mut waiting, |queued| queued.arrival.bytes());
        let arrivals = round.len();
        let admitting = shared.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || admit(&admitting, round)).await {
            tracing::error!(error = %e, "transaction admission task failed");
        }
        shared.arrivals.count_admitted(arrivals);
    }
}

/// The next round out of `waiting` (arrival order; `size` gives an
/// arrival's bytes): the small arrivals first, in order (at most half of
/// [`MAX_ARRIVALS_PER_ROUND`]), then the oldest others while the round
/// stays within [`ROUND_BYTES`], at least one of them, so that neither
/// kind waits for the other forever. The rest stay in order.
fn take_round<T>(waiting: &mut VecDeque<T>, size: impl Fn(&T) -> usize) -> Vec<T> {
    let mut round = Vec::new();
    let mut bytes = 0usize;
    let mut bulk = VecDeque::with_capacity(waiting.len());
    for arrival in waiting.drain(..) {
        let arrival_bytes = size(&arrival);
        if arrival_bytes <= SMALL_ARRIVAL_BYTES && round.len() < MAX_ARRIVALS_PER_ROUND / 2 {
            bytes += arrival_bytes;
            round.push(arrival);
        } else {
            bulk.push_back(arrival);
        }
    }
    let mut bulk_taken = 0usize;
    while round.len() < MAX_ARRIVALS_PER_ROUND {
        let Some(next) = bulk.front() else { break };
        let next_bytes = size(next);
        if bulk_taken > 0 && bytes + next_bytes > ROUND_BYTES {
            break;
        }
        bytes += next_bytes;
        bulk_taken += 1;
        round.extend(bulk.pop_front());
    }
    *waiting = bulk;
    round
}

/// One round: every transaction of `round` checked in one batch, verdicts
/// sent back to submitters, admitted submissions queued for gossip, and
/// each gossiped batch reported for relay.
fn admit(shared: &Shared, round: Vec<Queued>) {
    let mut submitted = Vec::new();
    let mut gossiped = Vec::new();
    for queued in round {
        match queued.arrival {
            Arrival::Submitted { txs, reply } => submitted.push((txs, reply)),
            Arrival::Gossiped { batch, relay } => gossiped.push((batch, relay)),
        }
    }
    let mut raw: Vec<(&[u8], Origin)> = submitted
        .iter()
        .flat_map(|(txs, _)| txs.iter().map(|tx| (tx.as_slice(), Origin::Local)))
        .collect();
    // Transactions per gossiped batch; `None` for an undecodable one.
    let mut batch_sizes = Vec::with_capacity(gossiped.len());
    for (batch, relay) in &gossiped {
        match decode_tx_batch(batch) {
            Ok(txs) => {
                batch_sizes.push(Some(txs.len()));
                raw.extend(txs.into_iter().map(|tx| (tx, Origin::Peer)));
            }
            Err(e) => {
                tracing::debug!(from = %relay.from(), error = %e, "undecodable transaction batch");
                batch_sizes.push(None);
            }
        }
    }
    shared
        .metrics
        .admission_round_transactions
        .observe(raw.len() as f64);
    // The lanes of the admitted submissions choose how they are gossiped
    // (the submissions come first in `raw`).
    let (verdicts, lanes) = shared.submit_batch(&raw);
    let (mut verdicts, mut lanes) = (verdicts.into_iter(), lanes.into_iter());
    for (txs, reply) in submitted {
        let mut answer = Vec::with_capacity(txs.len());
        for (bytes, verdict) in txs.into_iter().zip(verdicts.by_ref()) {
            let lane = lanes.next().unwrap_or(Lane::Normal);
            if verdict.is_ok() {
                shared.gossip_transaction(bytes, lane);
            }
            answer.push(verdict);
        }
        // The submitter may have gone (client timeout); the verdicts stand.
        let _ = reply.send(answer);
    }
    for ((_, relay), size) in gossiped.into_iter().zip(batch_sizes) {
        let verdict = match size {
            None => RelayVerdict::Reject,
            Some(size) => relay_verdict(verdicts.by_ref().take(size)),
        };
        if verdict == RelayVerdict::Reject {
            tracing::debug!(from = %relay.from(), "invalid transaction batch not relayed");
        }
        shared.metrics.gossip_batch(verdict);
        shared.network.relay(relay, verdict);
    }
}

/// Whether a gossiped batch is relayed, from its transactions' verdicts:
/// one provably invalid transaction (undecodable, non-canonical, a bad
/// signature, another chain's) condemns the batch, since a correct node
/// gossips only transactions it admitted; otherwise it is relayed if it
/// brought at least one new transaction and every one was checked. A
/// full mempool still checked them; this node's own size limit or a
/// storage error left some unchecked, which is nobody's fault but leaves
/// the batch unfit to relay.
fn relay_verdict(verdicts: impl Iterator<Item = Result<Hash, SubmitError>>) -> RelayVerdict {
    let (mut admitted, mut unchecked) = (false, false);
    for verdict in verdicts {
        match verdict {
            Ok(_) => admitted = true,
            Err(SubmitError::Malformed(_) | SubmitError::Invalid(_)) => {
                return RelayVerdict::Reject
            }
            // Checked and valid; a peer may lack it or have room for it.
            Err(SubmitError::AlreadyKnown | SubmitError::Busy) => {}
            Err(SubmitError::TooLarge(_) | SubmitError::Internal(_)) => unchecked = true,
        }
    }
    if admitted && !unchecked {
        RelayVerdict::Relay
    } else {
        RelayVerdict::Ignore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A submission of one transaction of `bytes` bytes (nobody waits for
    /// its verdicts).
    fn submission(bytes: usize) -> Arrival {
        Arrival::Submitted {
            txs: vec![vec![0u8; bytes]],
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn the_admission_queue_is_bounded_by_bytes_as_well_as_by_count() {
        let (arrivals, mut queue) = Arrivals::new();
        let mut queued = 0;
        while arrivals.try_queue(submission(1 << 20)).is_ok() {
            queued += 1;
            assert!(queued <= QUEUE, "the byte budget never bound");
        }
        assert_eq!(queued, QUEUED_BYTES >> 20);
        assert!(arrivals.try_queue(submission(1)).is_err());
        // An arrival taken out (admitted) gives its bytes back.
        drop(queue.try_recv().expect("a queued arrival"));
        assert!(arrivals.try_queue(submission(1 << 20)).is_ok());
    }

    #[tokio::test]
    async fn a_fetch_can_wait_for_what_queued_before_it_to_be_admitted() {
        let (arrivals, _queue) = Arrivals::new();
        let short = Duration::from_millis(10);
        assert!(arrivals.admitted_so_far(short).await, "nothing queued");
        for _ in 0..3 {
            assert!(arrivals.try_queue(submission(10)).is_ok());
        }
        assert!(!arrivals.admitted_so_far(short).await, "none admitted yet");
        arrivals.count_admitted(2);
        assert!(!arrivals.admitted_so_far(short).await, "one still waits");
        // Admitted while the caller waits: it wakes then, not at its deadline.
        let waiting = arrivals.admitted_so_far(Duration::from_secs(60));
        let (done, ()) = tokio::join!(waiting, async { arrivals.count_admitted(1) });
        assert!(done);
        // One queued since is waited for.
        assert!(arrivals.try_queue(submission(10)).is_ok());
        assert!(!arrivals.admitted_so_far(short).await);
    }

    #[test]
    fn small_arrivals_go_first_and_bulk_ones_in_order_within_the_round_budget() {
        let small = SMALL_ARRIVAL_BYTES;
        let bulk = ROUND_BYTES / 3;
        // (label, bytes) in arrival order.
        let mut waiting: VecDeque<(u8, usize)> = [
            (1, bulk),
            (2, bulk),
            (3, small),
            (4, bulk),
            (5, bulk),
            (6, 10),
        ]
        .into();
        let labels = |round: Vec<(u8, usize)>| round.into_iter().map(|a| a.0).collect::<Vec<_>>();
        // The two small ones, then bulk ones while the budget lasts.
        assert_eq!(labels(take_round(&mut waiting, |a| a.1)), vec![3, 6, 1, 2]);
        assert_eq!(labels(take_round(&mut waiting, |a| a.1)), vec![4, 5]);
        assert!(waiting.is_empty());
        // One bulk arrival goes in every round, larger than the budget or not.
        let mut waiting: VecDeque<(u8, usize)> =
            [(1, 2 * ROUND_BYTES), (2, bulk), (3, small)].into();
        assert_eq!(labels(take_round(&mut waiting, |a| a.1)), vec![3, 1]);
        assert_eq!(labels(take_round(&mut waiting, |a| a.1)), vec![2]);
        // At most MAX_ARRIVALS_PER_ROUND a round, and small arrivals go
        // first for at most half of them: a bulk one (labelled 1) behind
        // crowds of small ones that keep coming still goes in the second
        // round, where the small ones past the first half wait behind it.
        let crowd = |n: usize| (0..n).map(|_| (0u8, 1usize));
        let mut waiting: VecDeque<(u8, usize)> = crowd(300).chain([(1, bulk)]).collect();
        let first = labels(take_round(&mut waiting, |a| a.1));
        assert_eq!(first, vec![0; MAX_ARRIVALS_PER_ROUND]);
        waiting.extend(crowd(300));
        let second = labels(take_round(&mut waiting, |a| a.1));
        assert_eq!(second.len(), MAX_ARRIVALS_PER_ROUND);
        assert_eq!(second.get(MAX_ARRIVALS_PER_ROUND / 2), Some(&1));
    }

    #[test]
    fn a_batch_is_relayed_only_when_every_transaction_checks_and_one_is_new() {
        let id = Hash([7; 32]);
        let verdict =
            |verdicts: Vec<Result<Hash, SubmitError>>| relay_verdict(verdicts.into_iter());
        let invalid = || {
            SubmitError::Invalid(keyreg_registry::tx::TxError::BadSignature {
                which: keyreg_registry::tx::SignatureRef::Signer(0),
            })
        };
        assert_eq!(
            verdict(vec![Ok(id), Err(SubmitError::AlreadyKnown)]),
            RelayVerdict::Relay
        );
        assert_eq!(
            verdict(vec![Ok(id), Err(SubmitError::Busy)]),
            RelayVerdict::Relay
        );
        assert_eq!(
            verdict(vec![Err(SubmitError::AlreadyKnown)]),
            RelayVerdict::Ignore
        );
        assert_eq!(verdict(vec![]), RelayVerdict::Ignore);
        assert_eq!(
            verdict(vec![Ok(id), Err(SubmitError::Internal("disk".into()))]),
            RelayVerdict::Ignore
        );
        assert_eq!(
            verdict(vec![Ok(id), Err(SubmitError::TooLarge(1 << 20))]),
            RelayVerdict::Ignore
        );
        assert_eq!(verdict(vec![Ok(id), Err(invalid())]), RelayVerdict::Reject);
        assert_eq!(
            verdict(vec![
                Err(SubmitError::Malformed("trailing bytes".into())),
                Ok(id)
            ]),
            RelayVerdict::Reject
        );
    }
}
