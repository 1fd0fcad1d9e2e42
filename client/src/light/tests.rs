use keyreg_consensus::crypto::Domain;

use super::*;
use crate::testkit::{light_client, light_client_with, validator_key, Chain, FakeNode};

fn name(s: &str) -> DeviceName {
    DeviceName::new(s).unwrap()
}

/// A chain with `acme/alpha` registered at height 1, served by one node.
fn registered() -> (Chain, DeviceKeysFixture, FakeNode) {
    let mut chain = Chain::new();
    let (alpha, tx) = chain.new_device("alpha");
    chain.commit(vec![tx], now_ms());
    let node = FakeNode::start();
    chain.serve(&node, &["acme/alpha", "acme/nobody"]);
    (chain, alpha, node)
}

type DeviceKeysFixture = crate::keys::DeviceKeys;

fn failures(result: Result<VerifiedLookup, LightError>) -> Vec<NodeFailure> {
    match result {
        Err(LightError::AllNodesFailed(f)) => f,
        other => panic!("expected every node to fail, got {other:?}"),
    }
}

#[test]
fn lookup_verifies_a_registered_device() {
    let (chain, alpha, node) = registered();
    let mut client = light_client(&chain, &[&node]);
    let found = client.lookup(&name("acme/alpha")).unwrap();
    let record = found.record.unwrap();
    assert_eq!(record.signing_key, alpha.current.signing.public());
    assert_eq!(record.agreement_key, alpha.current.agreement_key());
    assert_eq!(
        record.next_key_commitment,
        Some(
            alpha
                .current
                .next_signing
                .public()
                .digest(Domain::DeviceKey)
        )
    );
    assert_eq!(found.header.height, 1);
    assert_eq!(
        (found.signers.len(), found.signed_power, found.total_power),
        (4, 4, 4)
    );
    assert_eq!(found.source, node.url());
    assert!(found.skipped.is_empty());
    assert_eq!(client.verified_height(), 1);
}

#[test]
fn an_absent_device_is_proven_absent() {
    let (chain, _, node) = registered();
    let mut client = light_client(&chain, &[&node]);
    let found = client.lookup(&name("acme/nobody")).unwrap();
    assert!(found.record.is_none());
    assert_eq!(found.header.height, 1);
}

#[test]
fn forged_and_partial_certificates_are_rejected() {
    let (mut chain, _, node) = registered();
    let mut proof = chain.device_proof("acme/alpha", 1);
    proof.certificate.signatures[0].0[3] ^= 1;
    node.set_device_proof("acme/alpha", &proof);
    let mut client = light_client(&chain, &[&node]);
    let f = failures(client.lookup(&name("acme/alpha")));
    assert!(
        matches!(&f[0].error, AnswerError::Proof(ProofCheckError::Certificate(CertificateError::BadSignature(bad))) if bad == &vec![0]),
        "{f:?}"
    );

    // Two of four validators: no quorum.
    chain.signers = 2;
    let (_, tx) = chain.new_device("beta");
    chain.commit(vec![tx], now_ms());
    node.set_device_proof("acme/alpha", &chain.device_proof("acme/alpha", 2));
    let f = failures(client.lookup(&name("acme/alpha")));
    assert!(
        matches!(
            &f[0].error,
            AnswerError::Proof(ProofCheckError::Certificate(CertificateError::NoQuorum {
                power: 2,
                total: 4
            }))
        ),
        "{f:?}"
    );
    assert_eq!(client.verified_height(), 0, "nothing was accepted");
}

#[test]
fn a_proof_under_another_root_is_rejected() {
    let (mut chain, _, node) = registered();
    let (_, tx) = chain.new_device("beta");
    chain.commit(vec![tx], now_ms());
    // Height 1's tree proof, height 2's (validly certified) header.
    let mut proof = chain.device_proof("acme/alpha", 2);
    proof.proof = chain.device_proof("acme/alpha", 1).proof;
    node.set_device_proof("acme/alpha", &proof);
    let mut client = light_client(&chain, &[&node]);
    let f = failures(client.lookup(&name("acme/alpha")));
    assert!(
        matches!(&f[0].error, AnswerError::Proof(ProofCheckError::Tree(_))),
        "{f:?}"
    );
}

#[test]
fn a_record_for_another_name_is_rejected() {
    let (mut chain, _, node) = registered();
    let (_, tx) = chain.new_device("beta");
    chain.commit(vec![tx], now_ms());
    // Beta's whole (valid) proof served for alpha.
    node.set_device_proof("acme/alpha", &chain.device_proof("acme/beta", 2));
    let mut client = light_client(&chain, &[&node]);
    let f = failures(client.lookup(&name("acme/alpha")));
    assert!(
        matches!(&f[0].error, AnswerError::WrongName { .. }),
        "{f:?}"
    );

    // Beta's record inside a proof that claims to be alpha's.
    let mut proof = chain.device_proof("acme/alpha", 2);
    proof.record = chain.device_proof("acme/beta", 2).record;
    node.set_device_proof("acme/alpha", &proof);
    let f = failures(client.lookup(&name("acme/alpha")));
    assert!(
        matches!(
            &f[0].error,
            AnswerError::Proof(ProofCheckError::NameMismatch { .. })
        ),
        "{f:?}"
    );

    // A "not registered" claim for a registered name: the absence proof fails.
    let mut proof = chain.device_proof("acme/alpha", 2);
    proof.record = None;
    node.set_device_proof("acme/alpha", &proof);
    let f = failures(client.lookup(&name("acme/alpha")));
    assert!(
        matches!(&f[0].error, AnswerError::Proof(ProofCheckError::Tree(_))),
        "{f:?}"
    );
}

#[test]
fn truncated_and_garbled_answers_are_rejected() {
    let (chain, _, node) = registered();
    let mut client = light_client(&chain, &[&node]);
    let full = hex::encode(chain.device_proof("acme/alpha", 1).to_bytes());
    node.set_device_answer("acme/alpha", full[..full.len() - 10].to_string());
    let f = failures(client.lookup(&name("acme/alpha")));
    assert!(
        matches!(&f[0].error, AnswerError::Node(NodeError::Malformed(_))),
        "{f:?}"
    );
    node.set(
        "GET",
        "/v1/devices/acme/alpha",
        200,
        "{\"proof\": 12".into(),
    );
    let f = failures(client.lookup(&name("acme/alpha")));
    assert!(
        matches!(&f[0].error, AnswerError::Node(NodeError::Malformed(_))),
        "{f:?}"
    );
    node.set(
        "GET",
        "/v1/devices/acme/alpha",
        500,
        r#"{"error":{"code":"internal","message":"disk on fire"}}"#.into(),
    );
    let f = failures(client.lookup(&name("acme/alpha")));
    assert!(
        matches!(
            &f[0].error,
            AnswerError::Node(NodeError::Api { status: 500, .. })
        ),
        "{f:?}"
    );
}

#[test]
fn stale_and_future_headers_are_rejected() {
    let chain = Chain::new();
    let (_, tx) = chain.new_device("alpha");
    let node = FakeNode::start();

    let mut old_chain = chain.clone();
    old_chain.commit(vec![tx.clone()], now_ms() - 20 * 60_000);
    old_chain.serve(&node, &["acme/alpha"]);
    let mut client = light_client(&old_chain, &[&node]);
    let f = failures(client.lookup(&name("acme/alpha")));
    assert!(matches!(&f[0].error, AnswerError::Stale { .. }), "{f:?}");

    let mut future_chain = chain;
    future_chain.commit(vec![tx], now_ms() + 10 * 60_000);
    future_chain.serve(&node, &["acme/alpha"]);
    let mut client = light_client(&future_chain, &[&node]);
    let f = failures(client.lookup(&name("acme/alpha")));
    assert!(
        matches!(&f[0].error, AnswerError::FromTheFuture { .. }),
        "{f:?}"
    );
}

#[test]
fn a_height_below_the_verified_one_is_rejected() {
    let (mut chain, _, node) = registered();
    let (_, tx) = chain.new_device("beta");
    chain.commit(vec![tx], now_ms());
    chain.serve(&node, &["acme/alpha"]);
    let mut client = light_client(&chain, &[&node]);
    assert_eq!(client.lookup(&name("acme/alpha")).unwrap().header.height, 2);
    // A node replaying height 1 (when alpha may have been unrevoked...).
    node.set_device_proof("acme/alpha", &chain.device_proof("acme/alpha", 1));
    let f = failures(client.lookup(&name("acme/alpha")));
    assert!(
        matches!(
            &f[0].error,
            AnswerError::Rollback {
                height: 1,
                verified: 2
            }
        ),
        "{f:?}"
    );
}

#[test]
fn a_lying_node_is_skipped_for_an_honest_one() {
    let (chain, alpha, honest) = registered();
    let liar = FakeNode::start();
    let mut forged = chain.device_proof("acme/alpha", 1);
    if let Some(record) = forged.record.as_mut() {
        record.agreement_key = keyreg_registry::records::AgreementKey([9; 32]);
    }
    liar.set_device_proof("acme/alpha", &forged);
    let mut client = light_client(&chain, &[&liar, &honest]);
    let found = client.lookup(&name("acme/alpha")).unwrap();
    assert_eq!(
        found.record.unwrap().agreement_key,
        alpha.current.agreement_key()
    );
    assert_eq!(found.source, honest.url());
    assert_eq!(found.skipped.len(), 1);
    assert_eq!(found.skipped[0].node, liar.url());
    assert!(matches!(
        found.skipped[0].error,
        AnswerError::Proof(ProofCheckError::Tree(_))
    ));

    // An unreachable node is skipped the same way.
    let dead = NodeClient::new("http://127.0.0.1:1", Duration::from_secs(2));
    let mut client = LightClient::new(
        chain.anchor(),
        vec![dead, honest.client()],
        LightConfig::default(),
    );
    let found = client.lookup(&name("acme/alpha")).unwrap();
    assert!(matches!(
        found.skipped[0].error,
        AnswerError::Node(NodeError::Transport(_))
    ));
}

/// Two chains sharing height 1 (where `acme/alpha` and `acme/zeta` are
/// registered) whose validators signed different blocks at height 2.
fn forked() -> (Chain, Chain, DeviceKeysFixture, DeviceKeysFixture) {
    let mut a = Chain::new();
    let (alpha, tx_alpha) = a.new_device("alpha");
    let (zeta, tx_zeta) = a.new_device("zeta");
    a.commit(vec![tx_alpha, tx_zeta], now_ms());
    let mut b = a.clone();
    let (_, tx_a) = a.new_device("beta");
    a.commit(vec![tx_a], now_ms());
    let (_, tx_b) = b.new_device("gamma");
    b.commit(vec![tx_b], now_ms());
    assert_ne!(a.headers[2].hash(), b.headers[2].hash());
    (a, b, alpha, zeta)
}

#[test]
fn two_certified_blocks_at_one_height_are_a_fork() {
    let (a, b, _, _) = forked();
    let (node_a, node_b) = (FakeNode::start(), FakeNode::start());
    a.serve(&node_a, &["acme/alpha"]);
    b.serve(&node_b, &["acme/alpha"]);
    let config = LightConfig {
        cross_check: true,
        ..LightConfig::default()
    };
    let mut client = light_client_with(&a, &[&node_a, &node_b], config);
    match client.lookup(&name("acme/alpha")) {
        Err(LightError::Fork(evidence)) => {
            assert_eq!(evidence.height, 2);
            assert_eq!(evidence.known.header, a.headers[2]);
            assert_eq!(evidence.known_from, node_a.url());
            assert_eq!(evidence.conflicting.header, b.headers[2]);
            assert_eq!(evidence.conflicting_from, node_b.url());
        }
        other => panic!("expected a fork, got {other:?}"),
    }

    // Without cross-checking, the fork shows once the other branch is seen.
    let mut client = light_client(&a, &[&node_b]);
    client.lookup(&name("acme/alpha")).unwrap();
    let header_a = a.certified_header(2).to_bytes();
    assert!(matches!(
        client.check_peer_header(&header_a, "acme/peer"),
        Err(AnswerError::Fork(_))
    ));
}

/// A chain whose validators hand over to a new set (seeds 11..=14) at
/// height 2; epoch 1 certifies height 3 on.
fn handed_over() -> (Chain, FakeNode) {
    let mut chain = Chain::new();
    let (_, tx) = chain.new_device("alpha");
    chain.commit(vec![tx], now_ms());
    let new_keys: Vec<_> = (11..=14).map(validator_key).collect();
    chain.add_validator_keys(&new_keys);
    let tx = chain.set_validators_tx(&new_keys, 0);
    chain.commit(vec![tx], now_ms());
    let (_, tx) = chain.new_device("beta");
    chain.commit(vec![tx], now_ms());
    assert_eq!(chain.headers[3].epoch, 1);
    let node = FakeNode::start();
    chain.serve(&node, &["acme/alpha"]);
    (chain, node)
}

#[test]
fn validator_set_handovers_are_followed() {
    let (chain, node) = handed_over();
    let mut client = light_client(&chain, &[&node]);
    let found = client.lookup(&name("acme/alpha")).unwrap();
    assert_eq!(found.header.height, 3);
    assert_eq!(client.trusted_set().epoch, 1);
    assert_eq!(client.trusted_set(), &chain.sets[&1]);
    assert!(found
        .signers
        .iter()
        .all(|k| chain.sets[&1].index_of(k).is_some()));
}

#[test]
fn forged_handovers_are_rejected() {
    let (chain, node) = handed_over();
    let handover = chain.blocks[&2].clone();
    let epoch_answer = |set: &ValidatorSet, block: &CommittedBlock| {
        serde_json::json!({
            "epoch": 1,
            "validator_set": hex::encode(set.to_bytes()),
            "handover": hex::encode(block.to_bytes()),
        })
        .to_string()
    };
    // A set other than the one the handover block commits to.
    let rogue: Vec<_> = (21..=24).map(validator_key).collect();
    let rogue_set = ValidatorSet::new(
        1,
        rogue
            .iter()
            .map(|k| keyreg_consensus::validators::Validator {
                key: k.public(),
                power: 1,
            })
            .collect(),
    )
    .unwrap();
    node.set(
        "GET",
        "/v1/epochs/1",
        200,
        epoch_answer(&rogue_set, &handover),
    );
    let mut client = light_client(&chain, &[&node]);
    let f = failures(client.lookup(&name("acme/alpha")));
    assert!(
        matches!(&f[0].error, AnswerError::Handover { epoch: 1, .. }),
        "{f:?}"
    );
    assert_eq!(client.trusted_set().epoch, 0);

    // The right set, but the handover certified by the incoming set instead
    // of the outgoing one.
    let mut self_certified = handover.clone();
    self_certified.certificate = chain.certify(&chain.sets[&1], &handover.block.header);
    node.set(
        "GET",
        "/v1/epochs/1",
        200,
        epoch_answer(&chain.sets[&1], &self_certified),
    );
    let f = failures(client.lookup(&name("acme/alpha")));
    assert!(
        matches!(
            &f[0].error,
            AnswerError::Certificate(CertificateError::WrongEpoch { .. })
        ),
        "{f:?}"
    );
    assert_eq!(client.trusted_set().epoch, 0);
}

#[test]
fn state_persists_and_is_bound_to_its_genesis() {
    let (chain, node) = handed_over();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("light.json");
    let mut client = light_client(&chain, &[&node]);
    client.lookup(&name("acme/alpha")).unwrap();
    client.save(&path).unwrap();

    let reopened = LightClient::open(
        chain.anchor(),
        vec![node.client()],
        LightConfig::default(),
        &path,
    )
    .unwrap();
    assert_eq!(reopened.verified_height(), 3);
    assert_eq!(reopened.trusted_set().epoch, 1);

    let mut other = Chain::new();
    other.genesis.chain_id = "other-chain".into();
    let other_anchor = TrustAnchor::from_genesis(&other.genesis).unwrap();
    assert!(matches!(
        LightClient::open(other_anchor, vec![], LightConfig::default(), &path),
        Err(LightError::File { .. })
    ));
}

#[test]
fn staples_verify_offline_and_newer_records_win() {
    let mut chain = Chain::new();
    let (alpha, tx) = chain.new_device("alpha");
    chain.commit(vec![tx], now_ms());
    let staple = chain.device_proof("acme/alpha", 1).to_bytes();
    let mut offline = light_client(&chain, &[]);
    let verified = offline.verify_staple(&name("acme/alpha"), &staple).unwrap();
    assert_eq!(
        verified.record.unwrap().agreement_key,
        alpha.current.agreement_key()
    );

    // Revoked at height 2: a client that saw that refuses the old staple's record.
    let revoke = crate::txs::revoke(
        crate::testkit::CHAIN,
        &alpha.name,
        "stolen",
        keyreg_registry::tx::Authority::Admin,
        &chain.admin.signing,
    );
    chain.commit(vec![revoke], now_ms());
    let newer = chain.device_proof("acme/alpha", 2).to_bytes();
    offline.verify_staple(&name("acme/alpha"), &newer).unwrap();
    let replayed = offline.verify_staple(&name("acme/alpha"), &staple).unwrap();
    assert!(!replayed.record.unwrap().is_active());
}

mod sessions {
    use std::net::{TcpListener, TcpStream};
    use std::thread;

    use super::*;
    use crate::session::{LocalIdentity, SecureSession, SessionConfig, SessionError};
    use crate::testkit::CHAIN;

    fn identity(keys: &crate::keys::DeviceKeys, staple: Option<Vec<u8>>) -> LocalIdentity {
        let mut id = LocalIdentity::new(keys.name.to_string(), keys.current.agreement.clone());
        id.set_staple(staple);
        id
    }

    /// Runs a handshake: `b` responds in a thread with its own light client,
    /// `a` initiates. Returns (a's outcome, b's outcome).
    fn handshake(
        a: &LocalIdentity,
        a_client: &mut LightClient,
        b: LocalIdentity,
        mut b_client: LightClient,
    ) -> (
        Result<SecureSession, SessionError>,
        Result<SecureSession, SessionError>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let expected = b.name().to_string();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            SecureSession::respond(stream, &b, &mut b_client, &SessionConfig::new(CHAIN))
        });
        let stream = TcpStream::connect(addr).unwrap();
        let a_result =
            SecureSession::initiate(stream, &expected, a, a_client, &SessionConfig::new(CHAIN));
        (a_result, server.join().unwrap())
    }

    fn two_devices() -> (Chain, crate::keys::DeviceKeys, crate::keys::DeviceKeys) {
        let mut chain = Chain::new();
        let (alpha, tx_a) = chain.new_device("alpha");
        let (beta, tx_b) = chain.new_device("beta");
        chain.commit(vec![tx_a, tx_b], now_ms());
        (chain, alpha, beta)
    }

    #[test]
    fn devices_authenticate_from_staples_with_no_node_reachable() {
        let (chain, alpha, beta) = two_devices();
        let a = identity(&alpha, Some(chain.device_proof("acme/alpha", 1).to_bytes()));
        let b = identity(&beta, Some(chain.device_proof("acme/beta", 1).to_bytes()));
        let mut a_client = light_client(&chain, &[]);
        let b_client = light_client(&chain, &[]);
        let (a_session, b_session) = handshake(&a, &mut a_client, b, b_client);
        let (mut a_session, mut b_session) = (a_session.unwrap(), b_session.unwrap());
        assert_eq!(a_session.peer().source, VerificationSource::Staple);
        assert_eq!(a_session.peer().static_key, beta.current.agreement_key().0);
        assert_eq!(b_session.peer().name, "acme/alpha");
        assert_eq!(b_session.peer().height, 1);
        a_session.send(b"hello beta").unwrap();
        assert_eq!(b_session.recv().unwrap().unwrap(), b"hello beta");
        b_session.send(b"hello alpha").unwrap();
        assert_eq!(a_session.recv().unwrap().unwrap(), b"hello alpha");
    }

    #[test]
    fn a_revoked_peer_is_refused() {
        let (mut chain, alpha, beta) = two_devices();
        let old_staple = chain.device_proof("acme/beta", 1).to_bytes();
        let revoke = crate::txs::revoke(
            CHAIN,
            &beta.name,
            "decommissioned",
            keyreg_registry::tx::Authority::Device,
            &beta.current.signing,
        );
        chain.commit(vec![revoke], now_ms());
        let node = FakeNode::start();
        chain.serve(&node, &["acme/alpha", "acme/beta"]);
        let a = identity(&alpha, Some(chain.device_proof("acme/alpha", 2).to_bytes()));

        // Beta staples nothing: alpha looks it up and finds it revoked.
        let mut a_client = light_client(&chain, &[&node]);
        let (a_result, b_result) = handshake(
            &a,
            &mut a_client,
            identity(&beta, None),
            light_client(&chain, &[&node]),
        );
        assert!(
            matches!(&a_result, Err(SessionError::Refused(RefusalReason::Revoked(n))) if n == "acme/beta"),
            "{a_result:?}"
        );
        assert!(b_result.is_err());

        // Beta replays its pre-revocation staple: alpha already verified the
        // revocation (height 2), so the older proof does not revive the key.
        let (a_result, _) = handshake(
            &a,
            &mut a_client,
            identity(&beta, Some(old_staple)),
            light_client(&chain, &[&node]),
        );
        assert!(
            matches!(
                &a_result,
                Err(SessionError::Refused(RefusalReason::Revoked(_)))
            ),
            "{a_result:?}"
        );
    }

    #[test]
    fn a_stale_staple_falls_back_to_a_lookup() {
        let chain = Chain::new();
        let (alpha, tx_a) = chain.new_device("alpha");
        let (beta, tx_b) = chain.new_device("beta");
        let mut chain = chain;
        chain.commit(vec![tx_a, tx_b], now_ms() - 2 * 3_600_000);
        chain.commit(vec![], now_ms());
        let node = FakeNode::start();
        chain.serve(&node, &["acme/alpha", "acme/beta"]);
        let a = identity(&alpha, None);
        let b = identity(&beta, Some(chain.device_proof("acme/beta", 1).to_bytes()));
        let mut a_client = light_client(&chain, &[&node]);
        let (a_result, b_result) = handshake(&a, &mut a_client, b, light_client(&chain, &[&node]));
        let a_session = a_result.unwrap();
        assert_eq!(a_session.peer().source, VerificationSource::Lookup);
        assert_eq!(a_session.peer().height, 2);
        assert_eq!(b_result.unwrap().peer().source, VerificationSource::Lookup);

        // With no node to ask, a stale staple means the peer is unverifiable.
        let (a_result, _) = handshake(
            &a,
            &mut light_client(&chain, &[]),
            identity(&beta, Some(chain.device_proof("acme/beta", 1).to_bytes())),
            light_client(&chain, &[&node]),
        );
        assert!(
            matches!(
                &a_result,
                Err(SessionError::Refused(RefusalReason::Unverifiable(_)))
            ),
            "{a_result:?}"
        );
    }

    #[test]
    fn a_peer_on_another_branch_is_refused_as_a_fork() {
        let (a_chain, b_chain, alpha, zeta) = forked();
        // Alpha's client follows branch B; zeta lives on branch A and
        // staples A's proof and newest header (both at height 2).
        let node_b = FakeNode::start();
        b_chain.serve(&node_b, &["acme/alpha"]);
        let mut alpha_client = light_client(&b_chain, &[&node_b]);
        alpha_client.lookup(&name("acme/alpha")).unwrap();
        let zeta_staple = a_chain.device_proof("acme/zeta", 2).to_bytes();
        let mut zeta_client = light_client(&a_chain, &[]);
        zeta_client
            .verify_staple(&name("acme/zeta"), &zeta_staple)
            .unwrap();
        let alpha_id = identity(
            &alpha,
            Some(b_chain.device_proof("acme/alpha", 2).to_bytes()),
        );
        let zeta_id = identity(&zeta, Some(zeta_staple));
        let (alpha_result, _) = handshake(&alpha_id, &mut alpha_client, zeta_id, zeta_client);
        assert!(
            matches!(
                &alpha_result,
                Err(SessionError::Refused(RefusalReason::Fork(_)))
            ),
            "{alpha_result:?}"
        );
    }
}
