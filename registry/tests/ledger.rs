//! Blocks, proofs, genesis, determinism and pruning.

mod common;

use common::*;
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::{hash, Domain, Hash};
use keyreg_registry::block::MAX_BLOCK_BYTES;
use keyreg_registry::testkit::{certify, commit_next, test_key};
use keyreg_registry::{
    check_stateless_all, check_stateless_unless, tx_root, verify_device_proof, Authority,
    BlockError, CommittedBlock, DeviceProof, Genesis, GenesisError, Ledger, LedgerError,
    MemLedgerStore, ProofCheckError, Transaction, TxBody, TxError, TxInclusionProof,
};
use proptest::prelude::*;

fn populated() -> Env {
    let mut env = env();
    let admin = env.admin("acme");
    let txs = (0..5).map(|i| register_acme(&admin, i)).collect();
    assert!(env.run(txs).iter().all(Result::is_ok));
    env
}

#[test]
fn device_proofs_verify_membership_and_absence() {
    let env = populated();
    let set = env.ledger.validator_set().clone();
    let proof = env.ledger.device_proof(&name("acme/d3")).unwrap();
    let record = verify_device_proof(CHAIN, &set, &proof).unwrap().unwrap();
    assert_eq!(record.signing_key, device_key("d3").public());
    let absent = env.ledger.device_proof(&name("acme/missing")).unwrap();
    assert_eq!(verify_device_proof(CHAIN, &set, &absent).unwrap(), None);
    // Through JSON and bytes, as a client receives it.
    let json = serde_json::to_string(&proof).unwrap();
    let parsed: DeviceProof = serde_json::from_str(&json).unwrap();
    assert_eq!(
        verify_device_proof(CHAIN, &set, &parsed).unwrap(),
        Some(record.clone())
    );
    let decoded = DeviceProof::from_bytes(&proof.to_bytes()).unwrap();
    assert_eq!(decoded, proof);
}

#[test]
fn tampered_device_proofs_are_rejected() {
    let env = populated();
    let set = env.ledger.validator_set().clone();
    let proof = env.ledger.device_proof(&name("acme/d3")).unwrap();

    let mut swapped_key = proof.clone();
    swapped_key.record.as_mut().unwrap().signing_key = device_key("evil").public();
    assert!(matches!(
        verify_device_proof(CHAIN, &set, &swapped_key),
        Err(ProofCheckError::Tree(_))
    ));

    // Another device's genuine record presented for this name.
    let other = env.ledger.device_proof(&name("acme/d1")).unwrap();
    let mut wrong_name = proof.clone();
    wrong_name.record = other.record.clone();
    assert!(matches!(
        verify_device_proof(CHAIN, &set, &wrong_name),
        Err(ProofCheckError::NameMismatch { .. })
    ));
    // ... or relabelled as the requested name: its proof fails.
    let mut relabelled = other.clone();
    relabelled.name = name("acme/d3");
    relabelled.record.as_mut().unwrap().name = name("acme/d3");
    assert!(verify_device_proof(CHAIN, &set, &relabelled).is_err());

    // Hiding a record behind a non-membership claim.
    let mut hidden = proof.clone();
    hidden.record = None;
    assert!(matches!(
        verify_device_proof(CHAIN, &set, &hidden),
        Err(ProofCheckError::Tree(_))
    ));

    let mut forged_root = proof.clone();
    forged_root.header.state_root = Hash([7; 32]);
    assert!(matches!(
        verify_device_proof(CHAIN, &set, &forged_root),
        Err(ProofCheckError::Certificate(_))
    ));

    assert!(matches!(
        verify_device_proof("other", &set, &proof),
        Err(ProofCheckError::WrongChain { .. })
    ));

    let strangers: Vec<_> = (0..4).map(|i| test_key(&format!("stranger/{i}"))).collect();
    let other_set = keyreg_consensus::ValidatorSet::new(
        0,
        strangers
            .iter()
            .map(|k| keyreg_consensus::Validator {
                key: k.public(),
                power: 1,
            })
            .collect(),
    )
    .unwrap();
    assert!(matches!(
        verify_device_proof(CHAIN, &other_set, &proof),
        Err(ProofCheckError::ValidatorSetMismatch { .. })
    ));
    // A certificate by strangers over a header claiming their set.
    let mut self_certified = proof.clone();
    self_certified.header.validator_set_hash = other_set.hash();
    let fake_block = keyreg_registry::Block {
        version: 1,
        header: self_certified.header.clone(),
        transactions: vec![],
    };
    self_certified.certificate = certify(CHAIN, &set, &[], &fake_block);
    assert!(verify_device_proof(CHAIN, &set, &self_certified).is_err());
}

#[test]
fn genesis_has_no_certified_proof() {
    let env = env();
    assert!(matches!(
        env.ledger.device_proof(&name("acme/x")),
        Err(LedgerError::NoCertifiedBlock)
    ));
}

#[test]
fn block_checks_against_parent() {
    let env = populated();
    let parent = env.ledger.head().clone();
    let proposer = env.ledger.validator_set().get(0).unwrap().key;
    let tx = register(&env.admin("acme"), "acme/new", &device_key("new"), None);
    let (block, _) = env
        .ledger
        .propose(vec![tx], parent.timestamp_ms + 1, proposer, |_| false)
        .unwrap();
    block.check_against_parent(CHAIN, &parent).unwrap();
    env.ledger.validate(&block).unwrap();

    let mutate = |f: &dyn Fn(&mut keyreg_registry::Block)| {
        let mut b = block.clone();
        f(&mut b);
        b
    };
    type Case = (keyreg_registry::Block, fn(&BlockError) -> bool);
    let cases: Vec<Case> = vec![
        (mutate(&|b| b.header.prev_hash = Hash([1; 32])), |e| {
            matches!(e, BlockError::PrevHash { .. })
        }),
        (mutate(&|b| b.header.height += 1), |e| {
            matches!(e, BlockError::Height { .. })
        }),
        (
            mutate(&|b| b.header.timestamp_ms = parent.timestamp_ms),
            |e| matches!(e, BlockError::Timestamp { .. }),
        ),
        (mutate(&|b| b.header.epoch = 1), |e| {
            matches!(e, BlockError::Epoch { .. })
        }),
        (mutate(&|b| b.header.chain_id = "x".into()), |e| {
            matches!(e, BlockError::WrongChain { .. })
        }),
        (mutate(&|b| b.transactions.clear()), |e| {
            matches!(e, BlockError::TxRoot { .. })
        }),
        (
            mutate(&|b| b.header.validator_set_hash = Hash([2; 32])),
            |e| matches!(e, BlockError::ValidatorSetHash { .. }),
        ),
    ];
    for (bad, expected) in cases {
        let err = bad.check_against_parent(CHAIN, &parent).unwrap_err();
        assert!(expected(&err), "unexpected {err}");
    }
    // Execution-determined fields are caught by validation.
    let wrong_root = mutate(&|b| b.header.state_root = Hash([3; 32]));
    assert!(matches!(
        env.ledger.validate(&wrong_root),
        Err(LedgerError::Block(BlockError::StateRoot { .. }))
    ));
    let wrong_next = mutate(&|b| b.header.next_validator_set_hash = Hash([3; 32]));
    assert!(matches!(
        env.ledger.validate(&wrong_next),
        Err(LedgerError::Block(BlockError::NextValidatorSetHash { .. }))
    ));
    let stranger = mutate(&|b| b.header.proposer = test_key("stranger").public());
    assert!(matches!(
        env.ledger.validate(&stranger),
        Err(LedgerError::Block(BlockError::UnknownProposer(_)))
    ));
    // Ids handed in by the caller are held to the header's root and count.
    env.ledger
        .validate_hashed(&block, block.tx_hashes(), |_| false)
        .unwrap();
    assert!(matches!(
        env.ledger
            .validate_hashed(&block, vec![Hash([4; 32])], |_| false),
        Err(LedgerError::Block(BlockError::TxRoot { .. }))
    ));
    assert!(matches!(
        env.ledger.validate_hashed(&block, Vec::new(), |_| false),
        Err(LedgerError::TxIdCount { ids: 0, txs: 1 })
    ));
}

#[test]
fn oversized_blocks_are_rejected_and_proposals_fit() {
    let env = env();
    let admin = env.admin("acme");
    // ~156 KiB lots, two more than fit one block.
    let lot = |tag: &str| {
        let devices = (0..1000)
            .map(|i| {
                registration(
                    &format!("acme/{tag}-{i}"),
                    &device_key(&format!("{tag}-{i}")),
                    None,
                )
            })
            .collect();
        Transaction::new(
            CHAIN,
            TxBody::RegisterLot {
                org: keyreg_registry::OrgId::new("acme").unwrap(),
                devices,
            },
        )
        .signed_by(&[&admin])
    };
    let lot_bytes = lot("probe").to_bytes().len();
    let txs: Vec<Transaction> = (0..MAX_BLOCK_BYTES / lot_bytes + 2)
        .map(|i| lot(&format!("l{i}")))
        .collect();
    assert!(txs.iter().all(|t| t.check_stateless(CHAIN).is_ok()));
    let proposer = env.ledger.validator_set().get(0).unwrap().key;
    let (block, _) = env
        .ledger
        .propose(
            txs.clone(),
            env.ledger.head().timestamp_ms + 1,
            proposer,
            |_| false,
        )
        .unwrap();
    assert!(block.to_bytes().len() <= MAX_BLOCK_BYTES);
    let included = block.transactions.len();
    assert!(included > 0 && included < txs.len());
    // The proposal stopped at the first transaction that would not fit.
    let next_size = txs[included].to_bytes().len();
    assert!(block.to_bytes().len() + next_size > MAX_BLOCK_BYTES - 1024);
    let mut big = block.clone();
    big.transactions = txs;
    big.header.tx_root = tx_root(&big.tx_hashes());
    assert!(matches!(
        big.check_against_parent(CHAIN, env.ledger.head()),
        Err(BlockError::TooLarge { .. })
    ));
}

#[test]
fn commit_rejects_an_insufficient_certificate() {
    let mut env = env();
    let set = env.ledger.validator_set().clone();
    let proposer = set.get(0).unwrap().key;
    let (block, execution) = env
        .ledger
        .propose(vec![], env.ledger.head().timestamp_ms + 1, proposer, |_| {
            false
        })
        .unwrap();
    let certificate = certify(CHAIN, &set, &env.net.validator_keys[..2], &block);
    let committed = CommittedBlock {
        version: 1,
        block,
        certificate,
    };
    assert!(matches!(
        env.ledger.commit(&committed, execution),
        Err(LedgerError::Certificate(_))
    ));
    assert_eq!(env.ledger.height(), 0);
}

#[test]
fn execution_is_deterministic_across_ledgers() {
    let admin = test_key("admin/acme");
    let txs: Vec<_> = (0..20)
        .map(|i| {
            register(
                &admin,
                &format!("acme/d{}", i % 15),
                &device_key(&format!("d{i}")),
                None,
            )
        })
        .collect();
    let mut roots = Vec::new();
    for _ in 0..2 {
        let mut env = env();
        let results = env.run(txs.clone());
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 5);
        roots.push((env.root(), env.ledger.head().hash()));
    }
    assert_eq!(roots[0], roots[1]);
    // Replaying the chain's blocks on a fresh ledger reaches the same head.
    let mut source = populated();
    source.run(vec![]);
    let mut replica = Ledger::open(MemLedgerStore::new(), &source.net.genesis).unwrap();
    for h in 1..=source.ledger.height() {
        let committed = source.ledger.committed_block(h).unwrap().unwrap();
        replica.apply_committed(&committed).unwrap();
    }
    assert_eq!(replica.head(), source.ledger.head());
}

#[test]
fn batch_stateless_checks_match_single_checks() {
    let admin = test_key("admin/acme");
    let mut txs: Vec<_> = (0..6).map(|i| register_acme(&admin, i)).collect();
    txs[1].signatures[0].signature.0[0] ^= 1;
    txs[4].chain_id = "elsewhere".into();
    if let TxBody::RegisterDevice(reg) = &mut txs[5].body {
        reg.proof_of_possession.0[9] ^= 1;
    }
    let batch = check_stateless_all(CHAIN, &txs);
    let single: Vec<_> = txs.iter().map(|t| t.check_stateless(CHAIN)).collect();
    assert_eq!(batch, single);
    assert_eq!(batch.iter().filter(|r| r.is_ok()).count(), 3);
    assert!(matches!(batch[4], Err(TxError::WrongChain { .. })));

    // Vouched-for transactions are taken as passing; every other one gets
    // exactly its own verdict, whatever is vouched for around it.
    let partial = check_stateless_unless(CHAIN, &txs, |i| i < 2);
    assert_eq!(partial[..2], [Ok(()), Ok(())]);
    assert_eq!(partial[2..], single[2..]);
}

#[test]
fn a_block_of_pooled_transactions_is_not_reverified_but_strangers_are() {
    let env = env();
    let admin = env.admin("acme");
    let good = register(&admin, "acme/d1", &device_key("d1"), None);
    let mut forged = register(&admin, "acme/d2", &device_key("d2"), None);
    forged.signatures[0].signature.0[0] ^= 1;
    let proposer = env.ledger.validator_set().validators()[0].key;
    let (block, _) = env
        .ledger
        .propose(
            vec![good.clone(), forged.clone()],
            env.ledger.head().timestamp_ms + 1,
            proposer,
            |_| false,
        )
        .unwrap();
    // A validator whose mempool holds only `good` still rejects `forged`.
    let pooled = good.hash();
    let execution = env
        .ledger
        .validate_prechecked(&block, |hash| *hash == pooled)
        .unwrap();
    assert_eq!(execution.results[0], Ok(()));
    assert!(matches!(
        execution.results[1],
        Err(TxError::BadSignature { .. })
    ));
    assert_eq!(execution, env.ledger.validate(&block).unwrap());
}

#[test]
fn transaction_index_records_results() {
    let mut env = env();
    let good = register(&env.admin("acme"), "acme/d1", &device_key("d1"), None);
    let bad = Transaction::new(CHAIN, revocation("acme/nope", Authority::Admin))
        .signed_by(&[&env.admin("acme")]);
    env.run(vec![good.clone(), bad.clone()]);
    let loc = env.ledger.tx_location(&good.hash()).unwrap().unwrap();
    assert_eq!((loc.height, loc.index, loc.result), (1, 0, Ok(())));
    let loc = env.ledger.tx_location(&bad.hash()).unwrap().unwrap();
    assert_eq!(
        (loc.index, loc.result),
        (1, Err(TxError::UnknownDevice(name("acme/nope"))))
    );
    let block = env.ledger.block(1).unwrap().unwrap();
    let proof = block.tx_proof(1).unwrap();
    assert!(proof.verify(&block.header.tx_root, &bad.hash()));
    assert!(!proof.verify(&block.header.tx_root, &good.hash()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn tx_inclusion_proofs_verify_exactly_their_leaf(n in 1usize..40, pick in any::<usize>()) {
        let leaves: Vec<Hash> = (0..n).map(|i| hash(Domain::Transaction, &i.to_le_bytes())).collect();
        let root = tx_root(&leaves);
        let i = pick % n;
        let proof = TxInclusionProof::build(&leaves, i).unwrap();
        prop_assert!(proof.verify(&root, &leaves[i]));
        if n > 1 {
            prop_assert!(!proof.verify(&root, &leaves[(i + 1) % n]));
            let mut moved = proof.clone();
            moved.index = ((i + 1) % n) as u64;
            prop_assert!(!moved.verify(&root, &leaves[i]));
        }
        prop_assert!(TxInclusionProof::build(&leaves, n).is_none());
    }
}

#[test]
fn tx_root_of_nothing_is_fixed() {
    assert_eq!(tx_root(&[]), hash(Domain::TransactionRoot, &[]));
}

#[test]
fn genesis_json_round_trips_and_is_normalised() {
    let net = net();
    let json = net.genesis.to_json();
    let parsed = Genesis::from_json(&json).unwrap();
    assert_eq!(parsed.hash(), net.genesis.hash());
    // Order in the file does not matter.
    let mut shuffled = net.genesis.clone();
    shuffled.validators.reverse();
    shuffled.organisations.reverse();
    let reparsed = Genesis::from_json(&shuffled.to_json()).unwrap();
    assert_eq!(reparsed.hash(), net.genesis.hash());
    let state = net.genesis.initial_state().unwrap();
    assert_eq!(state.header.prev_hash, net.genesis.hash());
    assert_eq!(state.header.height, 0);
    assert_eq!(state.validator_set.hash(), state.header.validator_set_hash);
    // Deterministic.
    assert_eq!(net.genesis.initial_state().unwrap().header, state.header);
}

#[test]
fn invalid_genesis_files_are_rejected() {
    let net = net();
    let mut bad = net.genesis.clone();
    bad.governance_threshold = 4;
    assert!(matches!(
        Genesis::from_json(&bad.to_json()),
        Err(GenesisError::Threshold { .. })
    ));
    let mut bad = net.genesis.clone();
    bad.organisations[1].admins = bad.organisations[0].admins.clone();
    assert!(matches!(
        Genesis::from_json(&bad.to_json()),
        Err(GenesisError::SharedAdmin(_))
    ));
    let mut bad = net.genesis.clone();
    bad.chain_id = String::new();
    assert!(matches!(
        Genesis::from_json(&bad.to_json()),
        Err(GenesisError::ChainId)
    ));
    let json = net.genesis.to_json().replace("\"acme\"", "\"ACME\"");
    assert!(matches!(
        Genesis::from_json(&json),
        Err(GenesisError::Json(_))
    ));
    assert!(Genesis::from_json("{\"chain_id\": \"x\"}").is_err());
}

#[test]
fn a_store_refuses_another_genesis() {
    let env = populated();
    let other = keyreg_registry::testkit::TestNet::new("other-chain", 4, &["acme"], 1);
    let store = env.ledger.store().clone();
    assert!(matches!(
        Ledger::open(store, &other.genesis),
        Err(LedgerError::GenesisMismatch { .. })
    ));
}

#[test]
fn pruning_keeps_recent_versions_readable() {
    let mut env = env();
    let admin = env.admin("acme");
    for i in 0..6 {
        env.run(vec![register_acme(&admin, i)]);
    }
    let before = env.ledger.store().tree_node_count();
    let deleted = env.ledger.prune(2).unwrap();
    assert!(deleted > 0);
    assert_eq!(
        env.ledger.store().tree_node_count(),
        before - deleted as usize
    );
    let set = env.ledger.validator_set().clone();
    for h in 5..=6 {
        let proof = env.ledger.device_proof_at(&name("acme/d0"), h).unwrap();
        assert!(verify_device_proof(CHAIN, &set, &proof).unwrap().is_some());
    }
    assert!(matches!(
        env.ledger.device_proof_at(&name("acme/d0"), 4),
        Err(LedgerError::Pruned {
            height: 4,
            oldest: 5
        })
    ));
    // Execution continues on the kept head.
    assert_eq!(
        env.run_one(register(&admin, "acme/after", &device_key("after"), None)),
        Ok(())
    );
    commit_next(&mut env.ledger, &env.net.validator_keys, vec![]).unwrap();
}
