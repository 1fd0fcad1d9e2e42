//! Real `keyreg-node` processes: a validator is killed with SIGKILL at
//! varying moments while transactions flow; every restart gives a consistent
//! node that rejoins, catches up and agrees with the others. Then the
//! crashed node's ledger is exported for audit.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::Domain;
use keyreg_consensus::{Hash, SigningKey};
use keyreg_node::cli::DEMO_ADMIN_KEY_FILE;
use keyreg_node::config::Config;
use keyreg_registry::export::ExportReader;
use keyreg_registry::testkit::test_agreement_key;
use keyreg_registry::{DeviceName, DeviceRegistration, Transaction, TxBody};
use serde_json::{json, Value};

use common::{loopback_testnet, read_admin_key};

const BIN: &str = env!("CARGO_BIN_EXE_keyreg-node");
const CHAIN: &str = "crash-test";
const DEADLINE: Duration = Duration::from_secs(90);

/// Kills every child on drop, so a failing test leaves no processes behind.
struct Processes(Vec<Option<Child>>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.0.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(home: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("node.log"))
        .unwrap();
    Command::new(BIN)
        .args(["start", "--home"])
        .arg(home)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// GET or POST; `None` while the node is not serving (starting, killed).
fn http(api: SocketAddr, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
    let url = format!("http://{api}{path}");
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let result = match body {
        Some(body) => agent.post(&url).send_json(body.clone()),
        None => agent.get(&url).call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(_)) => return None,
    };
    let status = response.status();
    let value = response.into_json().unwrap_or(Value::Null);
    Some((status, value))
}

fn height(api: SocketAddr) -> Option<u64> {
    http(api, "/v1/status", None).and_then(|(_, s)| s["height"].as_u64())
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn registration(admin: &SigningKey, n: usize) -> Transaction {
    let device = SigningKey::generate().unwrap();
    let name = DeviceName::new(&format!("demo/crash-{n}")).unwrap();
    let registration = DeviceRegistration::new_signed(
        CHAIN,
        name,
        &device,
        test_agreement_key(&format!("crash-{n}")),
        Some(
            SigningKey::generate()
                .unwrap()
                .public()
                .digest(Domain::DeviceKey),
        ),
        None,
        Default::default(),
    );
    Transaction::new(CHAIN, TxBody::RegisterDevice(registration)).signed_by(&[admin])
}

#[test]
fn sigkilled_validator_restarts_consistent_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_, layout) = loopback_testnet(dir.path(), CHAIN, 4, 0, 13, 4);
    let homes: Vec<PathBuf> = layout.iter().map(|n| n.home.clone()).collect();
    let apis: Vec<SocketAddr> = layout.iter().map(|n| n.api_listen).collect();
    for home in &homes {
        let mut config = Config::load(home).unwrap();
        config.consensus.min_block_interval_ms = 50;
        config.consensus.heartbeat_interval_ms = 500;
        config.consensus.timeout_propose_ms = 1000;
        config.consensus.timeout_vote_ms = 500;
        config.save(home).unwrap();
    }
    let admin = read_admin_key(&dir.path().join(DEMO_ADMIN_KEY_FILE));
    let mut procs = Processes(homes.iter().map(|h| Some(spawn(h))).collect());
    for &api in &apis {
        wait_for("first blocks", || height(api).is_some_and(|h| h >= 2));
    }

    // Kill node 3 at different moments relative to a transaction and the
    // block pipeline; each restart must open a consistent store and rejoin.
    let mut hashes = Vec::new();
    for (round, kill_after_ms) in [0u64, 120, 330, 700].into_iter().enumerate() {
        let tx = registration(&admin, round);
        let (status, body) = http(
            apis[round % 3],
            "/v1/transactions",
            Some(&json!({"tx": hex::encode(tx.to_bytes())})),
        )
        .unwrap();
        assert_eq!(status, 202, "{body}");
        hashes.push(tx.hash());
        // Varies where the kill lands; not an assertion.
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        let mut victim = procs.0[3].take().unwrap();
        victim.kill().unwrap();
        victim.wait().unwrap();
        procs.0[3] = Some(spawn(&homes[3]));
        let target = height(apis[0]).unwrap();
        wait_for("restarted node catches up", || {
            height(apis[3]).is_some_and(|h| h >= target)
        });
    }

    // Every transaction is committed, as seen by the crashed node too.
    for hash in &hashes {
        let path = format!("/v1/transactions/{hash}");
        wait_for("transaction committed on node 3", || {
            http(apis[3], &path, None).is_some_and(|(_, b)| b["status"] == "committed")
        });
    }
    // All four agree on the header at a common height (certificates may
    // hold different quorums).
    let common = apis.iter().map(|&a| height(a).unwrap()).min().unwrap();
    let headers: Vec<Value> = apis
        .iter()
        .map(|&a| http(a, &format!("/v1/blocks/{common}"), None).unwrap().1["header"].clone())
        .collect();
    assert!(headers.iter().all(|h| h == &headers[0] && h.is_object()));

    // Crash node 3 once more and export its ledger offline.
    let mut victim = procs.0[3].take().unwrap();
    victim.kill().unwrap();
    victim.wait().unwrap();
    let export = dir.path().join("ledger.krl");
    let status = Command::new(BIN)
        .args(["export", "--home"])
        .arg(&homes[3])
        .arg("--out")
        .arg(&export)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // The file reads back with the auditor's reader: header, every block in
    // order on one hash chain, and a verified end marker.
    let mut reader = ExportReader::open(std::fs::File::open(&export).unwrap()).unwrap();
    let header = reader.header().clone();
    assert_eq!(header.chain_id, CHAIN);
    assert!(header.head_height >= common);
    let mut prev: Option<Hash> = None;
    while let Some(block) = reader.next_block().unwrap() {
        let block = block.unwrap();
        if let Some(prev) = prev {
            assert_eq!(block.block.header.prev_hash, prev);
        }
        prev = Some(block.block.hash());
    }
    assert_eq!(reader.next_height(), header.head_height + 1);
    assert_eq!(prev, Some(header.head_hash));
}
