//! Node configuration: `<home>/config.toml`, overridable by command-line
//! flags and `KEYREG_*` environment variables (flag > env > file > default).
//!
//! A node's home directory holds:
//!
//! | path            | what                                                  |
//! |-----------------|-------------------------------------------------------|
//! | `config.toml`   | this configuration                                    |
//! | `genesis.json`  | the chain's genesis (identical on every node)         |
//! | `node.key`      | the node's Ed25519 seed (validator key = libp2p id), 0600, optionally sealed under a passphrase |
//! | `data/`         | the RocksDB ledger store                              |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use keyreg_consensus::PublicKey;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const CONFIG_FILE: &str = "config.toml";
pub const GENESIS_FILE: &str = "genesis.json";
pub const KEY_FILE: &str = "node.key";
pub const DATA_DIR: &str = "data";

/// A config file larger than this is not a config file.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("invalid {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub p2p: P2pConfig,
    pub api: ApiConfig,
    pub consensus: ConsensusConfig,
    pub mempool: MempoolConfig,
    pub storage: StorageConfig,
    pub keys: KeysConfig,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// File holding the passphrase of a sealed `node.key` (mode 0600).
    /// Without it, `KEYREG_PASSPHRASE_FILE` or `KEYREG_PASSPHRASE` is used.
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// libp2p listen multiaddr.
    pub listen: String,
    /// Peers to keep connected to: multiaddrs ending in `/p2p/<peer id>`.
    pub persistent_peers: Vec<String>,
    /// Public keys (hex) of non-validator observer nodes allowed to connect,
    /// in addition to the current validator set.
    pub observer_keys: Vec<PublicKey>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// HTTP API listen address.
    pub listen: SocketAddr,
    /// Load shedding and per-client rate limits.
    pub limits: ApiLimits,
}

/// How the API sheds load: a global bound on requests in progress (503
/// `overloaded` beyond it, never a queue) and per-client token buckets for
/// look-ups and submissions (429 `rate_limited` with `Retry-After`).
/// `/healthz` and `/metrics` are exempt from both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiLimits {
    /// Requests handled at once, over all clients.
    pub max_in_flight: usize,
    /// Longest a request may take once admitted, reading its body included
    /// (408 beyond), so slow clients cannot pin the in-flight slots.
    pub request_timeout_ms: u64,
    /// Sustained `GET` requests per second per client address (IPv6: per /64).
    pub lookups_per_second: u32,
    /// Look-ups a client may make at once after being idle.
    pub lookup_burst: u32,
    /// Sustained `POST /v1/transactions` per second per client address.
    pub submissions_per_second: u32,
    /// Submissions a client may make at once after being idle.
    pub submission_burst: u32,
    /// Client addresses tracked per bucket kind; when full, refilled entries
    /// and then the least recently seen one are evicted.
    pub max_tracked_clients: usize,
    /// Loopback clients skip the per-client limits (benchmarks, local
    /// tools). Behind a reverse proxy on the same host every client looks
    /// like loopback: set this to false and limit in the proxy.
    pub exempt_loopback: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsensusConfig {
    /// Least time from the start of one height to the start of the next
    /// while transactions wait, in milliseconds (shortened as half a block's
    /// worth fills; see the driver's pacing).
    pub min_block_interval_ms: u64,
    /// With an empty mempool, the longest time before an empty "heartbeat"
    /// block, so certified headers stay fresh for light clients.
    pub heartbeat_interval_ms: u64,
    /// Base propose timeout of round 0, in milliseconds (grows per round).
    pub timeout_propose_ms: u64,
    /// Base prevote/precommit timeout of round 0, in milliseconds.
    pub timeout_vote_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MempoolConfig {
    /// Transactions held, at most. The default holds about 8 heights of
    /// full 2 MiB blocks: with links of 100 ms one way, 20 000 (the earlier
    /// default) filled up under load and left validators fetching what
    /// their pools had refused (docs/benchmarks.md, session 21). About
    /// 1 KB of memory per transaction held.
    pub max_txs: usize,
    /// Encoded bytes of the transactions held, at most.
    pub max_bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// State-tree versions kept for proofs at past heights: those of the
    /// last this many heights. 0 keeps every version (an archive node).
    /// Blocks and certificates are always kept, so auditors can replay.
    pub keep_tree_versions: u64,
}

/// How often (in heights) a node deletes tree versions it no longer keeps.
pub const PRUNE_INTERVAL: u64 = 100;

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            keep_tree_versions: 1000,
        }
    }
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            listen: "/ip4/0.0.0.0/tcp/26656".into(),
            persistent_peers: Vec::new(),
            observer_keys: Vec::new(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            limits: ApiLimits::default(),
        }
    }
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_in_flight: 256,
            request_timeout_ms: 10_000,
            lookups_per_second: 100,
            lookup_burst: 200,
            submissions_per_second: 200,
            submission_burst: 400,
            max_tracked_clients: 10_000,
            exempt_loopback: true,
        }
    }
}

impl Default for ConsensusConfig {
    fn default() -> Self {
        ConsensusConfig {
            min_block_interval_ms: 200,
            heartbeat_interval_ms: 3000,
            timeout_propose_ms: 1500,
            timeout_vote_ms: 1000,
        }
    }
}

impl Default for MempoolConfig {
    fn default() -> Self {
        MempoolConfig {
            max_txs: 50_000,
            max_bytes: 64 << 20,
        }
    }
}

/// Values given on the command line or in `KEYREG_*` variables; each one
/// present replaces the file's value.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub p2p_listen: Option<String>,
    pub persistent_peers: Option<Vec<String>>,
    pub api_listen: Option<SocketAddr>,
    pub passphrase_file: Option<PathBuf>,
}

impl Config {
    /// Reads `<home>/config.toml`.
    pub fn load(home: &Path) -> Result<Self, ConfigError> {
        let path = home.join(CONFIG_FILE);
        let io = |source| ConfigError::Io {
            path: path.clone(),
            source,
        };
        let meta = std::fs::metadata(&path).map_err(io)?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path });
        }
        let text = std::fs::read_to_string(&path).map_err(io)?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        config.check()?;
        Ok(config)
    }

    /// Writes `<home>/config.toml`.
    pub fn save(&self, home: &Path) -> Result<(), ConfigError> {
        let path = home.join(CONFIG_FILE);
        let text = toml::to_string_pretty(self).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(|source| ConfigError::Io { path, source })
    }

    pub fn apply(&mut self, overrides: Overrides) -> Result<(), ConfigError> {
        if let Some(listen) = overrides.p2p_listen {
            self.p2p.listen = listen;
        }
        if let Some(peers) = overrides.persistent_peers {
            self.p2p.persistent_peers = peers;
        }
        if let Some(listen) = overrides.api_listen {
            self.api.listen = listen;
        }
        if let Some(file) = overrides.passphrase_file {
            self.keys.passphrase_file = Some(file);
        }
        self.check()
    }

    /// Checks what serde cannot: multiaddrs parse and durations are sane.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| ConfigError::Invalid { key, reason };
        self.p2p
            .listen
            .parse::<libp2p::Multiaddr>()
            .map_err(|e| invalid("p2p.listen", e.to_string()))?;
        for peer in &self.p2p.persistent_peers {
            peer.parse::<libp2p::Multiaddr>()
                .map_err(|e| invalid("p2p.persistent_peers", format!("{peer}: {e}")))?;
        }
        let c = &self.consensus;
        for (key, value) in [
            ("consensus.timeout_propose_ms", c.timeout_propose_ms),
            ("consensus.timeout_vote_ms", c.timeout_vote_ms),
            ("consensus.heartbeat_interval_ms", c.heartbeat_interval_ms),
        ] {
            if !(10..=600_000).contains(&value) {
                return Err(invalid(key, format!("{value} ms is outside 10..=600000")));
            }
        }
        if c.min_block_interval_ms > c.heartbeat_interval_ms {
            return Err(invalid(
                "consensus.min_block_interval_ms",
                "must not exceed heartbeat_interval_ms".into(),
            ));
        }
        if self.mempool.max_txs == 0 || self.mempool.max_bytes == 0 {
            return Err(invalid("mempool", "limits must be positive".into()));
        }
        let l = &self.api.limits;
        for (key, value) in [
            ("api.limits.max_in_flight", l.max_in_flight as u64),
            ("api.limits.request_timeout_ms", l.request_timeout_ms),
            ("api.limits.lookups_per_second", l.lookups_per_second.into()),
            ("api.limits.lookup_burst", l.lookup_burst.into()),
            (
                "api.limits.submissions_per_second",
                l.submissions_per_second.into(),
            ),
            ("api.limits.submission_burst", l.submission_burst.into()),
            (
                "api.limits.max_tracked_clients",
                l.max_tracked_clients as u64,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be positive".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_applies_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.p2p.observer_keys = vec![PublicKey([3; 32])];
        config.save(dir.path()).unwrap();
        let mut loaded = Config::load(dir.path()).unwrap();
        assert_eq!(loaded, config);
        loaded
            .apply(Overrides {
                api_listen: Some("127.0.0.1:9999".parse().unwrap()),
                ..Overrides::default()
            })
            .unwrap();
        assert_eq!(loaded.api.listen.port(), 9999);
        assert_eq!(loaded.p2p, config.p2p);
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "[api]\nlisten = \"127.0.0.1:1\"\ntypo = 1\n",
        )
        .unwrap();
        assert!(matches!(
            Config::load(dir.path()),
            Err(ConfigError::Parse { .. })
        ));
        let mut config = Config::default();
        assert!(config
            .apply(Overrides {
                p2p_listen: Some("not a multiaddr".into()),
                ..Overrides::default()
            })
            .is_err());
    }
}
