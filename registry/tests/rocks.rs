//! The RocksDB store: blocks survive close and reopen with the same head,
//! roots and proofs; pruning and node metadata (puts and deletes) persist.
#![cfg(feature = "rocksdb")]

mod common;

use common::*;
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
            .store_mut()
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
        .store_mut()
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

/// A RocksDB ledger in `dir` and an in-memory one on the same test network,
/// and acme's admin key.
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
