//! Four in-process validators over real libp2p on loopback:
//!
//! * `POST /v1/transactions/batch` answers one verdict per transaction, in
//!   order (admitted, refused with the TxError's name, already known), and
//!   refuses malformed batches as a whole.
//! * Proposals travel compact (header + transaction hashes): transactions
//!   that only the proposer holds (admitted without gossip) are fetched by
//!   the other validators, verified, executed and committed on every node.
//!
//! Waits are bounded polls with deadlines, never fixed sleeps.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use keyreg_consensus::codec::Canonical;
use keyreg_consensus::{Hash, SigningKey};
use keyreg_node::cli::DEMO_ADMIN_KEY_FILE;
use keyreg_node::node::{self, RunningNode};
use keyreg_registry::testkit::test_agreement_key;
use keyreg_registry::{DeviceName, DeviceRegistration, Transaction, TxBody};
use serde_json::{json, Value};
use tokio::time::Instant;

use common::{fast_config, loopback_testnet, read_admin_key};

const CHAIN: &str = "compact-test";
const DEADLINE: Duration = Duration::from_secs(60);

fn registration(admin: &SigningKey, name: &str) -> Transaction {
    let device = SigningKey::generate().unwrap();
    let body = DeviceRegistration::new_signed(
        CHAIN,
        DeviceName::new(name).unwrap(),
        &device,
        test_agreement_key(name),
        None,
        None,
        Default::default(),
    );
    Transaction::new(CHAIN, TxBody::RegisterDevice(body)).signed_by(&[admin])
}

async fn post(api: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let url = format!("http://{api}{path}");
    tokio::task::spawn_blocking(move || {
        let response = match ureq::post(&url).send_json(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("HTTP transport error: {e}"),
        };
        (response.status(), response.into_json().unwrap())
    })
    .await
    .unwrap()
}

/// Waits until every node has committed `hashes`, all executed.
async fn wait_committed_everywhere(nodes: &[RunningNode], hashes: &[Hash]) {
    let deadline = Instant::now() + DEADLINE;
    for node in nodes {
        for hash in hashes {
            loop {
                let location = node.shared.read_ledger().tx_location(hash).unwrap();
                if let Some(location) = location {
                    assert!(location.result.is_ok(), "{hash}: {:?}", location.result);
                    break;
                }
                assert!(Instant::now() < deadline, "{hash} not committed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn start_network(dir: &Path) -> (Vec<RunningNode>, SigningKey) {
    let (_, layout) = loopback_testnet(dir, CHAIN, 4, 0, 11, 0);
    let admin = read_admin_key(&dir.join(DEMO_ADMIN_KEY_FILE));
    let mut nodes = Vec::new();
    for n in &layout {
        nodes.push(node::start(&n.home, fast_config(&n.home)).await.unwrap());
    }
    let deadline = Instant::now() + DEADLINE;
    while nodes.iter().any(|n| n.shared.height() < 2) {
        assert!(Instant::now() < deadline, "the network did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (nodes, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_get_one_verdict_each_and_compact_proposals_fetch_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, admin) = start_network(dir.path()).await;
    let api = nodes[1].api_addr;

    // One batch: two good registrations, a forged one, and the first again.
    let good: Vec<Transaction> = (0..2)
        .map(|i| registration(&admin, &format!("demo/batch-{i}")))
        .collect();
    let mut forged = registration(&admin, "demo/forged");
    forged.signatures[0].signature = good[0].signatures[0].signature;
    let batch = [&good[0], &good[1], &forged, &good[0]];
    let hexes: Vec<String> = batch.iter().map(|tx| hex::encode(tx.to_bytes())).collect();
    let (status, body) = post(api, "/v1/transactions/batch", json!({ "txs": hexes })).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    for (result, tx) in results.iter().zip(&good) {
        assert_eq!(result["status"], "pending", "{result}");
        assert_eq!(result["hash"], tx.hash().to_hex());
    }
    assert_eq!(results[2]["error"]["code"], "bad_signature", "{body}");
    assert_eq!(results[3]["error"]["code"], "already_known", "{body}");

    // Malformed batches are refused whole.
    for (bad, expected) in [
        (json!({ "txs": [] }), (400, "bad_batch")),
        (json!({ "txs": ["zz"] }), (400, "bad_batch")),
        (json!({ "txs": vec!["00"; 513] }), (400, "bad_batch")),
        (json!({ "tx": "00" }), (422, "bad_json")),
    ] {
        let (status, body) = post(api, "/v1/transactions/batch", bad).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (expected.0, Some(expected.1))
        );
    }

    // Transactions only node 0 holds: admitted to its mempool directly, so
    // never gossiped. Node 0 proposes them in its turn, compactly; the
    // others must fetch them to validate the proposal.
    let private: Vec<Transaction> = (0..20)
        .map(|i| registration(&admin, &format!("demo/private-{i}")))
        .collect();
    let bytes: Vec<Vec<u8>> = private.iter().map(Canonical::to_bytes).collect();
    let raw: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    for verdict in nodes[0].shared.submit_batch(&raw) {
        verdict.unwrap();
    }
    let mut hashes: Vec<Hash> = good.iter().map(Transaction::hash).collect();
    hashes.extend(private.iter().map(Transaction::hash));
    wait_committed_everywhere(&nodes, &hashes).await;
    let fetched: u64 = nodes[1..]
        .iter()
        .map(|n| n.shared.metrics.fetched_txs.get())
        .sum();
    assert!(
        fetched >= private.len() as u64,
        "the other validators fetched {fetched} transactions"
    );
    for node in nodes {
        node.stop().await.unwrap();
    }
}
