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
//! * Two lanes, each FIFO: proposals drain the urgent lane first, then the
//!   normal one. A revocation that would succeed at the head (its device
//!   exists and its signer may revoke it, checked by the node before entry)
//!   is urgent: a stolen device's revocation must not wait behind a backlog
//!   of registrations, nor be refused because they filled the pool. The
//!   urgent lane has limits of its own, `1 / URGENT_SHARE` of the pool's on
//!   top of them, so the pool holds at most that much more, and one
//!   transaction per device: more revocations of a device than one wait in
//!   the normal lane, so that a single device's key cannot fill it. (The
//!   node also dry-runs at most a few dozen revocations per admission
//!   round, so a fleet decommissioned in bulk is urgent only in part.)
//!   While urgent transactions wait, proposals are kept to a quarter of a
//!   block (`driver::URGENT_PROPOSAL_BYTES`), so the height that carries a
//!   revocation is short even under a flood.

use std::collections::{BTreeMap, HashMap, HashSet};

use keyreg_consensus::Hash;
use thiserror::Error;

/// What the pool needs from a transaction.
pub trait PoolTx: Clone {
    /// The transaction's identity (hash of its canonical bytes).
    fn tx_hash(&self) -> Hash;
    /// Its canonical encoded size in bytes.
    fn encoded_len(&self) -> usize;
    /// What it acts on, when it is of a kind that may enter the urgent
    /// lane (whether it does is decided on entry): the lane holds one
    /// transaction per such key, so one device cannot fill it.
    fn urgent_key(&self) -> Option<Hash>;
}

/// Transactions submitted to this node fill the pool's limits (count and
/// bytes) less `limit / PEER_RESERVE`: that part is only for transactions
/// gossiped by peers (see the module docs).
pub const PEER_RESERVE: usize = 4;

/// The urgent lane's limits (count and bytes) are the pool's divided by this.
pub const URGENT_SHARE: usize = 16;

/// Which queue a transaction waits in (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Normal,
    Urgent,
}

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
    /// Arrival order -> hash per lane; the oldest transaction has the
    /// smallest key.
    normal: BTreeMap<u64, Hash>,
    urgent: BTreeMap<u64, Hash>,
    /// The [`PoolTx::urgent_key`]s of the urgent lane's transactions.
    urgent_keys: HashSet<Hash>,
    txs: HashMap<Hash, (u64, Lane, T)>,
    /// Bytes of all transactions, and of the urgent lane's.
    bytes: usize,
    urgent_bytes: usize,
    next_seq: u64,
}

impl<T: PoolTx> Mempool<T> {
    pub fn new(limits: MempoolLimits) -> Self {
        Mempool {
            limits,
            normal: BTreeMap::new(),
            urgent: BTreeMap::new(),
            urgent_keys: HashSet::new(),
            txs: HashMap::new(),
            bytes: 0,
            urgent_bytes: 0,
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
        self.txs.get(hash).map(|(_, _, tx)| tx)
    }

    /// Whether a transaction of this [`PoolTx::urgent_key`] waits in the
    /// urgent lane (another of the same key would wait in the normal one).
    pub fn urgent_key_taken(&self, key: &Hash) -> bool {
        self.urgent_keys.contains(key)
    }

    /// The cheap checks to run before spending time on signatures: size,
    /// duplicates, and room in a lane the transaction may enter.
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
        let room = self.has_room(Lane::Normal, size, origin)
            || (tx.urgent_key().is_some() && self.has_room(Lane::Urgent, size, origin));
        if !room {
            return Err(MempoolError::Busy);
        }
        Ok(())
    }

    /// Whether `lane` takes `size` more bytes from `origin`.
    fn has_room(&self, lane: Lane, size: usize, origin: Origin) -> bool {
        let (count, bytes, max_txs, max_bytes) = match lane {
            Lane::Urgent => (
                self.urgent.len(),
                self.urgent_bytes,
                self.limits.max_txs / URGENT_SHARE,
                self.limits.max_bytes / URGENT_SHARE,
            ),
            Lane::Normal => (
                self.normal.len(),
                self.bytes - self.urgent_bytes,
                self.limits.max_txs,
                self.limits.max_bytes,
            ),
        };
        let share = |limit: usize| match origin {
            Origin::Local => limit - limit / PEER_RESERVE,
            Origin::Peer => limit,
        };
        count < share(max_txs) && bytes + size <= share(max_bytes)
    }

    /// Adds a transaction that passed the stateless checks to `lane` (one
    /// without a [`PoolTx::urgent_key`] is always normal; an urgent one
    /// finding its lane full, or its key there already, waits in the
    /// normal lane). Returns its hash and the lane it waits in.
    pub fn insert(
        &mut self,
        tx: T,
        origin: Origin,
        lane: Lane,
    ) -> Result<(Hash, Lane), MempoolError> {
        self.precheck(&tx, origin)?;
        let size = tx.encoded_len();
        let urgent_key = tx
            .urgent_key()
            .filter(|key| lane == Lane::Urgent && !self.urgent_keys.contains(key));
        let lane = match urgent_key {
            Some(key) if self.has_room(Lane::Urgent, size, origin) => {
                self.urgent_keys.insert(key);
                Lane::Urgent
            }
            _ if self.has_room(Lane::Normal, size, origin) => Lane::Normal,
            _ => return Err(MempoolError::Busy),
        };
        let hash = tx.tx_hash();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += size;
        match lane {
            Lane::Normal => self.normal.insert(seq, hash),
            Lane::Urgent => {
                self.urgent_bytes += size;
                self.urgent.insert(seq, hash)
            }
        };
        self.txs.insert(hash, (seq, lane, tx));
        debug_assert_eq!(self.normal.len() + self.urgent.len(), self.txs.len());
        Ok((hash, lane))
    }

    /// Whether urgent transactions wait.
    pub fn has_urgent(&self) -> bool {
        !self.urgent.is_empty()
    }

    /// The oldest urgent transactions, then the oldest normal ones, whose
    /// total size fits in `max_bytes`, at most `max_count` of them. They
    /// stay in the pool until committed (a round may fail and the next
    /// proposer needs them again).
    pub fn reap(&self, max_bytes: usize, max_count: usize) -> Vec<T> {
        let mut out = Vec::new();
        let mut total = 0usize;
        for hash in self.urgent.values().chain(self.normal.values()) {
            if out.len() >= max_count {
                break;
            }
            let Some((_, _, tx)) = self.txs.get(hash) else {
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
            if let Some((seq, lane, tx)) = self.txs.remove(hash) {
                let size = tx.encoded_len();
                self.bytes -= size;
                match lane {
                    Lane::Normal => self.normal.remove(&seq),
                    Lane::Urgent => {
                        self.urgent_bytes -= size;
                        if let Some(key) = tx.urgent_key() {
                            self.urgent_keys.remove(&key);
                        }
                        self.urgent.remove(&seq)
                    }
                };
            }
        }
        debug_assert_eq!(self.normal.len() + self.urgent.len(), self.txs.len());
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
        /// Transactions numbered from 200 stand for revocations, of the
        /// device their last byte names.
        fn urgent_key(&self) -> Option<Hash> {
            let device = self.0.last()?;
            (self.0[0] >= 200).then(|| hash(Domain::Transaction, &[*device]))
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
            p.insert(TestTx::new(n, 10), Origin::Peer, Lane::Normal)
                .unwrap();
        }
        assert_eq!(
            p.insert(TestTx::new(1, 10), Origin::Peer, Lane::Normal),
            Err(MempoolError::AlreadyKnown)
        );
        assert_eq!(
            p.insert(TestTx::new(9, 10), Origin::Peer, Lane::Normal),
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
        p.insert(TestTx::new(9, 10), Origin::Peer, Lane::Normal)
            .unwrap();
    }

    #[test]
    fn submissions_leave_a_quarter_of_the_pool_to_peers() {
        let mut p = pool(8, 1000);
        for n in 1..=6 {
            p.insert(TestTx::new(n, 10), Origin::Local, Lane::Normal)
                .unwrap();
        }
        assert_eq!(
            p.insert(TestTx::new(7, 10), Origin::Local, Lane::Normal),
            Err(MempoolError::Busy)
        );
        p.insert(TestTx::new(7, 10), Origin::Peer, Lane::Normal)
            .unwrap();
        p.insert(TestTx::new(8, 10), Origin::Peer, Lane::Normal)
            .unwrap();
        assert_eq!(
            p.insert(TestTx::new(9, 10), Origin::Peer, Lane::Normal),
            Err(MempoolError::Busy)
        );
        // By bytes too: 3/4 of 100 bytes for submissions.
        let mut p = pool(100, 100);
        for n in 1..=7 {
            p.insert(TestTx::new(n, 10), Origin::Local, Lane::Normal)
                .unwrap();
        }
        assert_eq!(
            p.insert(TestTx::new(8, 10), Origin::Local, Lane::Normal),
            Err(MempoolError::Busy)
        );
        p.insert(TestTx::new(8, 10), Origin::Peer, Lane::Normal)
            .unwrap();
    }

    #[test]
    fn byte_budget_is_enforced() {
        let mut p = pool(100, 25);
        p.insert(TestTx::new(1, 10), Origin::Peer, Lane::Normal)
            .unwrap();
        p.insert(TestTx::new(2, 10), Origin::Peer, Lane::Normal)
            .unwrap();
        assert_eq!(
            p.insert(TestTx::new(3, 10), Origin::Peer, Lane::Normal),
            Err(MempoolError::Busy)
        );
        p.remove([&TestTx::new(1, 10).tx_hash()]);
        p.insert(TestTx::new(3, 10), Origin::Peer, Lane::Normal)
            .unwrap();
    }

    #[test]
    fn urgent_transactions_are_reaped_first_each_lane_in_order() {
        let mut p = pool(100, 10_000);
        for n in [1, 2] {
            p.insert(TestTx::new(n, 10), Origin::Local, Lane::Normal)
                .unwrap();
        }
        for n in [201, 202] {
            p.insert(TestTx::new(n, 10), Origin::Peer, Lane::Urgent)
                .unwrap();
        }
        p.insert(TestTx::new(3, 10), Origin::Local, Lane::Normal)
            .unwrap();
        // A kind that may be urgent waits in the normal lane when the node
        // found it not urgent (a revocation that would fail at the head).
        p.insert(TestTx::new(203, 10), Origin::Local, Lane::Normal)
            .unwrap();
        // A kind that may not be urgent is normal whatever it asks.
        p.insert(TestTx::new(4, 10), Origin::Local, Lane::Urgent)
            .unwrap();
        assert_eq!(
            firsts(&p.reap(10_000, 100)),
            vec![201, 202, 1, 2, 3, 203, 4]
        );
        assert_eq!(firsts(&p.reap(30, 100)), vec![201, 202, 1]);
        p.remove([
            &TestTx::new(201, 10).tx_hash(),
            &TestTx::new(1, 10).tx_hash(),
        ]);
        assert_eq!(firsts(&p.reap(10_000, 100)), vec![202, 2, 3, 203, 4]);
        assert_eq!((p.len(), p.bytes()), (5, 50));
    }

    #[test]
    fn a_full_pool_still_takes_urgent_transactions_within_their_own_limits() {
        // Room for 32 normal transactions and 32 / URGENT_SHARE = 2 urgent.
        let mut p = pool(32, 10_000);
        for n in 0..32 {
            p.insert(TestTx::new(n, 10), Origin::Peer, Lane::Normal)
                .unwrap();
        }
        let normal_kind = TestTx::new(50, 10);
        assert_eq!(
            p.precheck(&normal_kind, Origin::Peer),
            Err(MempoolError::Busy)
        );
        assert_eq!(
            p.insert(normal_kind, Origin::Peer, Lane::Urgent),
            Err(MempoolError::Busy)
        );
        // A revocation found not urgent has no room either.
        assert_eq!(
            p.insert(TestTx::new(210, 10), Origin::Peer, Lane::Normal),
            Err(MempoolError::Busy)
        );
        assert_eq!(p.precheck(&TestTx::new(201, 10), Origin::Local), Ok(()));
        p.insert(TestTx::new(201, 10), Origin::Local, Lane::Urgent)
            .unwrap();
        p.insert(TestTx::new(202, 10), Origin::Peer, Lane::Urgent)
            .unwrap();
        assert_eq!(
            p.insert(TestTx::new(203, 10), Origin::Peer, Lane::Urgent),
            Err(MempoolError::Busy)
        );
        assert_eq!(firsts(&p.reap(10_000, 3)), vec![201, 202, 0]);
        // The urgent lane's bytes are bounded too (320 / 16 = 20); an urgent
        // transaction beyond them waits in the normal lane.
        let mut p = pool(1000, 320);
        p.insert(TestTx::new(1, 10), Origin::Peer, Lane::Normal)
            .unwrap();
        p.insert(TestTx::new(201, 20), Origin::Peer, Lane::Urgent)
            .unwrap();
        p.insert(TestTx::new(202, 1), Origin::Peer, Lane::Urgent)
            .unwrap();
        assert_eq!(firsts(&p.reap(10_000, 100)), vec![201, 1, 202]);
    }

    #[test]
    fn the_urgent_lane_holds_one_transaction_per_device() {
        let mut p = pool(1000, 100_000);
        // Two revocations of device 7, then one of device 8.
        let (first, second) = (TestTx(vec![201, 7]), TestTx(vec![202, 7]));
        p.insert(TestTx::new(1, 10), Origin::Peer, Lane::Normal)
            .unwrap();
        // `insert` says which lane each went to.
        let lane = |inserted: Result<(Hash, Lane), MempoolError>| inserted.unwrap().1;
        assert_eq!(
            lane(p.insert(first.clone(), Origin::Peer, Lane::Urgent)),
            Lane::Urgent
        );
        assert_eq!(
            lane(p.insert(second, Origin::Peer, Lane::Urgent)),
            Lane::Normal
        );
        p.insert(TestTx(vec![203, 8]), Origin::Peer, Lane::Urgent)
            .unwrap();
        assert_eq!(firsts(&p.reap(10_000, 100)), vec![201, 203, 1, 202]);
        assert!(p.urgent_key_taken(&first.urgent_key().unwrap()));
        // Once the first leaves, the device's next revocation may be urgent.
        p.remove([&first.tx_hash()]);
        p.insert(TestTx(vec![204, 7]), Origin::Peer, Lane::Urgent)
            .unwrap();
        assert_eq!(firsts(&p.reap(10_000, 100)), vec![203, 204, 1, 202]);
    }
}
