//! The RocksDB store: blocks survive close and reopen with the same head,
//! roots and proofs; pruning and node metadata persist.
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
            env.run(vec![register(
                &admin,
                &format!("acme/d{i}"),
                &device_key(&format!("d{i}")),
                None,
            )]);
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
fn rocks_and_memory_stores_agree() {
    let dir = tempfile::tempdir().unwrap();
    let net = net();
    let admin = net.admin("acme").clone();
    let mut rocks = Env {
        ledger: open(dir.path(), &net),
        net: common::net(),
    };
    let mut mem = env();
    for i in 0..3 {
        let txs = vec![register(
            &admin,
            &format!("acme/d{i}"),
            &device_key(&format!("d{i}")),
            None,
        )];
        rocks.run(txs.clone());
        mem.run(txs);
    }
    assert_eq!(rocks.ledger.head(), mem.ledger.head());
}
