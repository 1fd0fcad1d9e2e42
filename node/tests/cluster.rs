//! A 4-validator network (plus an observer) of in-process nodes over real
//! libp2p on loopback, driven through the HTTP API: devices are registered,
//! rotated and revoked; every node, the observer included, agrees and serves
//! verifiable proofs; a stopped validator does not stop the others and
//! catches up after a restart; a node outside the validator set cannot
//! connect until governance adds it as a fifth validator, which then syncs
//! and votes; and the whole chain verifies along the handover from genesis.
//!
//! Waits are bounded polls of node state with deadlines, never fixed sleeps.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::Domain;
use keyreg_consensus::{verify_commit, Hash, SigningKey, ValidatorSet};
use keyreg_node::cli::{node_key, DEMO_ADMIN_KEY_FILE};
use keyreg_node::config::{Config, GENESIS_FILE, KEY_FILE};
use keyreg_node::keys::write_key_file;
use keyreg_node::network::peer_id_of;
use keyreg_node::node::{self, RunningNode};
use keyreg_registry::testkit::test_agreement_key;
use keyreg_registry::{
    verify_device_proof, Authority, CommittedBlock, DeviceName, DeviceProof, DeviceRegistration,
    DeviceStatus, Genesis, GovernanceAction, Revocation, Rotation, Transaction, TxBody,
    ValidatorInfo,
};
use serde_json::{json, Value};

use common::{fast_config, loopback_testnet, read_admin_key};
use tokio::time::Instant;

const CHAIN: &str = "cluster-test";
const DEADLINE: Duration = Duration::from_secs(90);

async fn start(home: &Path) -> RunningNode {
    let config = fast_config(home);
    node::start(home, config).await.unwrap()
}

fn call(request: ureq::Request, body: Option<Value>) -> (u16, Value) {
    let result = match body {
        Some(body) => request.send_json(body),
        None => request.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("HTTP transport error: {e}"),
    };
    let status = response.status();
    let text = response.into_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get(api: SocketAddr, path: &str) -> (u16, Value) {
    let url = format!("http://{api}{path}");
    tokio::task::spawn_blocking(move || call(ureq::get(&url), None))
        .await
        .unwrap()
}

async fn post(api: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let url = format!("http://{api}{path}");
    tokio::task::spawn_blocking(move || call(ureq::post(&url), Some(body)))
        .await
        .unwrap()
}

/// Polls `check` until it holds, failing the test at the deadline.
async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_height(what: &str, node: &RunningNode, height: u64) {
    let shared = &node.shared;
    wait_for(what, move || async move { shared.height() >= height }).await;
}

fn tx_body(tx: &Transaction) -> Value {
    json!({"tx": hex::encode(tx.to_bytes())})
}

async fn submit(api: SocketAddr, tx: &Transaction) -> Hash {
    let (status, body) = post(api, "/v1/transactions", tx_body(tx)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "pending");
    Hash::from_hex(body["hash"].as_str().unwrap()).unwrap()
}

async fn wait_committed(api: SocketAddr, hash: Hash) {
    let path = format!("/v1/transactions/{hash}");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, body) = get(api, &path).await;
        match body["status"].as_str() {
            Some("committed") => return,
            // Unknown here yet (gossip in flight) or still pending.
            None | Some("pending") => {
                assert!(
                    Instant::now() < deadline,
                    "transaction {hash} not committed"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(_) => panic!("transaction {hash} not committed: {body}"),
        }
    }
}

/// Fetches and verifies `org/name`'s proof from `api` under `set`.
async fn lookup(
    api: SocketAddr,
    name: &str,
    set: &ValidatorSet,
) -> Option<keyreg_registry::DeviceRecord> {
    let (status, body) = get(api, &format!("/v1/devices/{name}")).await;
    assert_eq!(status, 200, "{body}");
    let proof =
        DeviceProof::from_bytes(&hex::decode(body["proof"].as_str().unwrap()).unwrap()).unwrap();
    let record = verify_device_proof(CHAIN, set, &proof).unwrap();
    assert_eq!(body["height"], proof.header.height);
    assert_eq!(record.is_none(), body["record"].is_null());
    record
}

async fn current_set(api: SocketAddr) -> ValidatorSet {
    let (_, status) = get(api, "/v1/status").await;
    ValidatorSet::from_bytes(&hex::decode(status["validator_set"].as_str().unwrap()).unwrap())
        .unwrap()
}

/// Verifies every block from `api` from genesis: each certificate against
/// its epoch's set, the hash chain, and each handover to the next set.
/// Returns (verified height, epoch changes seen).
async fn verify_chain(api: SocketAddr, genesis: &Genesis) -> (u64, u64) {
    let (_, e0) = get(api, "/v1/epochs/0").await;
    assert!(e0["handover"].is_null());
    let mut set =
        ValidatorSet::from_bytes(&hex::decode(e0["validator_set"].as_str().unwrap()).unwrap())
            .unwrap();
    let (_, status) = get(api, "/v1/status").await;
    assert_eq!(status["genesis_hash"], genesis.hash().to_hex());
    // Block 1's parent is the height-0 header derived from the genesis file.
    let mut prev_hash = genesis.initial_state().unwrap().header.hash();
    let (mut height, mut changes, mut from) = (0u64, 0u64, 1u64);
    loop {
        let (code, page) = get(api, &format!("/v1/blocks?from={from}&limit=100")).await;
        assert_eq!(code, 200, "{page}");
        for hex_block in page["blocks"].as_array().unwrap() {
            let committed =
                CommittedBlock::from_bytes(&hex::decode(hex_block.as_str().unwrap()).unwrap())
                    .unwrap();
            let header = &committed.block.header;
            assert_eq!(header.height, height + 1);
            assert_eq!(
                header.prev_hash, prev_hash,
                "hash chain broken at {}",
                header.height
            );
            assert_eq!(header.validator_set_hash, set.hash());
            verify_commit(
                CHAIN,
                &set,
                header.height,
                &header.hash(),
                &committed.certificate,
            )
            .unwrap_or_else(|e| panic!("block {}: {e}", header.height));
            if header.changes_validators() {
                let (_, next) = get(api, &format!("/v1/epochs/{}", set.epoch + 1)).await;
                let next_set = ValidatorSet::from_bytes(
                    &hex::decode(next["validator_set"].as_str().unwrap()).unwrap(),
                )
                .unwrap();
                assert_eq!(next_set.hash(), header.next_validator_set_hash);
                assert_eq!(
                    next["handover"].as_str().unwrap(),
                    hex_block.as_str().unwrap()
                );
                set = next_set;
                changes += 1;
            }
            prev_hash = header.hash();
            height = header.height;
        }
        match page["next"].as_u64() {
            Some(next) => from = next,
            None => return (height, changes),
        }
    }
}

fn api(nodes: &[Option<RunningNode>], i: usize) -> SocketAddr {
    nodes[i].as_ref().unwrap().api_addr
}

fn node(nodes: &[Option<RunningNode>], i: usize) -> &RunningNode {
    nodes[i].as_ref().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_validators_serve_devices_survive_a_restart_and_admit_a_fifth() {
    let dir = tempfile::tempdir().unwrap();
    let (base, layout) = loopback_testnet(dir.path(), CHAIN, 4, 1, 7, 0);
    let admin = read_admin_key(&dir.path().join(DEMO_ADMIN_KEY_FILE));
    let homes: Vec<PathBuf> = layout.iter().map(|n| n.home.clone()).collect();

    let mut nodes: Vec<Option<RunningNode>> = Vec::new();
    for home in &homes {
        nodes.push(Some(start(home).await));
    }
    // Nodes 0..=3 validate; node 4 observes.
    for i in 0..5 {
        wait_height("first blocks", node(&nodes, i), 2).await;
    }

    // Register a device with a pre-rotation commitment, through node 0.
    let name = DeviceName::new("demo/sensor-1").unwrap();
    let device = SigningKey::generate().unwrap();
    let next = SigningKey::generate().unwrap();
    let registration = DeviceRegistration::new_signed(
        CHAIN,
        name.clone(),
        &device,
        test_agreement_key("sensor-1/0"),
        Some(next.public().digest(Domain::DeviceKey)),
        None,
        Default::default(),
    );
    let register =
        Transaction::new(CHAIN, TxBody::RegisterDevice(registration)).signed_by(&[&admin]);
    let hash = submit(api(&nodes, 0), &register).await;
    let (status, body) = post(api(&nodes, 0), "/v1/transactions", tx_body(&register)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_known"))
    );
    wait_committed(api(&nodes, 2), hash).await;
    // Committed, hence out of node 2's mempool: its transaction index refuses it.
    let (status, body) = post(api(&nodes, 2), "/v1/transactions", tx_body(&register)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_known")),
        "{body}"
    );
    let set = current_set(api(&nodes, 3)).await;
    let record = lookup(api(&nodes, 3), "demo/sensor-1", &set).await.unwrap();
    assert_eq!(record.signing_key, device.public());
    // An unknown name gets a verified non-membership proof.
    assert!(lookup(api(&nodes, 1), "demo/nobody", &set).await.is_none());

    // Wrong chain: rejected statelessly with the TxError's name.
    let foreign = Transaction::new(
        "other-chain",
        TxBody::RevokeDevice(Revocation {
            name: name.clone(),
            reason: "x".into(),
            authority: Authority::Admin,
        }),
    )
    .signed_by(&[&admin]);
    let (status, body) = post(api(&nodes, 1), "/v1/transactions", tx_body(&foreign)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("wrong_chain"))
    );

    // Rotate to the committed key, through node 1.
    let rotate = Transaction::new(
        CHAIN,
        TxBody::RotateDevice(Rotation {
            name: name.clone(),
            expected_key_version: 0,
            new_signing_key: next.public(),
            new_agreement_key: test_agreement_key("sensor-1/1"),
            next_key_commitment: None,
            authority: Authority::Device,
        }),
    )
    .signed_by(&[&device, &next]);
    let hash = submit(api(&nodes, 1), &rotate).await;
    wait_committed(api(&nodes, 1), hash).await;
    let record = lookup(api(&nodes, 0), "demo/sensor-1", &set).await.unwrap();
    assert_eq!((record.signing_key, record.key_version), (next.public(), 1));

    // Revoke by the admin, through node 2.
    let revoke = Transaction::new(
        CHAIN,
        TxBody::RevokeDevice(Revocation {
            name: name.clone(),
            reason: "decommissioned".into(),
            authority: Authority::Admin,
        }),
    )
    .signed_by(&[&admin]);
    let hash = submit(api(&nodes, 2), &revoke).await;
    wait_committed(api(&nodes, 3), hash).await;
    let observer_api = api(&nodes, 4);
    wait_committed(observer_api, hash).await;
    let record = lookup(observer_api, "demo/sensor-1", &set).await.unwrap();
    assert!(matches!(record.status, DeviceStatus::Revoked { .. }));
    let (_, observer) = get(observer_api, "/v1/status").await;
    assert_eq!(observer["is_validator"], false);

    // Every node has the same header (hence block hash and state root) at a
    // common height. Certificates may differ: each node keeps the quorum of
    // precommits it collected.
    let common = (0..5)
        .map(|i| node(&nodes, i).shared.height())
        .min()
        .unwrap();
    let (_, reference) = get(api(&nodes, 0), &format!("/v1/blocks/{common}")).await;
    for i in 1..5 {
        let (_, block) = get(api(&nodes, i), &format!("/v1/blocks/{common}")).await;
        assert_eq!(
            block["header"], reference["header"],
            "node {i} differs at {common}"
        );
    }

    // Stop validator 3: the other three (> 2/3) keep committing.
    let stopped_at = node(&nodes, 0).shared.height();
    nodes[3].take().unwrap().stop().await.unwrap();
    for i in 0..3 {
        wait_height("progress without node 3", node(&nodes, i), stopped_at + 3).await;
    }
    // Restarted, it catches up from its own store and its peers.
    nodes[3] = Some(start(&homes[3]).await);
    let target = node(&nodes, 0).shared.height();
    wait_height("node 3 catches up", node(&nodes, 3), target).await;

    // A fifth node whose key is not in the validator set: refused by all.
    let fifth_home = dir.path().join("newcomer");
    std::fs::create_dir_all(&fifth_home).unwrap();
    let fifth_key = SigningKey::generate().unwrap();
    write_key_file(&fifth_home.join(KEY_FILE), &fifth_key, None).unwrap();
    std::fs::copy(homes[0].join(GENESIS_FILE), fifth_home.join(GENESIS_FILE)).unwrap();
    let fifth_address = format!("/ip4/127.0.0.1/tcp/{}", base + 5);
    let mut config = Config::default();
    config.p2p.listen = fifth_address.clone();
    config.p2p.persistent_peers = layout
        .iter()
        .filter(|n| n.validator)
        .map(|n| {
            let peer = peer_id_of(&node_key(&n.home).unwrap().public()).unwrap();
            format!("{}/p2p/{peer}", n.p2p_address)
        })
        .collect();
    config.save(&fifth_home).unwrap();
    nodes.push(Some(start(&fifth_home).await));
    let probe_from = node(&nodes, 0).shared.height();
    // Several redial rounds of the fifth node pass while the chain advances.
    wait_height(
        "chain advances while the outsider knocks",
        node(&nodes, 0),
        probe_from + 5,
    )
    .await;
    assert_eq!(
        node(&nodes, 5).shared.height(),
        0,
        "the outsider synced nothing"
    );
    for i in 0..4 {
        let (_, status) = get(api(&nodes, i), "/v1/status").await;
        // Three other validators and the observer; not the outsider.
        assert_eq!(status["peers"], 4, "node {i} must not count the outsider");
    }

    // Governance adds the fifth validator (the demo org meets the threshold).
    let mut validators: Vec<ValidatorInfo> = homes
        .iter()
        .zip(&layout)
        .filter(|(_, n)| n.validator)
        .map(|(home, n)| ValidatorInfo::new(node_key(home).unwrap().public(), 1, &n.p2p_address))
        .collect();
    validators.push(ValidatorInfo::new(fifth_key.public(), 1, &fifth_address));
    validators.sort_by_key(|v| v.key);
    let govern = Transaction::new(
        CHAIN,
        TxBody::Governance {
            sequence: 0,
            action: GovernanceAction::SetValidators { validators },
        },
    )
    .signed_by(&[&admin]);
    let hash = submit(api(&nodes, 0), &govern).await;
    wait_committed(api(&nodes, 0), hash).await;
    let fifth_api = api(&nodes, 5);
    wait_for(
        "the fifth validator syncs and is in the set",
        move || async move {
            let (_, status) = get(fifth_api, "/v1/status").await;
            status["is_validator"] == true && status["epoch"] == 1
        },
    )
    .await;
    let caught_up = node(&nodes, 1).shared.height();
    wait_height("the fifth validator catches up", node(&nodes, 5), caught_up).await;

    // With validator 0 stopped, 4 of 5 remain: exactly a quorum only if the
    // fifth votes, so progress proves it does.
    let before = node(&nodes, 1).shared.height();
    nodes[0].take().unwrap().stop().await.unwrap();
    wait_height(
        "progress needs the fifth's votes",
        node(&nodes, 1),
        before + 3,
    )
    .await;
    let (_, latest) = get(api(&nodes, 1), &format!("/v1/blocks/{}", before + 3)).await;
    let latest =
        CommittedBlock::from_bytes(&hex::decode(latest["block"].as_str().unwrap()).unwrap())
            .unwrap();
    let new_set = current_set(api(&nodes, 1)).await;
    let fifth_index = new_set.index_of(&fifth_key.public()).unwrap();
    assert!(latest.certificate.signer_indexes().contains(&fifth_index));

    // The whole chain verifies from genesis across the handover, on two nodes.
    let genesis =
        Genesis::from_json(&std::fs::read_to_string(homes[0].join(GENESIS_FILE)).unwrap()).unwrap();
    // On a validator, the observer and the newcomer.
    for i in [1, 4, 5] {
        let (height, changes) = verify_chain(api(&nodes, i), &genesis).await;
        assert!(height >= before + 3);
        assert_eq!(changes, 1);
    }

    for node in nodes.into_iter().flatten() {
        node.stop().await.unwrap();
    }
}
