//! Runs the checked-in fuzz corpus through the fuzz targets' functions on
//! stable Rust, so CI replays every seed and every input the fuzzer found
//! interesting (crashes included, once fixed) without a nightly toolchain.

use std::path::{Path, PathBuf};

use keyreg_tests::fuzz::TARGETS;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

#[test]
fn every_corpus_file_runs_through_its_target() {
    let mut total = 0;
    for (target, run) in TARGETS {
        let dir = corpus_dir(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .map(|entry| entry.expect("readable corpus entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "target {target} has no corpus");
        for file in &files {
            let data = std::fs::read(file).expect("readable corpus file");
            run(&data);
        }
        total += files.len();
    }
    assert!(total >= TARGETS.len());
}

#[test]
fn the_corpus_holds_every_current_seed() {
    // A seed that no longer matches the code (an encoding changed) would
    // silently stop reaching the deep checks: regenerate with `fuzz-seeds`.
    for seed in keyreg_tests::seeds::all() {
        let path = corpus_dir(seed.target).join(format!("seed-{}", seed.name));
        let stored = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run the fuzz-seeds binary)", path.display()));
        assert!(
            stored == seed.bytes,
            "{} is stale: run `cargo run --release -p keyreg-tests --bin fuzz-seeds`",
            path.display()
        );
    }
}

#[test]
fn seeds_reach_the_deep_checks() {
    use keyreg_consensus::codec::Canonical;
    use keyreg_registry::{verify_device_proof, DeviceProof, Transaction};
    use keyreg_tests::fixture::{fixture, CHAIN};
    let f = fixture();
    for seed in keyreg_tests::seeds::all() {
        match seed.target {
            "transaction" => {
                Transaction::from_wire(&seed.bytes, CHAIN).expect("seed transactions are valid");
            }
            "consensus_message" if seed.name == "proposal" => {
                use keyreg_consensus::messages::{decode_message, MessageBody};
                use keyreg_registry::wire::CompactBlock;
                let message = decode_message::<CompactBlock>(&seed.bytes, seed.bytes.len())
                    .expect("the proposal seed decodes as the node gossips it");
                message
                    .verify(CHAIN, &f.next_set)
                    .expect("the proposal seed is signed by its proposer");
                let MessageBody::Proposal(proposal) = message.body else {
                    panic!("the proposal seed is a proposal");
                };
                proposal.value.check().expect("its hashes match its root");
                assert_eq!(
                    proposal.value.tx_hashes,
                    f.proposal.tx_hashes(),
                    "it names the fixture's transactions, so the target rebuilds it"
                );
            }
            "device_proof" => {
                let proof = DeviceProof::from_bytes(&seed.bytes).expect("seed proofs decode");
                verify_device_proof(CHAIN, &f.set, &proof).expect("seed proofs verify");
            }
            "sync_message" => {
                use keyreg_registry::wire::{SyncRequest, SyncResponse};
                assert!(
                    SyncRequest::from_bytes(&seed.bytes).is_ok()
                        || SyncResponse::from_bytes(&seed.bytes).is_ok(),
                    "seed sync messages decode"
                );
            }
            "tx_batch" => {
                let txs = keyreg_registry::wire::decode_tx_batch(&seed.bytes)
                    .expect("seed batches decode");
                for tx in txs {
                    Transaction::from_wire(tx, CHAIN)
                        .expect("seed batches hold valid transactions");
                }
            }
            "http_request" if seed.bytes.first() == Some(&0) => {
                let body: keyreg_registry::wire::SubmitBody =
                    serde_json::from_slice(&seed.bytes[1..]).expect("seed bodies are JSON");
                let tx = body.tx_bytes().expect("seed bodies hold hex");
                Transaction::from_wire(&tx, CHAIN).expect("seed bodies hold valid transactions");
            }
            _ => {}
        }
    }
}
