//! In-process nodes over real libp2p on loopback:
//!
//! * `POST /v1/transactions/batch` answers one verdict per transaction, in
//!   order (admitted, refused with the TxError's name, already known), and
//!   refuses malformed batches as a whole.
//! * Proposals travel compact (header + transaction hashes): transactions
//!   that only the proposer holds (admitted without gossip) are fetched by
//!   the other validators, verified, executed and committed on every node.
//! * A peer serving a certified header with other transactions (one
//!   validator, one observer catching up from the liar) gets them refused.
//! * A peer gossiping a batch with a forged signature gets the batch
//!   refused for relay (its valid transactions are still admitted); its
//!   valid batch is admitted and relayed, but not back to it.
//! * Submissions fill three quarters of a node's mempool; the last quarter
//!   takes transactions gossiped by peers.
//! * A node stops at once even while a peer holds its sync request
//!   unanswered.
//!
//! Waits are bounded polls with deadlines, never fixed sleeps.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keyreg_consensus::codec::Canonical;
use keyreg_consensus::{Hash, SigningKey};
use keyreg_node::cli::DEMO_ADMIN_KEY_FILE;
use keyreg_node::driver::DUPLICATE_WINDOW;
use keyreg_node::keys::read_key_file;
use keyreg_node::mempool::{Lane, Origin};
use keyreg_node::network::{self, Network, NetworkConfig, NetworkEvent, RelayVerdict, Topic};
use keyreg_node::node::{self, RunningNode};
use keyreg_registry::testkit::test_agreement_key;
use keyreg_registry::wire::{encode_tx_batch, SyncQuery, SyncReply, SyncRequest, SyncResponse};
use keyreg_registry::{CommittedBlock, DeviceName, DeviceRegistration, Transaction, TxBody};
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
    let raw: Vec<(&[u8], Origin)> = bytes
        .iter()
        .map(|b| (b.as_slice(), Origin::Local))
        .collect();
    let (verdicts, lanes) = nodes[0].shared.submit_batch(&raw);
    for verdict in verdicts {
        verdict.unwrap();
    }
    // Registrations are never urgent.
    assert!(lanes.iter().all(|lane| *lane == Lane::Normal), "{lanes:?}");
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
    // Every node checked every transaction's signatures: the private ones
    // in node 0's admission or in its proposal (fetched), the others at
    // admission (node 1: the forged one and the duplicate too) or in a
    // proposal, a few perhaps both ways; none more than twice.
    let total = hashes.len() as u64;
    for (i, node) in nodes.iter().enumerate() {
        let checked = node.shared.metrics.checked_txs.get();
        assert!(
            (total..=2 * total + 2).contains(&checked),
            "node {i} checked {checked} transactions of {total}"
        );
    }
    for node in nodes {
        node.stop().await.unwrap();
    }
}

/// Answers a catching-up node's sync requests as `key`, from `blocks`
/// (heights 1.. in order), with `forged` served in place of the block at
/// its height, until `stop` fires; counts in `served` how often the forged
/// block went out.
/// A swarm holding the validator's key on the validator's address, which
/// lets only the validator and the observer connect.
async fn start_liar(
    validator_key: &SigningKey,
    observer_key: &SigningKey,
    address: &str,
) -> Network {
    network::start(
        validator_key,
        NetworkConfig {
            chain_id: CHAIN.into(),
            listen: vec![address.parse().unwrap()],
            persistent_peers: Vec::new(),
            allowed_keys: vec![validator_key.public(), observer_key.public()],
            duplicate_window: DUPLICATE_WINDOW,
        },
    )
    .await
    .unwrap()
}

async fn serve_forged_chain(
    mut liar: Network,
    blocks: Vec<CommittedBlock>,
    forged: CommittedBlock,
    served: Arc<AtomicUsize>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let head = blocks
        .last()
        .expect("a chain to serve")
        .block
        .header
        .clone();
    let forged_height = forged.block.header.height;
    loop {
        let event = tokio::select! {
            _ = &mut stop => break,
            event = liar.events.recv() => event,
        };
        let Some(NetworkEvent::InboundRequest { id, data, .. }) = event else {
            continue;
        };
        let reply = match SyncRequest::from_bytes(&data).map(|r| r.query) {
            Ok(SyncQuery::Status) => SyncReply::Status {
                height: head.height,
                head_hash: head.hash(),
            },
            Ok(SyncQuery::Blocks { from, limit }) => {
                let range = from..from.saturating_add(u64::from(limit));
                let answer: Vec<CommittedBlock> = blocks
                    .iter()
                    .filter(|b| range.contains(&b.block.header.height))
                    .map(|b| {
                        if b.block.header.height == forged_height {
                            forged.clone()
                        } else {
                            b.clone()
                        }
                    })
                    .collect();
                if range.contains(&forged_height) && !answer.is_empty() {
                    served.fetch_add(1, Ordering::SeqCst);
                }
                SyncReply::Blocks(answer)
            }
            Ok(SyncQuery::Transactions { .. }) => SyncReply::Transactions(Vec::new()),
            Err(e) => SyncReply::Error(e.to_string()),
        };
        let response = SyncResponse {
            version: SyncResponse::VERSION,
            reply,
        };
        let _ = liar.handle.respond(id, response.to_bytes()).await;
    }
    liar.handle.shutdown().await;
    let _ = liar.task.await;
}

/// A certificate covers a header, not the transactions served with it: a
/// peer that serves a certified header with other transactions must
/// neither get them stored nor stop the node that is catching up, which
/// then catches up from an honest peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certified_header_served_with_other_transactions_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, layout) = loopback_testnet(dir.path(), CHAIN, 1, 1, 17, 0);
    let admin = read_admin_key(&dir.path().join(DEMO_ADMIN_KEY_FILE));
    let (validator_home, observer_home) = (&layout[0].home, &layout[1].home);
    let validator_key = read_key_file(&validator_home.join("node.key"), None).unwrap();
    let observer_key = read_key_file(&observer_home.join("node.key"), None).unwrap();

    // The validator commits some registrations and a few blocks after them.
    let validator = node::start(validator_home, fast_config(validator_home))
        .await
        .unwrap();
    let mut hashes = Vec::new();
    for i in 0..3 {
        let tx = registration(&admin, &format!("demo/liar-{i}"));
        hashes.push(validator.shared.submit(tx.to_bytes()).await.unwrap());
    }
    wait_committed_everywhere(std::slice::from_ref(&validator), &hashes).await;
    let forged_height = validator
        .shared
        .read_ledger()
        .tx_location(&hashes[0])
        .unwrap()
        .unwrap()
        .height;
    let deadline = Instant::now() + DEADLINE;
    while validator.shared.height() < forged_height + 2 {
        assert!(
            Instant::now() < deadline,
            "no blocks after the registrations"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let blocks: Vec<CommittedBlock> = {
        let ledger = validator.shared.read_ledger();
        (1..=ledger.height())
            .map(|h| ledger.committed_block(h).unwrap().unwrap())
            .collect()
    };
    let honest = blocks[forged_height as usize - 1].clone();
    // Same header and certificate, one transaction swapped for another
    // that is valid on its own.
    let mut forged = honest.clone();
    forged.block.transactions[0] = registration(&admin, "demo/never-certified");
    validator.stop().await.unwrap();

    // The liar holds the validator's key and address.
    let liar = start_liar(&validator_key, &observer_key, &layout[0].p2p_address).await;
    let (stop_liar, stop) = tokio::sync::oneshot::channel();
    let served = Arc::new(AtomicUsize::new(0));
    let liar = tokio::spawn(serve_forged_chain(
        liar,
        blocks,
        forged,
        served.clone(),
        stop,
    ));

    // The observer applies the blocks before the forged one and refuses it,
    // asking again in a later sync round.
    let observer = node::start(observer_home, fast_config(observer_home))
        .await
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while served.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the observer did not sync from the liar twice"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_liar.send(()).unwrap();
    liar.await.unwrap();
    assert_eq!(observer.shared.height(), forged_height - 1);

    // The honest validator comes back on the same address; the observer,
    // still running, catches up with the certified transactions.
    let validator = node::start(validator_home, fast_config(validator_home))
        .await
        .unwrap();
    let target = validator.shared.height();
    let deadline = Instant::now() + DEADLINE;
    while observer.shared.height() < target {
        assert!(Instant::now() < deadline, "the observer did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = observer
        .shared
        .read_ledger()
        .committed_block(forged_height)
        .unwrap();
    assert_eq!(stored, Some(honest));
    observer.stop().await.unwrap();
    validator.stop().await.unwrap();
}

/// A one-validator testnet in `dir` (ports probed with `stride`) whose
/// validator never starts: a liar holds its key and address, so the
/// running observer's only peer is the liar.
async fn observer_beside_a_liar(dir: &Path, stride: u16) -> (Network, RunningNode) {
    observer_with_mempool_beside_a_liar(dir, stride, None).await
}

/// [`observer_beside_a_liar`] whose observer holds at most `mempool_txs`
/// transactions (the default when `None`). Nothing commits, so its mempool
/// only fills.
async fn observer_with_mempool_beside_a_liar(
    dir: &Path,
    stride: u16,
    mempool_txs: Option<usize>,
) -> (Network, RunningNode) {
    let (_, layout) = loopback_testnet(dir, CHAIN, 1, 1, stride, 0);
    let (validator_home, observer_home) = (&layout[0].home, &layout[1].home);
    let validator_key = read_key_file(&validator_home.join("node.key"), None).unwrap();
    let observer_key = read_key_file(&observer_home.join("node.key"), None).unwrap();
    let liar = start_liar(&validator_key, &observer_key, &layout[0].p2p_address).await;
    let mut config = fast_config(observer_home);
    if let Some(max_txs) = mempool_txs {
        config.mempool.max_txs = max_txs;
    }
    let observer = node::start(observer_home, config).await.unwrap();
    (liar, observer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gossiped_batch_with_a_forged_signature_is_refused_and_not_relayed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut liar, observer) = observer_beside_a_liar(dir.path(), 19).await;
    let admin = read_admin_key(&dir.path().join(DEMO_ADMIN_KEY_FILE));
    let deadline = Instant::now() + DEADLINE;
    while liar.handle.status().await.unwrap().topic_peers.get("tx") != Some(&1) {
        assert!(Instant::now() < deadline, "the observer never subscribed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (beside_forged, honest) = (
        registration(&admin, "demo/gossip-beside-forged"),
        registration(&admin, "demo/gossip-honest"),
    );
    let mut forged = registration(&admin, "demo/gossip-forged");
    forged.signatures[0].signature.0[5] ^= 1;
    let batches = [
        vec![beside_forged.to_bytes(), forged.to_bytes()],
        vec![honest.to_bytes()],
    ];
    let metrics = &observer.shared.metrics;
    for (batch, verdict) in batches
        .iter()
        .zip([RelayVerdict::Reject, RelayVerdict::Relay])
    {
        liar.handle
            .publish(Topic::Transactions, encode_tx_batch(batch))
            .await
            .unwrap();
        while metrics.gossip_batches(verdict) != 1 {
            assert!(Instant::now() < deadline, "no {verdict:?} verdict");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(metrics.gossip_batches(RelayVerdict::Ignore), 0);
    // A valid transaction is admitted even beside a forged one (it stands
    // on its own signatures); the forged one never is.
    assert!(observer.shared.is_pending(&beside_forged.hash()));
    assert!(observer.shared.is_pending(&honest.hash()));
    assert!(!observer.shared.is_pending(&forged.hash()));
    // The observer relays the valid batch, but not back to the liar that
    // sent it: the liar gets no gossip at all.
    while let Ok(event) = liar.events.try_recv() {
        assert!(
            !matches!(
                event,
                NetworkEvent::Transactions { .. } | NetworkEvent::Consensus { .. }
            ),
            "the liar got {event:?}"
        );
    }

    observer.stop().await.unwrap();
    liar.handle.shutdown().await;
    liar.task.await.unwrap();
}

/// Submissions through a node's API fill three quarters of its mempool;
/// the last quarter still takes transactions gossiped by its peers, so a
/// transaction a peer admitted finds room here and is not fetched later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_leave_a_quarter_of_the_mempool_to_gossip() {
    let dir = tempfile::tempdir().unwrap();
    let (liar, observer) = observer_with_mempool_beside_a_liar(dir.path(), 29, Some(8)).await;
    let admin = read_admin_key(&dir.path().join(DEMO_ADMIN_KEY_FILE));
    let deadline = Instant::now() + DEADLINE;
    while liar.handle.status().await.unwrap().topic_peers.get("tx") != Some(&1) {
        assert!(Instant::now() < deadline, "the observer never subscribed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Seven submitted: six admitted (three quarters of 8), the last busy.
    let submitted: Vec<Transaction> = (0..7)
        .map(|i| registration(&admin, &format!("demo/submitted-{i}")))
        .collect();
    let hexes: Vec<String> = submitted
        .iter()
        .map(|tx| hex::encode(tx.to_bytes()))
        .collect();
    let (status, body) = post(
        observer.api_addr,
        "/v1/transactions/batch",
        json!({ "txs": hexes }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    for result in &results[..6] {
        assert_eq!(result["status"], "pending", "{result}");
    }
    assert_eq!(results[6]["error"]["code"], "busy", "{body}");
    assert_eq!(observer.shared.mempool_len(), 6);

    // Gossiped by the peer: two fill the reserved quarter, a third finds
    // the pool full.
    let gossiped: Vec<Transaction> = (0..3)
        .map(|i| registration(&admin, &format!("demo/gossiped-{i}")))
        .collect();
    let metrics = &observer.shared.metrics;
    for (batch, verdict) in [
        (&gossiped[..2], RelayVerdict::Relay),
        (&gossiped[2..], RelayVerdict::Ignore),
    ] {
        let bytes: Vec<Vec<u8>> = batch.iter().map(Canonical::to_bytes).collect();
        liar.handle
            .publish(Topic::Transactions, encode_tx_batch(&bytes))
            .await
            .unwrap();
        while metrics.gossip_batches(verdict) != 1 {
            assert!(Instant::now() < deadline, "no {verdict:?} verdict");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(observer.shared.is_pending(&gossiped[0].hash()));
    assert!(observer.shared.is_pending(&gossiped[1].hash()));
    assert!(!observer.shared.is_pending(&gossiped[2].hash()));
    assert_eq!(observer.shared.mempool_len(), 8);

    observer.stop().await.unwrap();
    liar.handle.shutdown().await;
    liar.task.await.unwrap();
}

/// A peer may leave a sync request unanswered until the request timeout
/// (20 s); a node stopping meanwhile must not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_while_a_peer_holds_its_sync_request_unanswered() {
    let dir = tempfile::tempdir().unwrap();
    let (mut liar, observer) = observer_beside_a_liar(dir.path(), 23).await;
    // The observer's sync loop asks its one peer for its status; the liar
    // holds the request.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let event = tokio::time::timeout_at(deadline, liar.events.recv())
            .await
            .expect("the observer never asked for the liar's status")
            .expect("the liar's network stopped");
        if let NetworkEvent::InboundRequest { data, .. } = event {
            if matches!(
                SyncRequest::from_bytes(&data).map(|r| r.query),
                Ok(SyncQuery::Status)
            ) {
                break;
            }
        }
    }
    tokio::time::timeout(Duration::from_secs(10), observer.stop())
        .await
        .expect("stopping waited for the unanswered request")
        .unwrap();
    liar.handle.shutdown().await;
    liar.task.await.unwrap();
}
