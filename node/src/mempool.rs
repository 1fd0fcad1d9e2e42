//! A bounded pool of transactions waiting for a block.
//!
//! * Bounded by count and bytes; a full pool answers [`MempoolError::Busy`]
//!   (HTTP 503) instead of evicting, so a flood cannot push out honest
//!   transactions already accepted.
//! * Transactions submitted to this node leave a quarter of the limits
//!   ([`PEER_RESERVE`]) to transactions gossiped by peers. Every pool
//!   holds about the same transactions, so without the reserve a pool near
//!   its limit would admit a submission that its peers, as full, then
//!   refuse: they fetch it when it is proposed, a round trip per height,
//!   which grows the backlog that filled the pools (docs/benchmarks.md,
//!   session 21: with links of 100 ms one way, less than half the
//!   throughput). With it, the API refuses first.
//! * Deduplicated by transaction hash.
//! * Stateless checks (well-formedness, chain id, signatures, batch-verified
//!   across every transaction that arrives together) run before entry and
//!   outside the pool's lock; stateful checks happen when a proposal
//!   executes the transactions.
//! * FIFO: proposals drain the oldest transactions first.

use std::collections::{BTreeMap, HashMap};

use keyreg_consensus::Hash;
use thiserror::Error;

/// What the pool needs from a transaction.
pub trait PoolTx: Clone {
    /// The transaction's identity (hash of its canonical bytes).
    fn tx_hash(&self) -> Hash;
    /// Its canonical encoded size in bytes.
    fn encoded_len(&self) -> usize;
}

/// Transactions submitted to this node fill the pool's limits (count and
/// bytes) less `limit / PEER_RESERVE`: that part is only for transactions
/// gossiped by peers (see the module docs).
pub const PEER_RESERVE: usize = 4;

/// Where a transaction reached this node from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Submitted to this node (its API).
    Local,
    /// Gossiped by a peer.
    Peer,
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MempoolError {
    #[error("transaction is already known")]
    AlreadyKnown,
    #[error("mempool is full")]
    Busy,
    #[error("transaction of {size} bytes exceeds the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
}

#[derive(Clone, Copy, Debug)]
pub struct MempoolLimits {
    pub max_txs: usize,
    pub max_bytes: usize,
    pub max_tx_bytes: usize,
}

pub struct Mempool<T> {
    limits: MempoolLimits,
    /// Arrival order -> hash; the oldest transaction has the smallest key.
    order: BTreeMap<u64, Hash>,
    txs: HashMap<Hash, (u64, T)>,
    bytes: usize,
    next_seq: u64,
}

impl<T: PoolTx> Mempool<T> {
    pub fn new(limits: MempoolLimits) -> Self {
        Mempool {
            limits,
            order: BTreeMap::new(),
            txs: HashMap::new(),
            bytes: 0,
            next_seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.txs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn contains(&self, hash: &Hash) -> bool {
        self.txs.contains_key(hash)
    }

    pub fn get(&self, hash: &Hash) -> Option<&T> {
        self.txs.get(hash).map(|(_, tx)| tx)
    }

    /// The cheap checks to run before spending time on signatures.
    pub fn precheck(&self, tx: &T, origin: Origin) -> Result<(), MempoolError> {
        let size = tx.encoded_len();
        if size > self.limits.max_tx_bytes {
            return Err(MempoolError::TooLarge {
                size,
                max: self.limits.max_tx_bytes,
            });
        }
        if self.contains(&tx.tx_hash()) {
            return Err(MempoolError::AlreadyKnown);
        }
        let share = |limit: usize| match origin {
            Origin::Local => limit - limit / PEER_RESERVE,
            Origin::Peer => limit,
        };
        if self.txs.len() >= share(self.limits.max_txs)
            || self.bytes + size > share(self.limits.max_bytes)
        {
            return Err(MempoolError::Busy);
        }
        Ok(())
    }

    /// Adds a transaction that passed the stateless checks.
    pub fn insert(&mut self, tx: T, origin: Origin) -> Result<Hash, MempoolError> {
        self.precheck(&tx, origin)?;
        let hash = tx.tx_hash();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += tx.encoded_len();
        self.order.insert(seq, hash);
        self.txs.insert(hash, (seq, tx));
        debug_assert_eq!(self.order.len(), self.txs.len());
        Ok(hash)
    }

    /// The oldest transactions whose total size fits in `max_bytes`, at most
    /// `max_count` of them. They stay in the pool until committed (a round
    /// may fail and the next proposer needs them again).
    pub fn reap(&self, max_bytes: usize, max_count: usize) -> Vec<T> {
        let mut out = Vec::new();
        let mut total = 0usize;
        for hash in self.order.values() {
            if out.len() >= max_count {
                break;
            }
            let Some((_, tx)) = self.txs.get(hash) else {
                continue;
            };
            let size = tx.encoded_len();
            if total + size > max_bytes {
                // A smaller later transaction might fit, but FIFO order is
                // what clients expect; stop here.
                break;
            }
            total += size;
            out.push(tx.clone());
        }
        out
    }

    /// Drops transactions that were committed (or became invalid).
    pub fn remove<'a>(&mut self, hashes: impl IntoIterator<Item = &'a Hash>) {
        for hash in hashes {
            if let Some((seq, tx)) = self.txs.remove(hash) {
                self.order.remove(&seq);
                self.bytes -= tx.encoded_len();
            }
        }
        debug_assert_eq!(self.order.len(), self.txs.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyreg_consensus::crypto::{hash, Domain};

    #[derive(Clone, Debug)]
    struct TestTx(Vec<u8>);

    impl TestTx {
        fn new(n: u8, len: usize) -> Self {
            TestTx(vec![n; len])
        }
    }

    impl PoolTx for TestTx {
        fn tx_hash(&self) -> Hash {
            hash(Domain::Transaction, &self.0)
        }
        fn encoded_len(&self) -> usize {
            self.0.len()
        }
    }

    fn pool(max_txs: usize, max_bytes: usize) -> Mempool<TestTx> {
        Mempool::new(MempoolLimits {
            max_txs,
            max_bytes,
            max_tx_bytes: 100,
        })
    }

    fn firsts(txs: &[TestTx]) -> Vec<u8> {
        txs.iter().map(|t| t.0[0]).collect()
    }

    #[test]
    fn dedups_bounds_and_drains_in_order() {
        let mut p = pool(3, 1000);
        for n in 1..=3 {
            p.insert(TestTx::new(n, 10), Origin::Peer).unwrap();
        }
        assert_eq!(
            p.insert(TestTx::new(1, 10), Origin::Peer),
            Err(MempoolError::AlreadyKnown)
        );
        assert_eq!(
            p.insert(TestTx::new(9, 10), Origin::Peer),
            Err(MempoolError::Busy)
        );
        assert!(matches!(
            p.precheck(&TestTx::new(9, 101), Origin::Peer),
            Err(MempoolError::TooLarge { .. })
        ));
        assert_eq!(firsts(&p.reap(25, 10)), vec![1, 2]);
        assert_eq!(p.reap(1000, 1).len(), 1);
        p.remove([&TestTx::new(1, 10).tx_hash()]);
        assert_eq!((p.len(), p.bytes()), (2, 20));
        assert_eq!(firsts(&p.reap(1000, 10)), vec![2, 3]);
        p.insert(TestTx::new(9, 10), Origin::Peer).unwrap();
    }

    #[test]
    fn submissions_leave_a_quarter_of_the_pool_to_peers() {
        let mut p = pool(8, 1000);
        for n in 1..=6 {
            p.insert(TestTx::new(n, 10), Origin::Local).unwrap();
        }
        assert_eq!(
            p.insert(TestTx::new(7, 10), Origin::Local),
            Err(MempoolError::Busy)
        );
        p.insert(TestTx::new(7, 10), Origin::Peer).unwrap();
        p.insert(TestTx::new(8, 10), Origin::Peer).unwrap();
        assert_eq!(
            p.insert(TestTx::new(9, 10), Origin::Peer),
            Err(MempoolError::Busy)
        );
        // By bytes too: 3/4 of 100 bytes for submissions.
        let mut p = pool(100, 100);
        for n in 1..=7 {
            p.insert(TestTx::new(n, 10), Origin::Local).unwrap();
        }
        assert_eq!(
            p.insert(TestTx::new(8, 10), Origin::Local),
            Err(MempoolError::Busy)
        );
        p.insert(TestTx::new(8, 10), Origin::Peer).unwrap();
    }

    #[test]
    fn byte_budget_is_enforced() {
        let mut p = pool(100, 25);
        p.insert(TestTx::new(1, 10), Origin::Peer).unwrap();
        p.insert(TestTx::new(2, 10), Origin::Peer).unwrap();
        assert_eq!(
            p.insert(TestTx::new(3, 10), Origin::Peer),
            Err(MempoolError::Busy)
        );
        p.remove([&TestTx::new(1, 10).tx_hash()]);
        p.insert(TestTx::new(3, 10), Origin::Peer).unwrap();
    }
}
