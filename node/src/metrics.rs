//! Prometheus metrics served at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::network::RelayVerdict;

/// Why the API turned a request away without serving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The global in-flight limit was reached (503).
    Overloaded,
    /// A client exceeded its look-up rate (429).
    LookupRateLimited,
    /// A client exceeded its submission rate (429).
    SubmissionRateLimited,
    /// The mempool or the admission queue was full (503 `busy`).
    MempoolFull,
    /// An admitted request ran out of time, e.g. a body sent too slowly (408).
    TimedOut,
}

impl Rejection {
    fn label(self) -> [(&'static str, &'static str); 1] {
        let reason = match self {
            Rejection::Overloaded => "overloaded",
            Rejection::LookupRateLimited => "lookup_rate_limited",
            Rejection::SubmissionRateLimited => "submission_rate_limited",
            Rejection::MempoolFull => "mempool_full",
            Rejection::TimedOut => "timed_out",
        };
        [("reason", reason)]
    }
}

fn verdict_label(verdict: RelayVerdict) -> [(&'static str, &'static str); 1] {
    let verdict = match verdict {
        RelayVerdict::Relay => "relay",
        RelayVerdict::Ignore => "ignore",
        RelayVerdict::Reject => "reject",
    };
    [("verdict", verdict)]
}

/// The node's metrics. Cloning shares the underlying values.
#[derive(Clone)]
pub struct Metrics {
    registry: std::sync::Arc<Registry>,
    /// Height of the latest committed block.
    pub height: Gauge,
    /// Blocks committed by this process (consensus or sync).
    pub commits: Counter,
    /// Transactions in the blocks committed by this process.
    pub transactions: Counter,
    /// Transactions waiting in the mempool.
    pub mempool_size: Gauge,
    /// Consensus round timeouts that moved the engine on, by step
    /// (propose, prevote, precommit); one firing after its step was left
    /// does not count.
    round_timeouts: Family<[(&'static str, &'static str); 1], Counter>,
    /// Transactions of compact proposals fetched from peers because this
    /// node did not hold them (gossip had not brought them yet).
    pub fetched_txs: Counter,
    /// Transactions whose signatures this node checked, at admission or in
    /// a proposal: about once per transaction when nothing is checked twice.
    pub checked_txs: Counter,
    /// Peers with an established connection.
    pub peers: Gauge,
    /// Best known peer height minus our height (0 when caught up).
    pub sync_lag: Gauge,
    /// API requests turned away, by reason.
    api_rejected: Family<[(&'static str, &'static str); 1], Counter>,
    /// Transaction batches received from peers, by relay verdict.
    gossip_batches: Family<[(&'static str, &'static str); 1], Counter>,
    /// Executing a block against its parent (proposing or validating it).
    pub block_execute_seconds: Histogram,
    /// Committing a block: its certificate check, its writes and moving
    /// the head.
    pub block_commit_seconds: Histogram,
    /// The synced write of the consensus safety state before a vote leaves.
    pub safety_persist_seconds: Histogram,
    /// From this node starting a height to committing it.
    pub height_seconds: Histogram,
    /// Transactions checked together in one admission round (one batch
    /// signature verification): bigger rounds verify faster per signature.
    pub admission_round_transactions: Histogram,
    /// One pruning of old tree versions, all its steps (it runs beside the
    /// commits; one longer than `PRUNE_INTERVAL` heights skips the next).
    pub prune_seconds: Histogram,
    /// Tree nodes deleted by pruning.
    pub pruned_tree_nodes: Counter,
}

/// 1 ms to ~16 s in doublings: stage timings from a fast commit to a
/// stalled round fall in distinct buckets.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keyreg");
        let height = Gauge::default();
        let commits = Counter::default();
        let transactions = Counter::default();
        let mempool_size = Gauge::default();
        let round_timeouts = Family::default();
        let fetched_txs = Counter::default();
        let checked_txs = Counter::default();
        let peers = Gauge::default();
        let sync_lag = Gauge::default();
        let api_rejected = Family::default();
        let gossip_batches = Family::default();
        let block_execute_seconds = seconds_histogram();
        let block_commit_seconds = seconds_histogram();
        let safety_persist_seconds = seconds_histogram();
        let height_seconds = seconds_histogram();
        let admission_round_transactions = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        let prune_seconds = seconds_histogram();
        let pruned_tree_nodes = Counter::default();
        registry.register(
            "height",
            "Height of the latest committed block",
            height.clone(),
        );
        registry.register("commits", "Blocks committed", commits.clone());
        registry.register(
            "transactions",
            "Transactions in committed blocks",
            transactions.clone(),
        );
        registry.register(
            "mempool_size",
            "Transactions waiting in the mempool",
            mempool_size.clone(),
        );
        registry.register(
            "round_timeouts",
            "Consensus round timeouts that moved the engine on, by step (propose, prevote, precommit)",
            round_timeouts.clone(),
        );
        registry.register(
            "fetched_txs",
            "Proposal transactions fetched from peers (not gossiped here in time)",
            fetched_txs.clone(),
        );
        registry.register(
            "checked_txs",
            "Transactions whose signatures this node checked (admission and proposals)",
            checked_txs.clone(),
        );
        registry.register("peers", "Connected peers", peers.clone());
        registry.register(
            "sync_lag",
            "Blocks between the best known peer height and ours",
            sync_lag.clone(),
        );
        registry.register(
            "api_rejected",
            "API requests turned away (overload, rate limits, full mempool)",
            api_rejected.clone(),
        );
        registry.register(
            "gossip_batches",
            "Transaction batches received from peers, by verdict: relay (checked, new), ignore (nothing new or not checkable here), reject (invalid: the sender misbehaves)",
            gossip_batches.clone(),
        );
        registry.register(
            "block_execute_seconds",
            "Executing a block against its parent state (propose or validate)",
            block_execute_seconds.clone(),
        );
        registry.register(
            "block_commit_seconds",
            "Committing a block (certificate check, the block's synced write and its tree and indexes' unlogged one, moving the head)",
            block_commit_seconds.clone(),
        );
        registry.register(
            "safety_persist_seconds",
            "Synced writes of the consensus safety state before votes",
            safety_persist_seconds.clone(),
        );
        registry.register(
            "height_seconds",
            "From starting a height to committing it",
            height_seconds.clone(),
        );
        registry.register(
            "admission_round_transactions",
            "Transactions checked together in one admission round (one batch verification)",
            admission_round_transactions.clone(),
        );
        registry.register(
            "prune_seconds",
            "One pruning of old tree versions, all its steps (beside the commits)",
            prune_seconds.clone(),
        );
        registry.register(
            "pruned_tree_nodes",
            "Tree nodes deleted by pruning old versions",
            pruned_tree_nodes.clone(),
        );
        Metrics {
            registry: std::sync::Arc::new(registry),
            height,
            commits,
            transactions,
            mempool_size,
            round_timeouts,
            fetched_txs,
            checked_txs,
            peers,
            sync_lag,
            api_rejected,
            gossip_batches,
            block_execute_seconds,
            block_commit_seconds,
            safety_persist_seconds,
            height_seconds,
            admission_round_transactions,
            prune_seconds,
            pruned_tree_nodes,
        }
    }

    /// A round's `step` (`propose`, `prevote` or `precommit`) timed out.
    pub fn count_round_timeout(&self, step: &'static str) {
        self.round_timeouts.get_or_create(&[("step", step)]).inc();
    }

    pub fn count_rejection(&self, reason: Rejection) {
        self.api_rejected.get_or_create(&reason.label()).inc();
    }

    /// A transaction batch from a peer got `verdict`.
    pub fn gossip_batch(&self, verdict: RelayVerdict) {
        self.gossip_batches
            .get_or_create(&verdict_label(verdict))
            .inc();
    }

    /// Transaction batches from peers that got `verdict` so far.
    pub fn gossip_batches(&self, verdict: RelayVerdict) -> u64 {
        self.gossip_batches
            .get_or_create(&verdict_label(verdict))
            .get()
    }

    /// Requests turned away for `reason` so far.
    pub fn rejections(&self, reason: Rejection) -> u64 {
        self.api_rejected.get_or_create(&reason.label()).get()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric() {
        let m = Metrics::new();
        m.height.set(42);
        m.commits.inc();
        m.count_rejection(Rejection::Overloaded);
        m.block_commit_seconds.observe(0.003);
        m.count_round_timeout("precommit");
        m.gossip_batch(RelayVerdict::Reject);
        let text = m.render();
        for name in [
            "keyreg_height 42",
            "keyreg_commits_total 1",
            "keyreg_transactions_total 0",
            "keyreg_mempool_size 0",
            "keyreg_peers 0",
            "keyreg_sync_lag 0",
            "keyreg_api_rejected_total{reason=\"overloaded\"} 1",
            "keyreg_block_commit_seconds_count 1",
            "keyreg_block_commit_seconds_bucket{le=\"0.002\"} 0",
            "keyreg_block_commit_seconds_bucket{le=\"0.004\"} 1",
            "keyreg_height_seconds_count 0",
            "keyreg_admission_round_transactions_count 0",
            "keyreg_prune_seconds_count 0",
            "keyreg_pruned_tree_nodes_total 0",
            "keyreg_round_timeouts_total{step=\"precommit\"} 1",
            "keyreg_gossip_batches_total{verdict=\"reject\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
