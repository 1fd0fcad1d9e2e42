//! The RocksDB store: blocks survive close and reopen with the same head,
//! roots and proofs; pruning and node metadata (puts and deletes) persist.
#![cfg(feature = "rocksdb")]

mod common;

use common::*;
use keyreg_consensus::codec::Canonical;
use keyreg_registry::{
    verify_device_proof, Authority, Ledger, LedgerError, LedgerStore, RocksLedgerStore, Transaction,
};

fn open(
    dir: &std::path::Path,
    net: &keyreg_registry::testkit::TestNet,
) -> Ledger<RocksLedgerStore> {
    Ledger::open(RocksLedgerStore::open(dir).unwrap(), &net.genesis).unwrap()
}

#[test]
fn reopened_store_has_the_same_head_roots_and_proofs() {
    let dir = tempfile::tempdir().unwrap();
    let net = net();
    let admin = net.admin("acme").clone();
    let key = device_key("d0");
    let (head, proof, roots, set) = {
        let mut env = Env {
            ledger: open(dir.path(), &net),
            net: common::net(),
        };
        env.run(vec![register(&admin, "acme/d0", &key, None)]);
        for i in 1..5 {
            env.run(vec![register_acme(&admin, i)]);
        }
        let revoke = Transaction::new(CHAIN, revocation("acme/d1", Authority::Device))
            .signed_by(&[&device_key("d1")]);
        env.run(vec![revoke]);
        env.ledger
            .store()
            .put_meta(b"consensus/safety", b"locked-round-3")
            .unwrap();
        let roots: Vec<_> = (0..=env.ledger.height())
            .map(|h| env.ledger.header(h).unwrap().unwrap().state_root)
            .collect();
        (
            env.ledger.head().clone(),
            env.ledger.device_proof(&name("acme/d0")).unwrap(),
            roots,
            env.ledger.validator_set().clone(),
        )
    };
    let mut env = Env {
        ledger: open(dir.path(), &net),
        net: common::net(),
    };
    assert_eq!(env.ledger.head(), &head);
    assert_eq!(env.ledger.validator_set(), &set);
    for (h, root) in roots.iter().enumerate() {
        assert_eq!(
            &env.ledger.header(h as u64).unwrap().unwrap().state_root,
            root
        );
        assert_eq!(
            &env.ledger.state_at(h as u64).unwrap().root().unwrap(),
            root
        );
    }
    let again = env.ledger.device_proof(&name("acme/d0")).unwrap();
    assert_eq!(again, proof);
    assert_eq!(
        verify_device_proof(CHAIN, &set, &again)
            .unwrap()
            .unwrap()
            .signing_key,
        key.public()
    );
    assert!(!env
        .ledger
        .device(&name("acme/d1"))
        .unwrap()
        .unwrap()
        .is_active());
    assert_eq!(
        env.ledger
            .store()
            .get_meta(b"consensus/safety")
            .unwrap()
            .as_deref(),
        Some(&b"locked-round-3"[..])
    );
    // Several of the node's own keys put and deleted in one write.
    env.ledger
        .store()
        .write_meta(
            &[(b"consensus/value/a", b"block a"), (b"consensus/x", b"x")],
            &[b"consensus/safety"],
        )
        .unwrap();
    let first = env.ledger.block(1).unwrap().unwrap().transactions[0].hash();
    assert_eq!(env.ledger.tx_location(&first).unwrap().unwrap().height, 1);

    // Keep going after the reopen, then prune and reopen again.
    env.run(vec![register(
        &admin,
        "acme/late",
        &device_key("late"),
        None,
    )]);
    assert!(env.ledger.prune(2).unwrap() > 0);
    let height = env.ledger.height();
    drop(env);
    let ledger = open(dir.path(), &net);
    assert_eq!(ledger.height(), height);
    let meta = |key: &[u8]| ledger.store().get_meta(key).unwrap();
    assert_eq!(meta(b"consensus/safety"), None);
    assert_eq!(meta(b"consensus/value/a").as_deref(), Some(&b"block a"[..]));
    assert_eq!(meta(b"consensus/x").as_deref(), Some(&b"x"[..]));
    assert!(matches!(
        ledger.device_proof_at(&name("acme/d0"), height - 2),
        Err(LedgerError::Pruned { .. })
    ));
    let kept = ledger
        .device_proof_at(&name("acme/d0"), height - 1)
        .unwrap();
    assert!(verify_device_proof(CHAIN, ledger.validator_set(), &kept)
        .unwrap()
        .is_some());
    let late = ledger.device_proof(&name("acme/late")).unwrap();
    assert!(verify_device_proof(CHAIN, ledger.validator_set(), &late)
        .unwrap()
        .is_some());
}

#[test]
fn pruning_in_steps_refuses_old_versions_from_its_first_step_and_lets_commits_in_between() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = Env {
        ledger: open(dir.path(), &net()),
        net: common::net(),
    };
    let admin = env.admin("acme");
    // Enough rewritten nodes for more than one step of PRUNE_CHUNK.
    for block in 0..30 {
        env.run(
            (0..600)
                .map(|i| register_acme(&admin, block * 600 + i))
                .collect(),
        );
    }
    let oldest = env.ledger.oldest_to_keep(5);
    assert_eq!(oldest, 26);
    let first = env.ledger.prune_step(oldest).unwrap();
    assert!(!first.done, "one step deleted everything: {first:?}");
    assert!(first.deleted >= keyreg_registry::PRUNE_CHUNK as u64);
    // Refused as pruned from the first step on, before all its nodes went.
    assert!(matches!(
        env.ledger.state_at(oldest - 1),
        Err(LedgerError::Pruned { .. })
    ));
    // A commit between two steps.
    env.run(vec![register(
        &admin,
        "acme/between",
        &device_key("b"),
        None,
    )]);
    let mut deleted = first.deleted;
    for _ in 0..1000 {
        let step = env.ledger.prune_step(oldest).unwrap();
        deleted += step.deleted;
        if step.done {
            break;
        }
    }
    assert!(
        env.ledger.prune_step(oldest).unwrap()
            == keyreg_registry::PruneStep {
                deleted: 0,
                done: true,
            }
    );
    assert!(deleted > first.deleted);
    // Every kept version still holds its whole tree.
    for height in oldest..=env.ledger.height() {
        let header = env.ledger.header(height).unwrap().unwrap();
        assert_eq!(
            env.ledger.state_at(height).unwrap().root().unwrap(),
            header.state_root
        );
        let proof = env
            .ledger
            .device_proof_at(&name("acme/d7"), height)
            .unwrap();
        assert!(
            verify_device_proof(CHAIN, env.ledger.validator_set(), &proof)
                .unwrap()
                .is_some()
        );
    }
    let between = env.ledger.device_proof(&name("acme/between")).unwrap();
    assert!(
        verify_device_proof(CHAIN, env.ledger.validator_set(), &between)
            .unwrap()
            .is_some()
    );
}

/// A RocksDB ledger in `dir` and an in-memory one on the same test network,
/// and acme's admin key.
/// The next block after `ledger`'s head, proposed and certified, with its
/// execution.
fn next_certified(
    ledger: &Ledger<RocksLedgerStore>,
    net: &keyreg_registry::testkit::TestNet,
    txs: Vec<Transaction>,
) -> (
    keyreg_registry::CommittedBlock,
    keyreg_registry::BlockExecution,
) {
    let set = ledger.validator_set().clone();
    let proposer = set.get(0).unwrap().key;
    let timestamp = ledger.head().timestamp_ms + 1000;
    let (block, execution) = ledger.propose(txs, timestamp, proposer, |_| false).unwrap();
    let certificate = keyreg_registry::testkit::certify(CHAIN, &set, &net.validator_keys, &block);
    let committed = keyreg_registry::CommittedBlock {
        version: keyreg_registry::CommittedBlock::VERSION,
        block,
        certificate,
    };
    (committed, execution)
}

#[test]
fn a_block_written_durably_leaves_readers_on_the_old_head_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let net = net();
    let admin = net.admin("acme").clone();
    let d0 = name("acme/d0");
    let mut ledger = open(dir.path(), &net);
    keyreg_registry::testkit::commit_next(
        &mut ledger,
        &net.validator_keys,
        vec![register(&admin, "acme/d0", &device_key("d0"), None)],
    )
    .unwrap();
    let before = ledger.device_proof(&d0).unwrap();
    let revoke = Transaction::new(CHAIN, revocation("acme/d0", Authority::Device))
        .signed_by(&[&device_key("d0")]);
    let (committed, execution) = next_certified(&ledger, &net, vec![revoke.clone()]);
    let durable = ledger.write_commit(&committed, execution).unwrap();

    // Written, not advanced: readers get the old head's state and proofs.
    assert_eq!(ledger.height(), 1);
    let during = ledger.device_proof(&d0).unwrap();
    assert_eq!(during, before);
    let record = verify_device_proof(CHAIN, ledger.validator_set(), &during)
        .unwrap()
        .unwrap();
    assert!(record.is_active());
    // The transaction index already answers for the written block.
    assert_eq!(
        ledger.tx_location(&revoke.hash()).unwrap().unwrap().height,
        2
    );

    // Another block of the same height cannot take the written one's place.
    let (other, _) = next_certified(&ledger, &net, vec![register_acme(&admin, 1)]);
    assert!(matches!(
        ledger.advance(&other, durable),
        Err(LedgerError::NotWritten { height: 2 })
    ));
    // So a fresh execution is written again (the same bytes) and advanced.
    let (committed, execution) = next_certified(&ledger, &net, vec![revoke]);
    let durable = ledger.write_commit(&committed, execution).unwrap();
    ledger.advance(&committed, durable).unwrap();
    assert_eq!(ledger.height(), 2);
    let after = ledger.device_proof(&d0).unwrap();
    assert!(!verify_device_proof(CHAIN, ledger.validator_set(), &after)
        .unwrap()
        .unwrap()
        .is_active());

    // A block written but never advanced (the node stopped between the
    // two steps) is not lost: the store reopens with it as the head.
    let (third, execution) = next_certified(&ledger, &net, vec![register_acme(&admin, 2)]);
    let root = third.block.header.state_root;
    let _durable = ledger.write_commit(&third, execution).unwrap();
    drop(ledger);
    let reopened = open(dir.path(), &net);
    assert_eq!(reopened.height(), 3);
    assert_eq!(reopened.head().state_root, root);
    let proof = reopened.device_proof(&name("acme/d2")).unwrap();
    assert!(verify_device_proof(CHAIN, reopened.validator_set(), &proof)
        .unwrap()
        .unwrap()
        .is_active());
}

fn rocks_and_memory(
    dir: &std::path::Path,
) -> (
    Env<RocksLedgerStore>,
    Env,
    keyreg_consensus::crypto::SigningKey,
) {
    let net = net();
    let admin = net.admin("acme").clone();
    let rocks = Env {
        ledger: open(dir, &net),
        net: common::net(),
    };
    (rocks, env(), admin)
}

#[test]
fn rocks_and_memory_stores_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (mut rocks, mut mem, admin) = rocks_and_memory(dir.path());
    for i in 0..3 {
        let txs = vec![register_acme(&admin, i)];
        rocks.run(txs.clone());
        mem.run(txs);
    }
    assert_eq!(rocks.ledger.head(), mem.ledger.head());
}

/// The state keys a test chain touches: devices present and absent, the
/// organisations, governance and the validators.
fn watched_keys() -> Vec<keyreg_consensus::Hash> {
    let mut keys: Vec<_> = (0..8)
        .map(|i| name(&format!("acme/d{i}")).state_key())
        .collect();
    keys.extend(
        ["acme", "globex", "initech", "nobody"]
            .iter()
            .map(|org| keyreg_registry::names::OrgId::new(org).unwrap().state_key()),
    );
    keys.push(keyreg_registry::records::governance_key());
    keys.extend((0..5).map(keyreg_registry::records::validator_key));
    keys
}

/// Every watched key reads the same from the head value index as from the
/// tree at the head.
fn assert_index_matches_tree(ledger: &Ledger<RocksLedgerStore>) {
    let head = keyreg_registry::TreeState::new(ledger.store(), ledger.height());
    for key in watched_keys() {
        assert_eq!(
            ledger.store().head_value(&key).unwrap(),
            keyreg_registry::state::StateView::get(&head, &key).unwrap(),
            "key {key} at height {}",
            ledger.height()
        );
    }
}

#[test]
fn the_head_value_index_follows_the_tree_and_a_lagging_one_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let net = net();
    let admin = net.admin("acme").clone();
    let mut mem = env();
    {
        let mut rocks = Env {
            ledger: open(dir.path(), &net),
            net: common::net(),
        };
        assert!(rocks.ledger.store().has_head_index());
        assert_index_matches_tree(&rocks.ledger);
        let blocks = vec![
            (0..4).map(|i| register_acme(&admin, i)).collect::<Vec<_>>(),
            vec![
                Transaction::new(CHAIN, revocation("acme/d1", Authority::Device))
                    .signed_by(&[&device_key("d1")]),
                // A replayed registration is rejected and changes nothing.
                register(&admin, "acme/d0", &device_key("d0"), None),
            ],
        ];
        for txs in blocks {
            rocks.run(txs.clone());
            mem.run(txs);
            assert_index_matches_tree(&rocks.ledger);
        }
        assert_eq!(rocks.ledger.head(), mem.ledger.head());
    }
    // What a version without the index leaves behind: the index tagged
    // with an older height than the head.
    {
        let db = rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            dir.path(),
            [
                "blocks", "headers", "certs", "nodes", "stale", "txs", "meta", "values",
            ],
        )
        .unwrap();
        let meta = db.cf_handle("meta").unwrap();
        db.put_cf(meta, b"keyreg/head-values-height", 1u64.to_be_bytes())
            .unwrap();
    }
    let mut rocks = Env {
        ledger: open(dir.path(), &net),
        net: common::net(),
    };
    assert!(!rocks.ledger.store().has_head_index());
    // Execution reads through the tree and agrees with the memory store.
    let more = vec![register(&admin, "acme/d5", &device_key("d5"), None)];
    rocks.run(more.clone());
    mem.run(more);
    assert_eq!(rocks.ledger.head(), mem.ledger.head());
    // The stale index is never trusted again, even after a restart.
    drop(rocks);
    assert!(!open(dir.path(), &net).store().has_head_index());
}

/// The transaction index keeps a hash's first commit, in the RocksDB store
/// as in the in-memory one: a replay later in the same block or in a later
/// block is rejected by execution and leaves the first location standing.
#[test]
fn the_transaction_index_keeps_the_first_commit_of_a_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (mut rocks, mut mem, admin) = rocks_and_memory(dir.path());
    let txs: Vec<Transaction> = (0..40).map(|i| register_acme(&admin, i)).collect();
    let mut first_block = txs.clone();
    first_block.push(txs[7].clone());
    let replays = vec![txs[3].clone(), txs[39].clone(), register_acme(&admin, 40)];
    for env_results in [
        (rocks.run(first_block.clone()), rocks.run(replays.clone())),
        (mem.run(first_block.clone()), mem.run(replays.clone())),
    ] {
        assert!(env_results.0[40].is_err(), "{:?}", env_results.0[40]);
        assert!(env_results.1[0].is_err() && env_results.1[1].is_err());
        assert!(env_results.1[2].is_ok());
    }
    for (i, tx) in txs.iter().chain(&replays[2..]).enumerate() {
        let (height, index) = if i < 40 { (1, i as u32) } else { (2, 2) };
        for location in [
            rocks.ledger.tx_location(&tx.hash()).unwrap().unwrap(),
            mem.ledger.tx_location(&tx.hash()).unwrap().unwrap(),
        ] {
            assert_eq!((location.height, location.index), (height, index), "tx {i}");
            assert!(location.result.is_ok());
        }
    }
}

#[test]
fn column_family_sizes_count_the_tables_and_flushes_write_them_uncompressed() {
    let dir = tempfile::tempdir().unwrap();
    let net = net();
    let admin = net.admin("acme").clone();
    let height = {
        let mut env = Env {
            ledger: open(dir.path(), &net),
            net: common::net(),
        };
        for i in 0..40 {
            env.run((0..8).map(|j| register_acme(&admin, 8 * i + j)).collect());
        }
        // Everything is still in the memtables: no table holds anything.
        let sizes = env.ledger.store().column_family_sizes().unwrap();
        assert!(sizes
            .iter()
            .all(|cf| cf.entries == 0 && cf.raw_bytes == 0 && cf.stored_bytes == 0));
        env.ledger.height()
    };
    // Reopening replays the WAL into the memtables and flushes them to L0.
    let ledger = open(dir.path(), &net);
    let sizes = ledger.store().column_family_sizes().unwrap();
    let cf = |name: &str| sizes.iter().find(|cf| cf.name == name).unwrap().clone();
    let blocks = cf("blocks");
    assert_eq!(blocks.entries, height + 1, "genesis and every block");
    assert_eq!(cf("txs").entries, 8 * 40);
    assert!(cf("nodes").entries > 8 * 40);
    // L0 is written uncompressed: about the raw bytes (the table format's
    // own overhead and shared key prefixes roughly cancel). LZ4 stored
    // these blocks in 75 % of them (their names and organisation ids repeat).
    assert!(
        blocks.stored_bytes * 100 >= blocks.raw_bytes * 97,
        "flushed blocks were compressed: {blocks:?}"
    );
}

/// Set in the child process of the crash test: the store's directory.
const CRASH_CHILD_DIR: &str = "KEYREG_TEST_CRASH_CHILD_DIR";

/// The crash test's blocks: registrations, then a revocation among them.
fn crash_test_blocks(admin: &keyreg_consensus::crypto::SigningKey) -> Vec<Vec<Transaction>> {
    let mut blocks: Vec<Vec<Transaction>> = (0..8)
        .map(|b| (0..8).map(|i| register_acme(admin, 8 * b + i)).collect())
        .collect();
    let revoke = Transaction::new(CHAIN, revocation("acme/d1", Authority::Device))
        .signed_by(&[&device_key("d1")]);
    blocks[7].push(revoke);
    blocks
}

/// Blocks committed before this many are flushed (pruning flushes first);
/// the rest are only in the memtables when the child aborts.
const FLUSHED_BLOCKS: usize = 5;

/// The child's exit status: it ends without closing the store.
const CRASHED: i32 = 86;

/// Runs `test` of this binary in a child process that finds its store
/// directory `dir` in [`CRASH_CHILD_DIR`] and ends with [`CRASHED`].
fn run_crash_child(test: &str, dir: &std::path::Path) {
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--test-threads", "1"])
        .env(CRASH_CHILD_DIR, dir)
        .output()
        .unwrap();
    assert_eq!(
        child.status.code(),
        Some(CRASHED),
        "the child: {}\n{}",
        child.status,
        String::from_utf8_lossy(&child.stderr)
    );
}

/// The child: commits the blocks, pruning after the first
/// [`FLUSHED_BLOCKS`], then exits without dropping anything: the store is
/// never closed or flushed, as in a crash (the memtables die with the
/// process; what was written to files stays, as after a kill).
fn commit_then_crash(dir: &std::path::Path) -> ! {
    let net = net();
    let admin = net.admin("acme").clone();
    let mut env = Env {
        ledger: open(dir, &net),
        net: common::net(),
    };
    for (i, txs) in crash_test_blocks(&admin).into_iter().enumerate() {
        if i == FLUSHED_BLOCKS {
            assert!(env.ledger.prune(2).unwrap() > 0);
        }
        env.run(txs);
    }
    std::process::exit(CRASHED);
}

/// A crash loses the tree and indexes written since the last flush (they
/// skip the write-ahead log) but no block: the reopened ledger executes
/// the lost heights again and ends where an uncrashed one does, with the
/// same headers, roots, proofs and transaction index. Pruning flushed
/// first, so the tree its replay starts from was not pruned away.
#[test]
fn a_crash_loses_no_block_and_reopening_executes_the_unflushed_ones_again() {
    if let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) {
        commit_then_crash(std::path::Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    run_crash_child(
        "a_crash_loses_no_block_and_reopening_executes_the_unflushed_ones_again",
        dir.path(),
    );
    let net = net();
    let admin = net.admin("acme").clone();
    let blocks = crash_test_blocks(&admin);
    let mut uncrashed = env();
    for txs in blocks.clone() {
        uncrashed.run(txs);
    }
    // Below the stored head, the store takes only the block it holds.
    {
        let mut store = RocksLedgerStore::open(dir.path()).unwrap();
        assert_eq!(store.head().unwrap(), Some(FLUSHED_BLOCKS as u64));
        assert_eq!(store.stored_head().unwrap(), Some(blocks.len() as u64));
        let mut other = env();
        for txs in blocks.iter().take(FLUSHED_BLOCKS) {
            other.run(txs.clone());
        }
        let timestamp = other.ledger.head().timestamp_ms + 1000;
        let proposer = other.ledger.validator_set().get(0).unwrap().key;
        let fork = vec![register_acme(&admin, 200)];
        let (block, execution) = other
            .ledger
            .propose(fork, timestamp, proposer, |_| false)
            .unwrap();
        let certificate = keyreg_registry::testkit::certify(
            CHAIN,
            other.ledger.validator_set(),
            &other.net.validator_keys,
            &block,
        );
        let committed = keyreg_registry::CommittedBlock {
            version: keyreg_registry::CommittedBlock::VERSION,
            block,
            certificate,
        };
        let refused = store.write_block(
            &committed,
            execution.tree_batch,
            &execution.changes,
            &execution.results,
            &execution.tx_hashes,
        );
        assert!(
            matches!(refused, Err(keyreg_registry::StoreError::Order(_))),
            "{refused:?}"
        );
    }
    let mut rocks = Env {
        ledger: open(dir.path(), &net),
        net: common::net(),
    };
    assert_eq!(
        rocks.ledger.replayed_at_open(),
        (blocks.len() - FLUSHED_BLOCKS) as u64
    );
    assert_eq!(rocks.ledger.head(), uncrashed.ledger.head());
    assert_eq!(
        rocks.ledger.validator_set(),
        uncrashed.ledger.validator_set()
    );
    for height in FLUSHED_BLOCKS as u64 - 1..=blocks.len() as u64 {
        assert_eq!(
            rocks.ledger.state_at(height).unwrap().root().unwrap(),
            uncrashed.ledger.header(height).unwrap().unwrap().state_root,
            "height {height}"
        );
    }
    for tx in blocks.iter().flatten() {
        assert_eq!(
            rocks.ledger.tx_location(&tx.hash()).unwrap(),
            uncrashed.ledger.tx_location(&tx.hash()).unwrap()
        );
    }
    assert_index_matches_tree(&rocks.ledger);
    let proof = rocks.ledger.device_proof(&name("acme/d1")).unwrap();
    let record = verify_device_proof(CHAIN, rocks.ledger.validator_set(), &proof)
        .unwrap()
        .unwrap();
    assert!(!record.is_active());

    // The ledger goes on from there, and a clean close loses nothing.
    let txs = vec![register_acme(&admin, 100)];
    rocks.run(txs.clone());
    uncrashed.run(txs);
    drop(rocks);
    let reopened = open(dir.path(), &net);
    assert_eq!(reopened.replayed_at_open(), 0);
    assert_eq!(reopened.head(), uncrashed.ledger.head());
}

/// At low load the memtables take thousands of blocks to fill; every
/// `FLUSH_EVERY_BLOCKS` heights a flush starts anyway, so a crash executes
/// again only the blocks since.
#[test]
fn a_crash_after_many_small_blocks_executes_again_only_those_since_the_periodic_flush() {
    let blocks = keyreg_registry::FLUSH_EVERY_BLOCKS + 3;
    let net = net();
    let admin = net.admin("acme").clone();
    if let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) {
        let mut env = Env {
            ledger: open(std::path::Path::new(&dir), &net),
            net: common::net(),
        };
        for i in 0..blocks {
            env.run(vec![register_acme(&admin, i as usize)]);
        }
        env.ledger.store().wait_for_background_work().unwrap();
        std::process::exit(CRASHED);
    }
    let dir = tempfile::tempdir().unwrap();
    run_crash_child(
        "a_crash_after_many_small_blocks_executes_again_only_those_since_the_periodic_flush",
        dir.path(),
    );
    let ledger = open(dir.path(), &net);
    assert_eq!(ledger.replayed_at_open(), 3);
    assert_eq!(ledger.height(), blocks);
}
