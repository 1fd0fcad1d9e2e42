//! End to end against a real `keyreg-node dev` process: two devices register
//! through the HTTP API, look each other up with verified proofs, open an
//! encrypted session and exchange messages; after one is revoked a new
//! session with it is refused; with the node stopped, devices still
//! authenticate each other from stapled proofs.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use keyreg_client::keys::{AdminKey, DeviceKeys};
use keyreg_client::light::{LightClient, LightConfig, TrustAnchor};
use keyreg_client::node::NodeClient;
use keyreg_client::session::{
    LocalIdentity, RefusalReason, SecureSession, SessionConfig, SessionError, VerificationSource,
};
use keyreg_client::txs::{self, TxOutcome};
use keyreg_registry::genesis::Genesis;
use keyreg_registry::names::DeviceName;
use keyreg_registry::records::Metadata;
use keyreg_registry::tx::Authority;

/// The `keyreg-node` binary built beside this test (same target directory).
fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/keyreg-node
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("keyreg-node");
    assert!(
        bin.exists(),
        "{} missing: build the workspace first",
        bin.display()
    );
    bin
}

/// Kills the node when the test ends, passing or failing.
struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn start_dev_node(home: &Path, port: u16) -> NodeProcess {
    let log = std::fs::File::create(home.with_extension("log")).expect("log file");
    let child = Command::new(node_binary())
        .args(["dev", "--home"])
        .arg(home)
        .args(["--api", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn keyreg-node dev");
    NodeProcess(child)
}

fn wait_for_height(node: &NodeClient, height: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if matches!(node.status(), Ok(s) if s.height >= height) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node never reached height {height}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn commit(nodes: &[NodeClient], tx: &keyreg_registry::tx::Transaction) -> u64 {
    let (hash, _) = txs::submit(nodes, tx).expect("submit");
    match txs::wait_for_commit(nodes, &hash, Duration::from_secs(60)).expect("wait") {
        TxOutcome::Committed { height, .. } => height,
        TxOutcome::Rejected { reason, .. } => panic!("transaction rejected: {reason}"),
    }
}

fn identity(keys: &DeviceKeys, staple: Option<Vec<u8>>) -> LocalIdentity {
    let mut id = LocalIdentity::new(keys.name.to_string(), keys.current.agreement.clone());
    id.set_staple(staple);
    id
}

fn agreement_public(keys: &DeviceKeys) -> [u8; 32] {
    keys.current.agreement_key().0
}

/// `a` initiates to `b`, which answers in a thread with its own light client.
fn handshake(
    chain_id: &str,
    a: &LocalIdentity,
    a_client: &mut LightClient,
    b: LocalIdentity,
    mut b_client: LightClient,
) -> (
    Result<SecureSession, SessionError>,
    Result<SecureSession, SessionError>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let expected = b.name().to_string();
    let config = SessionConfig::new(chain_id);
    let server_config = config.clone();
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        SecureSession::respond(stream, &b, &mut b_client, &server_config)
    });
    let stream = TcpStream::connect(addr).expect("connect");
    let a_result = SecureSession::initiate(stream, &expected, a, a_client, &config);
    (a_result, server.join().expect("responder thread"))
}

#[test]
fn devices_register_look_up_talk_and_a_revoked_peer_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path().join("dev");
    let port = free_port();
    let node_process = start_dev_node(&home, port);
    let url = format!("http://127.0.0.1:{port}");
    let node = NodeClient::new(&url, Duration::from_secs(5));
    wait_for_height(&node, 1);
    let nodes = vec![node.clone()];

    let genesis_text = std::fs::read_to_string(home.join("genesis.json")).expect("genesis");
    let genesis = Genesis::from_json(&genesis_text).expect("genesis parses");
    let chain_id = genesis.chain_id.clone();
    let admin = AdminKey::load(&home.join("demo-admin.key")).expect("demo admin key");
    let device = |local: &str| {
        DeviceKeys::generate(DeviceName::new(&format!("demo/{local}")).expect("name"))
            .expect("keys")
    };
    let (alpha, beta, gamma) = (device("alpha"), device("beta"), device("gamma"));
    for keys in [&alpha, &beta, &gamma] {
        commit(
            &nodes,
            &txs::register_device(&chain_id, &admin, keys, None, Metadata::new()),
        );
    }

    let light = |nodes: Vec<NodeClient>| {
        LightClient::new(
            TrustAnchor::from_genesis(&genesis).expect("anchor"),
            nodes,
            LightConfig::default(),
        )
    };
    let mut alpha_client = light(nodes.clone());
    let mut beta_client = light(nodes.clone());

    // Verified look-ups: a present peer, and an absent one proven absent.
    let found = alpha_client.lookup(&beta.name).expect("look-up of beta");
    let record = found.record.expect("beta is registered");
    assert!(record.is_active());
    assert_eq!(record.agreement_key.0, agreement_public(&beta));
    let missing = DeviceName::new("demo/nobody").expect("name");
    assert!(alpha_client
        .lookup(&missing)
        .expect("look-up of an absent name")
        .record
        .is_none());

    // A session between alpha and beta, both stapling fresh proofs.
    let alpha_staple = alpha_client
        .own_staple(&alpha.name, &agreement_public(&alpha))
        .expect("alpha's staple");
    let beta_staple = beta_client
        .own_staple(&beta.name, &agreement_public(&beta))
        .expect("beta's staple");
    let a = identity(&alpha, Some(alpha_staple.clone()));
    let (a_session, b_session) = handshake(
        &chain_id,
        &a,
        &mut alpha_client,
        identity(&beta, Some(beta_staple.clone())),
        light(nodes.clone()),
    );
    let (mut a_session, mut b_session) = (a_session.expect("alpha"), b_session.expect("beta"));
    assert_eq!(a_session.peer().name, "demo/beta");
    a_session.send(b"hello beta").expect("send");
    assert_eq!(
        b_session.recv().expect("recv").as_deref(),
        Some(&b"hello beta"[..])
    );
    b_session.send(b"hello alpha").expect("send");
    assert_eq!(
        a_session.recv().expect("recv").as_deref(),
        Some(&b"hello alpha"[..])
    );
    drop((a_session, b_session));

    // Gamma's staple, taken while the node is up, for the offline check below.
    let mut gamma_client = light(nodes.clone());
    let gamma_staple = gamma_client
        .own_staple(&gamma.name, &agreement_public(&gamma))
        .expect("gamma's staple");

    // Beta is revoked; alpha learns it by a look-up and refuses beta even
    // when beta replays its pre-revocation staple.
    commit(
        &nodes,
        &txs::revoke(
            &chain_id,
            &beta.name,
            "stolen",
            Authority::Device,
            &beta.current.signing,
        ),
    );
    let revoked = alpha_client
        .lookup(&beta.name)
        .expect("look-up after revocation");
    assert!(!revoked.record.expect("record kept").is_active());
    for staple in [None, Some(beta_staple)] {
        let (a_result, b_result) = handshake(
            &chain_id,
            &a,
            &mut alpha_client,
            identity(&beta, staple),
            light(nodes.clone()),
        );
        assert!(
            matches!(&a_result, Err(SessionError::Refused(RefusalReason::Revoked(n))) if n == "demo/beta"),
            "{a_result:?}"
        );
        assert!(b_result.is_err(), "beta got a session after its revocation");
    }

    // Every node stopped: alpha and gamma still authenticate each other from
    // their stapled proofs, verified offline against their light clients.
    drop(node_process);
    assert!(node.status().is_err(), "the node should be down");
    let (a_result, g_result) = handshake(
        &chain_id,
        &identity(&alpha, Some(alpha_staple)),
        &mut alpha_client,
        identity(&gamma, Some(gamma_staple)),
        gamma_client,
    );
    let (mut a_session, mut g_session) = (a_result.expect("alpha"), g_result.expect("gamma"));
    assert_eq!(a_session.peer().source, VerificationSource::Staple);
    assert_eq!(g_session.peer().source, VerificationSource::Staple);
    a_session.send(b"offline hello").expect("send");
    assert_eq!(
        g_session.recv().expect("recv").as_deref(),
        Some(&b"offline hello"[..])
    );
}
