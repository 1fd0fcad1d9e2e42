//! The RocksDB ledger store (feature `rocksdb`).
//!
//! Column families (heights are 8-byte big-endian so keys sort by height):
//!
//! | family    | key                              | value                       |
//! |-----------|----------------------------------|-----------------------------|
//! | `blocks`  | height                           | [`Block`] bytes             |
//! | `headers` | height                           | [`Header`] bytes            |
//! | `certs`   | height (>= 1)                    | [`CommitCertificate`] bytes |
//! | `nodes`   | `NodeKey::to_bytes()`            | `Node::to_bytes()`          |
//! | `stale`   | version (stale since)            | `NodeKey::list_to_bytes`    |
//! | `txs`     | tx hash                          | [`TxLocation`] bytes        |
//! | `values`  | state key (32 bytes)             | the value at the head       |
//! | `meta`    | `keyreg/…` (ours), `node/…` (the node's) | bytes               |
//!
//! A block is two writes. The first holds what only the network can give
//! back (the block, its header and certificate, the new head) and is synced
//! to the write-ahead log. The second holds what can be computed again from
//! those blocks (tree nodes, the stale index, the head value and transaction
//! indexes, and `keyreg/tree-height`, the height they match) and skips the
//! log: most of a block's bytes are tree nodes, and logging them was a copy,
//! a checksum and a sync of several megabytes per block. Flushes are atomic
//! across the column families, so a crash leaves the unlogged families at
//! one earlier height, never a mixture; [`LedgerStore::stored_head`] says
//! which blocks to execute again (see `Ledger::open`). Every other write
//! (genesis, pruning, the node's metadata) is one `WriteBatch` synced to
//! the log.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use keyreg_consensus::certificate::CommitCertificate;
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::Hash;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType,
    FlushOptions, IteratorMode, Options, WaitForCompactOptions, WriteBatch, WriteOptions, DB,
};

use super::top_nodes::TopNodes;
use super::{
    check_append, decode_stored, LedgerStore, PruneStep, StoreError, TxLocation, PRUNE_CHUNK,
};
use crate::block::{Block, CommittedBlock, Header};
use crate::execute::TxResult;
use crate::state::StateChanges;
use crate::tree::{Node, NodeCodecError, NodeKey, NodeReader, StaleNode, TreeBatch, TreeError};

const CF_BLOCKS: &str = "blocks";
const CF_HEADERS: &str = "headers";
const CF_CERTS: &str = "certs";
const CF_NODES: &str = "nodes";
const CF_STALE: &str = "stale";
const CF_TXS: &str = "txs";
const CF_META: &str = "meta";
const CF_VALUES: &str = "values";
const COLUMN_FAMILIES: [&str; 8] = [
    CF_BLOCKS, CF_HEADERS, CF_CERTS, CF_NODES, CF_STALE, CF_TXS, CF_META, CF_VALUES,
];

const META_HEAD: &[u8] = b"keyreg/head";
const META_GENESIS: &[u8] = b"keyreg/genesis";
const META_OLDEST_TREE: &[u8] = b"keyreg/oldest-tree-version";
/// The height the head value index (`values`) matches.
const META_VALUES_HEIGHT: &[u8] = b"keyreg/head-values-height";
/// The height the tree nodes and indexes match (unlogged, see the module
/// docs); a store written before it existed logged them with the block.
const META_TREE_HEIGHT: &[u8] = b"keyreg/tree-height";
const NODE_META_PREFIX: &[u8] = b"node/";
/// Every this many heights a block's write also starts a flush (not waited
/// for), so a crash executes again at most about this many blocks even
/// when the memtables fill slowly (a few kilobytes of tree per block at
/// low load; without it, until 64 MiB). Under load memtables fill and
/// flush far more often than this.
pub const FLUSH_EVERY_BLOCKS: u64 = 256;
/// Block cache shared by every column family (data, index and filter
/// blocks): bounds the store's read memory whatever the registry's size.
const BLOCK_CACHE_BYTES: usize = 256 << 20;
/// Bloom filter bits per key: ~1% false positives, so a look-up of an absent
/// key (a new transaction's hash in the index, a tree node not in a level)
/// rarely reads a data block.
const BLOOM_BITS_PER_KEY: f64 = 10.0;

/// Compression by level (RocksDB's `compression_per_level`: the first entry
/// is L0, the next the base level and every level below it). A memtable's
/// flush writes L0 uncompressed: L0 files are compacted again soon, and the
/// data is mostly hashes and keys (LZ4 shrank a 200 000-device store's tree
/// nodes by 13 %), so compressing there cost flushes most of their CPU (5 %
/// of a node's in long runs, docs/benchmarks.md session 18) for little.
/// Levels below are LZ4 and the bottom one Zstandard, where the data stays.
const COMPRESSION_PER_LEVEL: [DBCompressionType; 2] =
    [DBCompressionType::None, DBCompressionType::Lz4];

/// Options of every column family: point look-ups dominate (tree nodes by
/// key, transactions by hash, blocks by height), so bloom filters in the
/// tables and the memtables, index and filter blocks held in the bounded
/// cache; compression as [`COMPRESSION_PER_LEVEL`] and Zstandard for the
/// bottom level.
fn column_family_options(cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_memtable_whole_key_filtering(true);
    opts.set_memtable_prefix_bloom_ratio(0.02);
    opts.set_compression_per_level(&COMPRESSION_PER_LEVEL);
    opts.set_bottommost_compression_type(DBCompressionType::Zstd);
    opts
}

fn backend(e: rocksdb::Error) -> StoreError {
    StoreError::Backend(e.into_string())
}

fn height_key(height: u64) -> [u8; 8] {
    height.to_be_bytes()
}

fn decode_u64(what: &'static str, bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Backend(format!("stored {what} is not 8 bytes")))?;
    Ok(u64::from_be_bytes(arr))
}

fn node_meta_key(key: &[u8]) -> Vec<u8> {
    let mut k = NODE_META_PREFIX.to_vec();
    k.extend_from_slice(key);
    k
}

/// A transaction index record: the hash and its encoded [`TxLocation`].
type TxIndexEntry = ([u8; 32], Vec<u8>);

/// Bytes a write batch spends on one record besides its key and value, at
/// most (tag, column family id and two length varints).
const RECORD_OVERHEAD: usize = 16;

/// A record's size in a write batch, at most.
fn record_bytes(key_len: usize, value_len: usize) -> usize {
    key_len + value_len + RECORD_OVERHEAD
}

/// Room in a block's write batch for its header and for the records
/// besides the values counted one by one (block, header and certificate by
/// height, the head and the index height in `meta`), keys of at most 32
/// bytes each, with a margin.
const SMALL_RECORDS: usize = 8;

/// A tree update's records for the `nodes` and `stale` column families.
/// New nodes go in ascending key order (`NodeKey`'s order is its bytes'
/// order). A block's node keys all start with its version, the highest
/// stored, so in that order they are appends at the end of the memtable's
/// skip list, where RocksDB's sequential-insert hint finds each position in
/// a step or two instead of a search from the top. Each is encoded straight
/// into the write batch through two reused buffers, not into allocations of
/// its own. The nodes a version made stale are one `stale` entry under that
/// version (one insert per block instead of one per node, about a third of
/// a block's records).
struct TreeRecords<'t> {
    nodes: &'t [(NodeKey, Node)],
    stale: Vec<([u8; 8], Vec<u8>)>,
}

impl<'t> TreeRecords<'t> {
    /// Sorts `tree`'s new nodes by key and encodes its stale index entries.
    fn new(tree: &'t mut TreeBatch) -> Self {
        tree.new_nodes.sort_unstable_by_key(|(key, _)| *key);
        // A tree update's stale nodes are all stale since its own version;
        // grouping keeps the encoding right for any batch.
        let mut by_version: BTreeMap<u64, Vec<&NodeKey>> = BTreeMap::new();
        for stale in &tree.stale_nodes {
            by_version
                .entry(stale.stale_since_version)
                .or_default()
                .push(&stale.node_key);
        }
        let stale = by_version
            .into_iter()
            .map(|(version, keys)| (height_key(version), NodeKey::list_to_bytes(keys)))
            .collect();
        TreeRecords {
            nodes: &tree.new_nodes,
            stale,
        }
    }

    /// The update's size in a write batch, at most.
    fn bytes(&self) -> usize {
        let nodes: usize = self
            .nodes
            .iter()
            .map(|(key, node)| record_bytes(key.encoded_len(), node.encoded_len()))
            .sum();
        let stale: usize = self
            .stale
            .iter()
            .map(|(key, list)| record_bytes(key.len(), list.len()))
            .sum();
        nodes + stale
    }
}

/// Decodes a `stale` entry: the version its nodes are stale since, and
/// their keys. Stores written before the per-version index hold one entry
/// per node instead ([`StaleNode::to_bytes`], empty value); both are read.
fn decode_stale_entry(key: &[u8], value: &[u8]) -> Result<(u64, Vec<NodeKey>), StoreError> {
    let corrupt = |e: NodeCodecError| StoreError::Backend(format!("stale index entry: {e}"));
    match <[u8; 8]>::try_from(key) {
        Ok(version) => Ok((
            u64::from_be_bytes(version),
            NodeKey::list_from_bytes(value).map_err(corrupt)?,
        )),
        Err(_) => {
            let entry = StaleNode::from_bytes(key).map_err(corrupt)?;
            Ok((entry.stale_since_version, vec![entry.node_key]))
        }
    }
}

/// What one column family's tables hold (its memtables not counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnFamilySize {
    pub name: &'static str,
    pub entries: u64,
    /// Keys and values as written, before compression.
    pub raw_bytes: u64,
    /// The tables' data blocks on disk.
    pub stored_bytes: u64,
}

/// The integer `field` (`"raw key size"`) of RocksDB's
/// `rocksdb.aggregated-table-properties` text (`"name=value; ..."`).
fn table_property(properties: &str, field: &str) -> Result<u64, StoreError> {
    properties
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| name.trim() == field)
        .and_then(|(_, value)| value.trim().parse().ok())
        .ok_or_else(|| StoreError::Backend(format!("table properties lack {field:?}")))
}

pub struct RocksLedgerStore {
    db: DB,
    /// The height the tree and indexes match.
    head: Option<u64>,
    /// The newest durable block (`>= head`).
    stored_head: Option<u64>,
    /// Whether `values` matches the head (see [`LedgerStore::has_head_index`]).
    head_index: bool,
    /// Set while a block written durably has not become the head: `values`
    /// is then ahead of the head, so executions read through the tree.
    written_ahead: AtomicBool,
    /// The head tree's top levels, in memory.
    top: TopNodes,
}

impl RocksLedgerStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // The unlogged families must reach the disk together (module docs).
        opts.set_atomic_flush(true);
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cfs = COLUMN_FAMILIES
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, column_family_options(&cache)));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(backend)?;
        let mut store = RocksLedgerStore {
            db,
            head: None,
            stored_head: None,
            head_index: false,
            written_ahead: AtomicBool::new(false),
            top: TopNodes::default(),
        };
        store.stored_head = store
            .get(CF_META, META_HEAD)?
            .map(|b| decode_u64("head", &b))
            .transpose()?;
        store.head = match (store.stored_head, store.get(CF_META, META_TREE_HEIGHT)?) {
            (None, _) => None,
            (Some(stored), Some(tree)) => {
                let tree = decode_u64("tree height", &tree)?;
                if tree > stored {
                    return Err(StoreError::Backend(format!(
                        "tree height {tree} is above the newest stored block {stored}"
                    )));
                }
                Some(tree)
            }
            (Some(stored), None) => {
                // Written before the tree went unlogged: it matches the
                // head. Logged now, before an unlogged write can follow.
                let mut batch = WriteBatch::default();
                batch.put_cf(store.cf(CF_META)?, META_TREE_HEIGHT, height_key(stored));
                store.write(batch)?;
                Some(stored)
            }
        };
        let values_height = store
            .get(CF_META, META_VALUES_HEIGHT)?
            .map(|b| decode_u64("head values height", &b))
            .transpose()?;
        // An empty store gets the index with its genesis.
        store.head_index = store.head.is_none() || values_height == store.head;
        if let Some(head) = store.head {
            store.top = TopNodes::load(&store, head)
                .map_err(|e| StoreError::Backend(format!("the head tree's top levels: {e}")))?;
        }
        Ok(store)
    }

    /// Each column family's tables: entries, raw and stored bytes (for
    /// benchmarks and operators). What is still only in the memtables
    /// (and the WAL) is not counted.
    pub fn column_family_sizes(&self) -> Result<Vec<ColumnFamilySize>, StoreError> {
        COLUMN_FAMILIES
            .iter()
            .map(|name| {
                let properties = self
                    .db
                    .property_value_cf(self.cf(name)?, "rocksdb.aggregated-table-properties")
                    .map_err(backend)?
                    .unwrap_or_default();
                let field = |field| table_property(&properties, field);
                Ok(ColumnFamilySize {
                    name,
                    entries: field("# entries")?,
                    raw_bytes: field("raw key size")? + field("raw value size")?,
                    stored_bytes: field("data block size")?,
                })
            })
            .collect()
    }

    fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StoreError::Backend(format!("column family {name} missing")))
    }

    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get_cf(self.cf(cf)?, key).map_err(backend)
    }

    fn get_decoded<T: Canonical>(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.get(cf, key)?
            .map(|b| decode_stored(cf, &b))
            .transpose()
    }

    /// Writes `batch` synced to the write-ahead log.
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts).map_err(backend)
    }

    /// Writes `batch` without the write-ahead log: it reaches the disk with
    /// the next (atomic) flush, or is lost in a crash before it.
    fn write_unlogged(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        self.db.write_opt(batch, &opts).map_err(backend)
    }

    /// Flushes every column family's memtables together, so everything
    /// written unlogged so far reaches the disk; `wait`: before returning.
    fn flush_all(&self, wait: bool) -> Result<(), StoreError> {
        let cfs = COLUMN_FAMILIES
            .iter()
            .map(|name| self.cf(name))
            .collect::<Result<Vec<_>, _>>()?;
        let mut opts = FlushOptions::default();
        opts.set_wait(wait);
        self.db.flush_cfs_opt(&cfs, &opts).map_err(backend)
    }

    /// Waits until the flushes and compactions running in the background
    /// finish (for tests and tools that need the disk settled).
    pub fn wait_for_background_work(&self) -> Result<(), StoreError> {
        self.db
            .wait_for_compact(&WaitForCompactOptions::default())
            .map_err(backend)
    }

    /// Adds a tree update's records to `batch`.
    fn add_tree_batch(&self, batch: &mut WriteBatch, tree: TreeRecords) -> Result<(), StoreError> {
        let nodes = self.cf(CF_NODES)?;
        let (mut key_bytes, mut node_bytes) = (Vec::new(), Vec::new());
        for (key, node) in tree.nodes {
            key_bytes.clear();
            key.write_bytes(&mut key_bytes);
            node_bytes.clear();
            node.write_bytes(&mut node_bytes);
            batch.put_cf(nodes, &key_bytes, &node_bytes);
        }
        let stale = self.cf(CF_STALE)?;
        for (version, list) in tree.stale {
            batch.put_cf(stale, version, list);
        }
        Ok(())
    }

    /// The block's new transaction index entries, in hash order (see
    /// [`TreeRecords`]), looked up with one batched read. The first commit
    /// of a hash wins; a later copy was a rejected replay.
    fn tx_index_entries(
        &self,
        height: u64,
        results: &[TxResult],
        tx_hashes: &[Hash],
    ) -> Result<Vec<TxIndexEntry>, StoreError> {
        // (hash, index in the block), sorted; the first index of a hash kept.
        let mut firsts: Vec<(&Hash, usize)> = tx_hashes.iter().zip(0..).collect();
        firsts.sort_unstable();
        firsts.dedup_by(|later, earlier| later.0 == earlier.0);
        let committed = self.db.batched_multi_get_cf(
            self.cf(CF_TXS)?,
            firsts.iter().map(|(hash, _)| &hash.0),
            true,
        );
        let mut entries = Vec::with_capacity(firsts.len());
        for ((hash, index), committed) in firsts.into_iter().zip(committed) {
            if committed.map_err(backend)?.is_some() {
                continue;
            }
            let (Some(result), Ok(index32)) = (results.get(index), u32::try_from(index)) else {
                return Err(StoreError::Order(format!(
                    "transaction {index} has no result or is beyond a block's u32 index"
                )));
            };
            let location = TxLocation {
                version: TxLocation::VERSION,
                height,
                index: index32,
                result: result.clone(),
            };
            entries.push((hash.0, location.to_bytes()));
        }
        Ok(entries)
    }

    /// Adds `changes` to the head value index, tagged with `height`, when
    /// the store keeps one.
    fn add_head_values(
        &self,
        batch: &mut WriteBatch,
        height: u64,
        changes: &StateChanges,
    ) -> Result<(), StoreError> {
        if !self.head_index {
            return Ok(());
        }
        let values = self.cf(CF_VALUES)?;
        for (key, value) in changes {
            match value {
                Some(value) => batch.put_cf(values, key.0, value),
                None => batch.delete_cf(values, key.0),
            }
        }
        batch.put_cf(self.cf(CF_META)?, META_VALUES_HEIGHT, height_key(height));
        Ok(())
    }
}

impl NodeReader for RocksLedgerStore {
    fn get_node(&self, key: &NodeKey) -> Result<Option<Node>, TreeError> {
        if let Some(node) = self.top.get(key) {
            return Ok(Some(node.clone()));
        }
        // Decoded from RocksDB's pinned buffer: no copy into a Vec first.
        let bytes = self
            .cf(CF_NODES)
            .and_then(|cf| self.db.get_pinned_cf(cf, key.to_bytes()).map_err(backend))
            .map_err(|e| TreeError::Store(e.to_string()))?;
        Ok(bytes.map(|b| Node::from_bytes(&b)).transpose()?)
    }
}

impl LedgerStore for RocksLedgerStore {
    fn head(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.head)
    }

    fn stored_head(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.stored_head)
    }

    fn genesis_hash(&self) -> Result<Option<Hash>, StoreError> {
        self.get(CF_META, META_GENESIS)?
            .map(|b| {
                Hash::from_slice(&b)
                    .map_err(|_| StoreError::Backend("stored genesis hash is not 32 bytes".into()))
            })
            .transpose()
    }

    fn header(&self, height: u64) -> Result<Option<Header>, StoreError> {
        self.get_decoded(CF_HEADERS, &height_key(height))
    }

    fn block(&self, height: u64) -> Result<Option<Block>, StoreError> {
        self.get_decoded(CF_BLOCKS, &height_key(height))
    }

    fn certificate(&self, height: u64) -> Result<Option<CommitCertificate>, StoreError> {
        self.get_decoded(CF_CERTS, &height_key(height))
    }

    fn tx_location(&self, tx_hash: &Hash) -> Result<Option<TxLocation>, StoreError> {
        self.get_decoded(CF_TXS, &tx_hash.0)
    }

    fn are_committed(&self, tx_hashes: &[&Hash]) -> Result<Vec<bool>, StoreError> {
        self.db
            .batched_multi_get_cf(self.cf(CF_TXS)?, tx_hashes.iter().map(|h| &h.0), false)
            .into_iter()
            .map(|found| Ok(found.map_err(backend)?.is_some()))
            .collect()
    }

    fn write_genesis(
        &mut self,
        genesis_hash: &Hash,
        header: &Header,
        mut tree: TreeBatch,
        state: &StateChanges,
    ) -> Result<(), StoreError> {
        if self.head.is_some() || header.height != 0 || tree.version != 0 {
            return Err(StoreError::Order("genesis into a non-empty store".into()));
        }
        let block = Block {
            version: Block::VERSION,
            header: header.clone(),
            transactions: Vec::new(),
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_BLOCKS)?, height_key(0), block.to_bytes());
        batch.put_cf(self.cf(CF_HEADERS)?, height_key(0), header.to_bytes());
        self.add_tree_batch(&mut batch, TreeRecords::new(&mut tree))?;
        self.add_head_values(&mut batch, 0, state)?;
        let meta = self.cf(CF_META)?;
        batch.put_cf(meta, META_GENESIS, genesis_hash.0);
        batch.put_cf(meta, META_HEAD, height_key(0));
        batch.put_cf(meta, META_TREE_HEIGHT, height_key(0));
        self.write(batch)?;
        self.top.apply(tree);
        self.head = Some(0);
        self.stored_head = Some(0);
        Ok(())
    }

    fn write_block_durably(
        &self,
        committed: &CommittedBlock,
        tree: &mut TreeBatch,
        changes: &StateChanges,
        results: &[TxResult],
        tx_hashes: &[Hash],
    ) -> Result<(), StoreError> {
        check_append(self.head, committed, tree, results, tx_hashes)?;
        let block = &committed.block;
        let height = block.header.height;
        // Logged and synced first: a flush never holds a block's tree
        // without the block. A block at or below the stored head is one
        // being executed again after a crash; it is already durable.
        if self.stored_head.is_none_or(|stored| height > stored) {
            let block_bytes = block.to_bytes();
            let header_bytes = block.header.to_bytes();
            let certificate_bytes = committed.certificate.to_bytes();
            let mut batch = WriteBatch::with_capacity_bytes(
                block_bytes.len()
                    + header_bytes.len()
                    + certificate_bytes.len()
                    + SMALL_RECORDS * record_bytes(32, 0),
            );
            batch.put_cf(self.cf(CF_BLOCKS)?, height_key(height), block_bytes);
            batch.put_cf(self.cf(CF_HEADERS)?, height_key(height), header_bytes);
            batch.put_cf(self.cf(CF_CERTS)?, height_key(height), certificate_bytes);
            batch.put_cf(self.cf(CF_META)?, META_HEAD, height_key(height));
            self.write(batch)?;
        } else if self.header(height)?.map(|stored| stored.hash()) != Some(block.header.hash()) {
            return Err(StoreError::Order(format!(
                "block {height} is not the one stored at that height"
            )));
        }
        // Before the values change (module docs of `store`).
        self.written_ahead.store(true, Ordering::SeqCst);
        let tree_records = TreeRecords::new(tree);
        let tx_index = self.tx_index_entries(height, results, tx_hashes)?;
        // Sized up front: a block's batch is megabytes, and growing it by
        // doubling copies it and touches fresh pages each time.
        let values_bytes: usize = changes
            .values()
            .map(|value| record_bytes(32, value.as_ref().map_or(0, Vec::len)))
            .sum();
        let tx_index_bytes: usize = tx_index
            .iter()
            .map(|(_, location)| record_bytes(32, location.len()))
            .sum();
        let mut batch = WriteBatch::with_capacity_bytes(
            tree_records.bytes()
                + values_bytes
                + tx_index_bytes
                + SMALL_RECORDS * record_bytes(32, 0),
        );
        self.add_tree_batch(&mut batch, tree_records)?;
        self.add_head_values(&mut batch, height, changes)?;
        let txs = self.cf(CF_TXS)?;
        for (hash, location) in tx_index {
            batch.put_cf(txs, hash, location);
        }
        batch.put_cf(self.cf(CF_META)?, META_TREE_HEIGHT, height_key(height));
        self.write_unlogged(batch)?;
        if height.is_multiple_of(FLUSH_EVERY_BLOCKS) {
            self.flush_all(false)?;
        }
        Ok(())
    }

    fn advance_head(
        &mut self,
        committed: &CommittedBlock,
        tree: TreeBatch,
        _changes: &StateChanges,
        results: &[TxResult],
        tx_hashes: &[Hash],
    ) -> Result<(), StoreError> {
        check_append(self.head, committed, &tree, results, tx_hashes)?;
        let height = committed.block.header.height;
        let written = self
            .get(CF_META, META_TREE_HEIGHT)?
            .map(|bytes| decode_u64("tree height", &bytes))
            .transpose()?;
        if written != Some(height) {
            return Err(StoreError::Order(format!(
                "head moved to block {height} before its tree was written"
            )));
        }
        self.stored_head = Some(self.stored_head.map_or(height, |stored| stored.max(height)));
        self.top.apply(tree);
        self.head = Some(height);
        self.written_ahead.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn write_meta(&self, puts: &[(&[u8], &[u8])], deletes: &[&[u8]]) -> Result<(), StoreError> {
        let meta = self.cf(CF_META)?;
        let mut batch = WriteBatch::default();
        for (key, value) in puts {
            batch.put_cf(meta, node_meta_key(key), value);
        }
        for key in deletes {
            batch.delete_cf(meta, node_meta_key(key));
        }
        self.write(batch)
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(CF_META, &node_meta_key(key))
    }

    fn prune_tree_step(&self, oldest_kept_version: u64) -> Result<PruneStep, StoreError> {
        if oldest_kept_version > self.oldest_tree_version()? {
            // The deletes are logged, the tree written since the last
            // flush is not: a crash must not leave a height to execute
            // again whose tree is already pruned. Then the versions below
            // read as pruned before their first node goes.
            self.flush_all(true)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(
                self.cf(CF_META)?,
                META_OLDEST_TREE,
                height_key(oldest_kept_version),
            );
            self.write(batch)?;
        }
        let (nodes, stale) = (self.cf(CF_NODES)?, self.cf(CF_STALE)?);
        // Oldest first: the stale index is keyed by stale-since version.
        let mut batch = WriteBatch::default();
        let mut chunk = 0usize;
        let mut done = true;
        for item in self.db.iterator_cf(stale, IteratorMode::Start) {
            let (key, value) = item.map_err(backend)?;
            let (since, keys) = decode_stale_entry(&key, &value)?;
            if since > oldest_kept_version {
                break;
            }
            if chunk >= PRUNE_CHUNK {
                done = false;
                break;
            }
            for node in &keys {
                batch.delete_cf(nodes, node.to_bytes());
            }
            batch.delete_cf(stale, key);
            chunk += keys.len();
        }
        if chunk > 0 {
            self.write(batch)?;
        }
        Ok(PruneStep {
            deleted: chunk as u64,
            done,
        })
    }

    fn has_head_index(&self) -> bool {
        self.head_index && !self.written_ahead.load(Ordering::SeqCst)
    }

    fn head_value(&self, key: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(CF_VALUES, &key.0)
    }

    fn oldest_tree_version(&self) -> Result<u64, StoreError> {
        Ok(self
            .get(CF_META, META_OLDEST_TREE)?
            .map(|b| decode_u64("oldest tree version", &b))
            .transpose()?
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::NibblePath;

    #[test]
    fn a_stale_entry_reads_in_the_per_version_and_the_earlier_per_node_format() {
        let keys = [
            NodeKey::root(3),
            NodeKey {
                version: 2,
                path: NibblePath::prefix_of(&Hash([0x5a; 32]), 5),
            },
        ];
        let entry = decode_stale_entry(&height_key(9), &NodeKey::list_to_bytes(&keys)).unwrap();
        assert_eq!(entry, (9, keys.to_vec()));
        let legacy = StaleNode {
            stale_since_version: 9,
            node_key: keys[1],
        };
        let entry = decode_stale_entry(&legacy.to_bytes(), b"").unwrap();
        assert_eq!(entry, (9, vec![keys[1]]));
        // A truncated list or key is corruption, not an empty entry.
        let list = NodeKey::list_to_bytes(&keys);
        assert!(decode_stale_entry(&height_key(9), &list[..list.len() - 1]).is_err());
        assert!(decode_stale_entry(&[0; 5], b"").is_err());
    }

    #[test]
    fn a_blocks_stale_nodes_are_one_entry_under_its_version() {
        let stale = |version: u64| StaleNode {
            stale_since_version: 7,
            node_key: NodeKey::root(version),
        };
        let mut tree = TreeBatch {
            version: 7,
            root: Hash([1; 32]),
            new_nodes: Vec::new(),
            stale_nodes: vec![stale(6), stale(4)],
        };
        assert_eq!(
            TreeRecords::new(&mut tree).stale,
            vec![(
                height_key(7),
                NodeKey::list_to_bytes(&[NodeKey::root(6), NodeKey::root(4)])
            )]
        );
        let mut none = TreeBatch {
            stale_nodes: Vec::new(),
            ..tree
        };
        assert!(TreeRecords::new(&mut none).stale.is_empty());
    }
}
