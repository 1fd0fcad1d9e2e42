//! A flood of look-ups and transactions against a 4-validator in-process
//! cluster with tight API limits: the flooders get 429 (per-client rate) and
//! 503 (global in-flight bound) answers, while the nodes keep committing, an
//! honest client's transactions sent during the flood are committed, and
//! every node still answers afterwards.
//!
//! Flooders and the honest client are separate loopback addresses
//! (127.0.0.1 floods, 127.0.0.2 is honest, 127.0.1.x spray), so per-client
//! limits tell them apart. Every loop is bounded by a request count; waits
//! are bounded polls, and nothing asserts on speed.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::Domain;
use keyreg_consensus::{Hash, SigningKey};
use keyreg_node::cli::DEMO_ADMIN_KEY_FILE;
use keyreg_node::config::ApiLimits;
use keyreg_node::driver::URGENT_PROPOSAL_BYTES;
use keyreg_node::metrics::Rejection;
use keyreg_node::node::{self, RunningNode, SubmitError};
use keyreg_registry::testkit::test_agreement_key;
use keyreg_registry::{
    Authority, DeviceName, DeviceRegistration, DeviceStatus, Revocation, Transaction, TxBody,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::Instant;

use common::{fast_config, loopback_testnet, read_admin_key};

const CHAIN: &str = "flood-test";
const DEADLINE: Duration = Duration::from_secs(120);
const FLOODER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const HONEST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// Limits far below what the flood sends, so it is turned away whatever the
/// machine's speed.
fn tight_limits() -> ApiLimits {
    ApiLimits {
        max_in_flight: 2,
        lookups_per_second: 2,
        lookup_burst: 10,
        submissions_per_second: 2,
        submission_burst: 10,
        max_tracked_clients: 32,
        exempt_loopback: false,
        ..ApiLimits::default()
    }
}

async fn start(home: &Path) -> RunningNode {
    let mut config = fast_config(home);
    config.mempool.max_txs = 300;
    config.api.limits = tight_limits();
    node::start(home, config).await.unwrap()
}

/// One HTTP/1.1 request from `source` (connection closed after it): the
/// status, or 0 when the connection failed. The answer's size is bounded.
async fn http(source: IpAddr, api: SocketAddr, method: &str, path: &str, body: &str) -> u16 {
    let exchange = async {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let mut stream = socket.connect(api).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        (&mut stream).take(1 << 20).read_to_end(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    match exchange.await {
        Ok(response) => String::from_utf8_lossy(&response)
            .split(' ')
            .nth(1)
            .and_then(|status| status.parse().ok())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// Answers seen by the flooders, by status.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    rate_limited: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
}

impl Tally {
    fn count(&self, status: u16) {
        match status {
            200..=299 => &self.ok,
            429 => &self.rate_limited,
            503 => &self.unavailable,
            _ => &self.other,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

fn registration(admin: &SigningKey, label: &str) -> Transaction {
    let device = SigningKey::from_seed(*blake3::hash(label.as_bytes()).as_bytes());
    let registration = DeviceRegistration::new_signed(
        CHAIN,
        DeviceName::new(&format!("demo/{label}")).unwrap(),
        &device,
        test_agreement_key(label),
        Some(device.public().digest(Domain::DeviceKey)),
        None,
        Default::default(),
    );
    Transaction::new(CHAIN, TxBody::RegisterDevice(registration)).signed_by(&[admin])
}

/// The admin's revocation of `demo/{label}`.
fn admin_revocation(admin: &SigningKey, label: &str) -> Transaction {
    Transaction::new(
        CHAIN,
        TxBody::RevokeDevice(Revocation {
            name: DeviceName::new(&format!("demo/{label}")).unwrap(),
            reason: "stolen".into(),
            authority: Authority::Admin,
        }),
    )
    .signed_by(&[admin])
}

/// Registers `demo/{label}` and waits until it is committed.
async fn register_and_commit(node: &RunningNode, admin: &SigningKey, label: &str) {
    let hash = node
        .shared
        .submit(registration(admin, label).to_bytes())
        .await
        .unwrap();
    wait_for("the device's registration", || committed(node, &hash)).await;
}

fn submit_body(tx: &Transaction) -> String {
    format!("{{\"tx\":\"{}\"}}", hex::encode(tx.to_bytes()))
}

/// Submits `tx` from the honest address until accepted, retrying "busy"
/// answers (bounded).
async fn submit_honestly(api: SocketAddr, tx: &Transaction) {
    let body = submit_body(tx);
    for _ in 0..600 {
        match http(HONEST, api, "POST", "/v1/transactions", &body).await {
            // Accepted, or accepted by an earlier try whose answer was lost.
            202 | 409 => return,
            429 | 503 | 0 => tokio::time::sleep(Duration::from_millis(100)).await,
            status => panic!("honest submission refused with {status}"),
        }
    }
    panic!("honest submission never accepted");
}

fn committed(node: &RunningNode, hash: &Hash) -> bool {
    matches!(node.shared.read_ledger().tx_location(hash), Ok(Some(loc)) if loc.result.is_ok())
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooded_cluster_answers_busy_and_keeps_committing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, layout) = loopback_testnet(dir.path(), CHAIN, 4, 0, 11, 0);
    let admin = read_admin_key(&dir.path().join(DEMO_ADMIN_KEY_FILE));
    let mut nodes = Vec::new();
    for n in &layout {
        nodes.push(start(&n.home).await);
    }
    wait_for("first blocks", || {
        nodes.iter().all(|n| n.shared.height() >= 2)
    })
    .await;
    let apis: Vec<SocketAddr> = nodes.iter().map(|n| n.api_addr).collect();
    let height_before = nodes[0].shared.height();

    let tally = Arc::new(Tally::default());
    let mut flood = tokio::task::JoinSet::new();
    // Look-up floods from one address against nodes 0 and 1.
    for task in 0..8 {
        let (tally, api) = (tally.clone(), apis[task % 2]);
        flood.spawn(async move {
            for i in 0..300 {
                let path = match i % 3 {
                    0 => "/v1/status".to_string(),
                    1 => format!("/v1/devices/demo/probe-{i}"),
                    _ => format!("/v1/blocks?from={}&limit=100", i % 7 + 1),
                };
                tally.count(http(FLOODER, api, "GET", &path, "").await);
            }
        });
    }
    // Transaction floods from the same address: valid registrations (they
    // fill the mempool) and garbage.
    let flood_txs: Vec<String> = (0..1200)
        .map(|i| submit_body(&registration(&admin, &format!("flood-{i}"))))
        .collect();
    for (task, chunk) in flood_txs.chunks(300).enumerate() {
        let (tally, api, chunk) = (tally.clone(), apis[task % 2], chunk.to_vec());
        flood.spawn(async move {
            for (i, body) in chunk.iter().enumerate() {
                let body = if i % 5 == 4 {
                    "{\"tx\":\"00zz\"}"
                } else {
                    body
                };
                tally.count(http(FLOODER, api, "POST", "/v1/transactions", body).await);
            }
        });
    }
    // A spray from many addresses at once: each has a full bucket, so they
    // reach the global in-flight bound, and they churn the bounded map.
    for host in 1..=96u8 {
        let (tally, api) = (tally.clone(), apis[usize::from(host) % 2]);
        flood.spawn(async move {
            let source = IpAddr::from([127, 0, 1, host]);
            for i in 0..6 {
                let path = format!("/v1/devices/demo/spray-{host}-{i}");
                tally.count(http(source, api, "GET", &path, "").await);
            }
        });
    }

    // Meanwhile an honest client submits through the flooded node 0.
    let honest: Vec<Transaction> = (0..5)
        .map(|i| registration(&admin, &format!("honest-{i}")))
        .collect();
    for tx in &honest {
        submit_honestly(apis[0], tx).await;
    }
    while let Some(result) = flood.join_next().await {
        result.expect("a flood task panicked");
    }

    let rate_limited = tally.rate_limited.load(Ordering::Relaxed);
    let unavailable = tally.unavailable.load(Ordering::Relaxed);
    eprintln!(
        "flood answers: {} served, {rate_limited} x 429, {unavailable} x 503, {} other",
        tally.ok.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed)
    );
    assert!(
        rate_limited > 0,
        "the flooding address was never rate limited"
    );
    assert!(unavailable > 0, "the in-flight bound never answered 503");
    assert!(
        tally.ok.load(Ordering::Relaxed) > 0,
        "nothing was served at all"
    );
    let metrics = &nodes[0].shared.metrics;
    assert!(
        metrics.rejections(Rejection::LookupRateLimited) > 0
            && metrics.rejections(Rejection::SubmissionRateLimited) > 0,
        "rejections are counted"
    );

    // Every honest transaction is committed on every node, and the chain
    // moves on after the flood.
    for tx in &honest {
        let hash = tx.hash();
        wait_for("honest transactions committed everywhere", || {
            nodes.iter().all(|n| committed(n, &hash))
        })
        .await;
    }
    let height_after_flood = nodes[0].shared.height();
    assert!(height_after_flood > height_before);
    wait_for("blocks after the flood", || {
        nodes.iter().all(|n| n.shared.height() > height_after_flood)
    })
    .await;
    for api in &apis {
        assert_eq!(http(HONEST, *api, "GET", "/healthz", "").await, 200);
        assert_eq!(http(HONEST, *api, "GET", "/v1/status", "").await, 200);
    }
    for node in nodes {
        node.stop().await.unwrap();
    }
}

/// A stolen device's revocation must not wait behind a flood: with the
/// mempool full of registrations, a revocation that would succeed at the
/// head is still admitted (the urgent lane has room of its own) and goes
/// into the next block ahead of the registrations that came before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_jumps_a_full_mempool() {
    let dir = tempfile::tempdir().unwrap();
    let (_, layout) = loopback_testnet(dir.path(), CHAIN, 1, 0, 23, 0);
    let admin = read_admin_key(&dir.path().join(DEMO_ADMIN_KEY_FILE));
    let home = &layout[0].home;
    let mut config = fast_config(home);
    // Submissions fill 24 of the 32 slots; 2 more are urgent ones.
    config.mempool.max_txs = 32;
    let node = node::start(home, config).await.unwrap();

    register_and_commit(&node, &admin, "stolen").await;

    // One admission round (one arrival): 40 registrations, then the
    // revocation, all inserted under one lock of the empty mempool.
    let revocation = admin_revocation(&admin, "stolen");
    let mut batch: Vec<Vec<u8>> = (0..40)
        .map(|i| registration(&admin, &format!("flood-{i}")).to_bytes())
        .collect();
    batch.push(revocation.to_bytes());
    let verdicts = node.shared.submit_many(batch).await.unwrap();
    let (flood, revoked) = verdicts.split_at(40);
    assert!(flood[..24].iter().all(Result::is_ok), "{flood:?}");
    assert!(
        flood[24..].iter().all(|v| v == &Err(SubmitError::Busy)),
        "{flood:?}"
    );
    let revocation_hash = revoked[0].clone().expect("the revocation is admitted");
    let first_flooded = flood[0].clone().unwrap();

    wait_for("the revocation and the flood", || {
        committed(&node, &revocation_hash) && committed(&node, &first_flooded)
    })
    .await;
    {
        let ledger = node.shared.read_ledger();
        let revoked_at = ledger.tx_location(&revocation_hash).unwrap().unwrap();
        let flooded_at = ledger.tx_location(&first_flooded).unwrap().unwrap();
        assert!(
            (revoked_at.height, revoked_at.index) < (flooded_at.height, flooded_at.index),
            "revocation at {revoked_at:?}, first registration of the flood at {flooded_at:?}"
        );
        let device = ledger
            .device(&DeviceName::new("demo/stolen").unwrap())
            .unwrap()
            .unwrap();
        assert!(
            matches!(device.status, DeviceStatus::Revoked { .. }),
            "{device:?}"
        );
    }
    node.stop().await.unwrap();
}

/// While a revocation waits, proposals are kept to a quarter of a block:
/// behind a backlog that would fill one block, the revocation's block is
/// short (so is its height under a flood) and the backlog follows in the
/// next ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_block_holding_a_revocation_is_kept_short() {
    let dir = tempfile::tempdir().unwrap();
    let (_, layout) = loopback_testnet(dir.path(), CHAIN, 1, 0, 23, 0);
    let admin = read_admin_key(&dir.path().join(DEMO_ADMIN_KEY_FILE));
    let home = &layout[0].home;
    let node = node::start(home, fast_config(home)).await.unwrap();

    register_and_commit(&node, &admin, "stolen").await;

    // One admission round (one arrival): a backlog of registrations about
    // 1.4 quarter blocks large, which one block would hold whole, then
    // the revocation.
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut backlog_bytes = 0;
    while backlog_bytes < URGENT_PROPOSAL_BYTES * 7 / 5 {
        let tx = registration(&admin, &format!("backlog-{}", batch.len())).to_bytes();
        backlog_bytes += tx.len();
        batch.push(tx);
    }
    let revocation = admin_revocation(&admin, "stolen");
    batch.push(revocation.to_bytes());
    let verdicts = node.shared.submit_many(batch).await.unwrap();
    let hashes: Vec<Hash> = verdicts
        .into_iter()
        .map(|verdict| verdict.expect("admitted"))
        .collect();
    let (revocation_hash, backlog) = hashes.split_last().unwrap();

    wait_for("the revocation and the backlog", || {
        backlog.iter().all(|hash| committed(&node, hash)) && committed(&node, revocation_hash)
    })
    .await;
    {
        let ledger = node.shared.read_ledger();
        let revoked_at = ledger.tx_location(revocation_hash).unwrap().unwrap();
        let block = ledger.block(revoked_at.height).unwrap().unwrap();
        let block_bytes: usize = block
            .transactions
            .iter()
            .map(|tx| tx.to_bytes().len())
            .sum();
        assert_eq!(revoked_at.index, 0, "urgent transactions go first");
        assert!(
            block_bytes <= URGENT_PROPOSAL_BYTES,
            "the revocation's block holds {block_bytes} bytes of transactions"
        );
        let last = ledger
            .tx_location(&backlog[backlog.len() - 1])
            .unwrap()
            .unwrap();
        assert!(
            last.height > revoked_at.height,
            "the backlog's last registration went in block {}, the revocation's {}",
            last.height,
            revoked_at.height
        );
    }
    node.stop().await.unwrap();
}
