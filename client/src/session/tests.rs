use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::thread;

use super::*;

const CONTEXT: &str = "session-test-chain";

/// A stand-in for the light client: a fixed directory of registered keys.
#[derive(Clone, Default)]
struct Directory {
    keys: BTreeMap<String, [u8; 32]>,
    revoked: BTreeSet<String>,
    /// When set, claims this key for every peer regardless of the registry
    /// (a buggy verifier, to exercise the session's own key check).
    lie_about_key: Option<[u8; 32]>,
}

impl Directory {
    fn with(entries: &[&LocalIdentity]) -> Self {
        let mut d = Directory::default();
        for id in entries {
            d.keys.insert(id.name().to_string(), id.public_key());
        }
        d
    }
}

impl PeerVerifier for Directory {
    fn verify_peer(
        &mut self,
        claimed_name: &str,
        remote_static: &[u8; 32],
        _staple: Option<&[u8]>,
        _newest_header: Option<&[u8]>,
    ) -> Result<VerifiedPeer, RefusalReason> {
        let registered = *self
            .keys
            .get(claimed_name)
            .ok_or_else(|| RefusalReason::UnknownDevice(claimed_name.to_string()))?;
        if self.revoked.contains(claimed_name) {
            return Err(RefusalReason::Revoked(claimed_name.to_string()));
        }
        let static_key = match self.lie_about_key {
            Some(k) => k,
            None if registered == *remote_static => registered,
            None => return Err(RefusalReason::KeyMismatch(claimed_name.to_string())),
        };
        Ok(VerifiedPeer {
            name: claimed_name.to_string(),
            static_key,
            height: 0,
            source: VerificationSource::Pinned,
        })
    }
}

fn identity(name: &str, seed: u8) -> LocalIdentity {
    LocalIdentity::new(name, StaticSecret::from([seed; 32]))
}

fn config() -> SessionConfig {
    let mut c = SessionConfig::new(CONTEXT);
    c.handshake_timeout = Duration::from_secs(10);
    c
}

type Outcome = Result<SecureSession, SessionError>;

/// Runs one handshake over 127.0.0.1: the responder in a thread, the
/// initiator here. Returns (initiator outcome, responder outcome).
fn handshake_pair(
    initiator: &LocalIdentity,
    initiator_dir: &mut Directory,
    expected: &str,
    responder: LocalIdentity,
    mut responder_dir: Directory,
    initiator_config: &SessionConfig,
    responder_config: SessionConfig,
) -> (Outcome, Outcome) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        SecureSession::respond(stream, &responder, &mut responder_dir, &responder_config)
    });
    let client = SecureSession::connect(addr, expected, initiator, initiator_dir, initiator_config);
    (client, server.join().unwrap())
}

fn established_pair(
    config_a: &SessionConfig,
    config_b: SessionConfig,
) -> (SecureSession, SecureSession) {
    let alice = identity("acme/alice", 1);
    let bob = identity("acme/bob", 2);
    let dir = Directory::with(&[&alice, &bob]);
    let (a, b) = handshake_pair(
        &alice,
        &mut dir.clone(),
        "acme/bob",
        bob,
        dir,
        config_a,
        config_b,
    );
    (a.unwrap(), b.unwrap())
}

#[test]
fn sessions_exchange_messages_both_ways_across_rekeys() {
    let mut c = config();
    c.rekey_interval = 3;
    let (mut a, mut b) = established_pair(&c, c.clone());
    assert_eq!(a.peer().name, "acme/bob");
    assert_eq!(b.peer().name, "acme/alice");
    assert_eq!(a.handshake_hash(), b.handshake_hash());

    for i in 0..10u8 {
        a.send(&[i; 5]).unwrap();
        assert_eq!(b.recv().unwrap().unwrap(), vec![i; 5]);
        b.send(&[i + 100]).unwrap();
        assert_eq!(a.recv().unwrap().unwrap(), vec![i + 100]);
    }
    // On-demand rekey, then an empty message and one spanning several frames.
    a.rekey().unwrap();
    a.send(&[]).unwrap();
    assert_eq!(b.recv().unwrap().unwrap(), Vec::<u8>::new());
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    b.send(&big).unwrap();
    assert_eq!(a.recv().unwrap().unwrap(), big);

    let (sa, sb) = (a.stats(), b.stats());
    // 10 frames at interval 3 rekey before frames 4, 7 and 10; then one on demand.
    assert_eq!(sa.rekeys_sent, 4);
    assert_eq!(sb.rekeys_received, 4);
    assert_eq!(sb.rekeys_sent, sa.rekeys_received);
    assert!(sb.rekeys_sent >= 3);
    assert_eq!((sa.messages_sent, sb.messages_received), (11, 11));

    a.close().unwrap();
    assert_eq!(b.recv().unwrap(), None);
    assert_eq!(b.recv().unwrap(), None);
}

#[test]
fn split_halves_run_full_duplex() {
    let (a, b) = established_pair(&config(), config());
    let (mut a_tx, mut a_rx) = a.split();
    let (mut b_tx, mut b_rx) = b.split();
    let a_writer = thread::spawn(move || {
        for i in 0..50u32 {
            a_tx.send(&i.to_le_bytes()).unwrap();
        }
        a_tx.close().unwrap();
    });
    let b_writer = thread::spawn(move || {
        for i in 0..50u32 {
            b_tx.send(&(i * 2).to_le_bytes()).unwrap();
        }
        b_tx.close().unwrap();
    });
    let mut from_b = Vec::new();
    while let Some(m) = a_rx.recv().unwrap() {
        from_b.push(u32::from_le_bytes(m.try_into().unwrap()));
    }
    let mut from_a = Vec::new();
    while let Some(m) = b_rx.recv().unwrap() {
        from_a.push(u32::from_le_bytes(m.try_into().unwrap()));
    }
    a_writer.join().unwrap();
    b_writer.join().unwrap();
    assert_eq!(from_a, (0..50).collect::<Vec<_>>());
    assert_eq!(from_b, (0..50).map(|i| i * 2).collect::<Vec<_>>());
}

#[test]
fn revoked_initiator_is_refused_and_told_why() {
    let alice = identity("acme/alice", 1);
    let bob = identity("acme/bob", 2);
    let mut bob_dir = Directory::with(&[&alice, &bob]);
    bob_dir.revoked.insert("acme/alice".into());
    let (a, b) = handshake_pair(
        &alice,
        &mut Directory::with(&[&alice, &bob]),
        "acme/bob",
        bob,
        bob_dir,
        &config(),
        config(),
    );
    match a {
        Err(SessionError::RefusedByPeer(reason)) => assert!(reason.contains("revoked"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(matches!(
        b,
        Err(SessionError::Refused(RefusalReason::Revoked(name))) if name == "acme/alice"
    ));
}

#[test]
fn unknown_responder_is_refused_before_the_initiator_reveals_itself() {
    let alice = identity("acme/alice", 1);
    let mallory = identity("acme/bob", 3);
    // Alice's directory knows Alice only: the responder is unknown to her.
    let (a, b) = handshake_pair(
        &alice,
        &mut Directory::with(&[&alice]),
        "acme/bob",
        mallory,
        Directory::with(&[&alice]),
        &config(),
        config(),
    );
    assert!(matches!(
        a,
        Err(SessionError::Refused(RefusalReason::UnknownDevice(name))) if name == "acme/bob"
    ));
    // The responder never received the third message, so never saw Alice's
    // static key or name.
    assert!(matches!(b, Err(SessionError::UnexpectedEof)), "{b:?}");
}

/// A malicious initiator that skips waiting for the verdict and pushes data
/// right after its last handshake message: the refusing responder neither
/// delivers that data nor sends any of its own.
#[test]
fn refused_peer_gets_no_application_data() {
    let alice = identity("acme/alice", 1);
    let bob = identity("acme/bob", 2);
    let mut bob_dir = Directory::with(&[&alice, &bob]);
    bob_dir.revoked.insert("acme/alice".into());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut session = SecureSession::respond(stream, &bob, &mut bob_dir, &config())?;
        // Reached only if the refusal failed: this is what must never flow.
        session.send(b"application data")?;
        let received = session.recv()?;
        Ok::<_, SessionError>(received)
    });

    let stream = TcpStream::connect(addr).unwrap();
    let secret = alice.secret.to_bytes();
    let prologue = config().prologue();
    let mut noise = snow::Builder::new(NOISE_PARAMS.parse().unwrap())
        .local_private_key(&secret)
        .unwrap()
        .prologue(&prologue)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let mut payload = vec![0u8; MAX_FRAME_LEN];
    let mut frame = Vec::new();
    let timeout = Duration::from_secs(10);
    let len = noise.write_message(&[], &mut buf).unwrap();
    write_frame(&stream, &buf[..len]).unwrap();
    assert!(read_frame(&stream, &mut frame, None, timeout).unwrap());
    noise.read_message(&frame, &mut payload).unwrap();
    let len = noise
        .write_message(&alice.hello(None).unwrap(), &mut buf)
        .unwrap();
    write_frame(&stream, &buf[..len]).unwrap();
    let mut transport = noise.into_transport_mode().unwrap();
    let len = transport
        .write_message(&[FrameKind::Data as u8, b'x'], &mut buf)
        .unwrap();
    write_frame(&stream, &buf[..len]).unwrap();

    assert!(matches!(
        server.join().unwrap(),
        Err(SessionError::Refused(RefusalReason::Revoked(_)))
    ));
    // Whatever reaches the client (the refusal, or a reset because our early
    // data went unread), it is never a data frame.
    let mut kinds = Vec::new();
    while let Ok(true) = read_frame(&stream, &mut frame, None, timeout) {
        let len = transport.read_message(&frame, &mut payload).unwrap();
        kinds.push(payload[0]);
        assert!(len >= 1);
    }
    assert!(
        kinds.iter().all(|&k| k == FrameKind::Refuse as u8),
        "{kinds:?}"
    );
}

#[test]
fn wrong_static_key_is_rejected_in_both_directions() {
    let alice = identity("acme/alice", 1);
    let bob = identity("acme/bob", 2);
    let dir = Directory::with(&[&alice, &bob]);

    // The responder runs with a key other than the one registered for its name.
    let impostor = identity("acme/bob", 9);
    let (a, _) = handshake_pair(
        &alice,
        &mut dir.clone(),
        "acme/bob",
        impostor,
        dir.clone(),
        &config(),
        config(),
    );
    assert!(matches!(
        a,
        Err(SessionError::Refused(RefusalReason::KeyMismatch(name))) if name == "acme/bob"
    ));

    // The initiator does.
    let impostor = identity("acme/alice", 9);
    let (a, b) = handshake_pair(
        &impostor,
        &mut dir.clone(),
        "acme/bob",
        bob,
        dir,
        &config(),
        config(),
    );
    assert!(matches!(a, Err(SessionError::RefusedByPeer(_))));
    assert!(matches!(
        b,
        Err(SessionError::Refused(RefusalReason::KeyMismatch(name))) if name == "acme/alice"
    ));
}

#[test]
fn a_verifier_vouching_for_another_key_is_overruled() {
    let alice = identity("acme/alice", 1);
    let bob = identity("acme/bob", 2);
    let mut lying = Directory::with(&[&alice, &bob]);
    lying.lie_about_key = Some([7; 32]);
    let (a, _) = handshake_pair(
        &alice,
        &mut lying,
        "acme/bob",
        bob,
        Directory::with(&[&alice]),
        &config(),
        config(),
    );
    assert!(matches!(
        a,
        Err(SessionError::Refused(RefusalReason::KeyMismatch(_)))
    ));
}

#[test]
fn a_peer_with_another_name_is_refused() {
    let alice = identity("acme/alice", 1);
    let carol = identity("acme/carol", 3);
    let dir = Directory::with(&[&alice, &carol]);
    let (a, _) = handshake_pair(
        &alice,
        &mut dir.clone(),
        "acme/bob",
        carol,
        dir,
        &config(),
        config(),
    );
    assert!(matches!(
        a,
        Err(SessionError::Refused(RefusalReason::UnexpectedPeer { expected, claimed }))
            if expected == "acme/bob" && claimed == "acme/carol"
    ));
}

#[test]
fn peers_of_different_chains_never_complete_a_handshake() {
    let alice = identity("acme/alice", 1);
    let bob = identity("acme/bob", 2);
    let dir = Directory::with(&[&alice, &bob]);
    let (a, _) = handshake_pair(
        &alice,
        &mut dir.clone(),
        "acme/bob",
        bob,
        dir,
        &config(),
        SessionConfig::new("another-chain"),
    );
    assert!(matches!(a, Err(SessionError::Decrypt)), "{a:?}");
}

/// Relays frames from the initiator to the responder, flipping one bit in
/// the frame with index `tamper_index`; relays the other direction verbatim.
fn tampering_proxy(target: std::net::SocketAddr, tamper_index: usize) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (from_client, _) = listener.accept().unwrap();
        let to_server = TcpStream::connect(target).unwrap();
        let mut back_in = to_server.try_clone().unwrap();
        let mut back_out = from_client.try_clone().unwrap();
        thread::spawn(move || {
            let _ = std::io::copy(&mut back_in, &mut back_out);
        });
        let mut frame = Vec::new();
        let mut index = 0;
        while let Ok(true) = read_frame(&from_client, &mut frame, None, Duration::from_secs(10)) {
            if index == tamper_index {
                let last = frame.len() - 1;
                frame[last / 2] ^= 0x01;
            }
            if write_frame(&to_server, &frame).is_err() {
                break;
            }
            index += 1;
        }
    });
    addr
}

#[test]
fn a_tampered_frame_is_rejected() {
    let alice = identity("acme/alice", 1);
    let bob = identity("acme/bob", 2);
    let mut dir = Directory::with(&[&alice, &bob]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    let bob_dir = dir.clone();
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut bob_dir = bob_dir;
        let mut s = SecureSession::respond(stream, &bob, &mut bob_dir, &config()).unwrap();
        let first = s.recv().unwrap();
        let second = s.recv();
        let after = s.recv();
        (first, second, after)
    });
    // Frames from the initiator: 0 = -> e, 1 = -> s, se; 2 and 3 = data.
    let proxy = tampering_proxy(server_addr, 3);
    let mut a = SecureSession::connect(proxy, "acme/bob", &alice, &mut dir, &config()).unwrap();
    a.send(b"intact").unwrap();
    a.send(b"will be tampered with").unwrap();
    let (first, second, after) = server.join().unwrap();
    assert_eq!(first.as_deref(), Some(&b"intact"[..]));
    assert!(matches!(second, Err(SessionError::Decrypt)), "{second:?}");
    assert!(matches!(after, Err(SessionError::Broken)), "{after:?}");
}

#[test]
fn a_silent_peer_times_out_during_the_handshake() {
    let bob = identity("acme/bob", 2);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = TcpStream::connect(addr).unwrap();
    let (stream, _) = listener.accept().unwrap();
    let mut c = config();
    c.handshake_timeout = Duration::from_millis(100);
    let r = SecureSession::respond(stream, &bob, &mut Directory::with(&[&bob]), &c);
    assert!(
        matches!(r, Err(SessionError::Timeout("handshake"))),
        "{r:?}"
    );
}

#[test]
fn message_size_limits_hold_on_both_sides() {
    let mut small = config();
    small.max_message_len = 100_000;
    let mut large = config();
    large.max_message_len = 300_000;
    let (mut a, mut b) = established_pair(&large, small);
    assert!(matches!(
        b.send(&vec![0u8; 100_001]),
        Err(SessionError::MessageTooLarge {
            len: 100_001,
            max: 100_000
        })
    ));
    // A refused send leaves the session usable.
    b.send(b"still fine").unwrap();
    assert_eq!(a.recv().unwrap().unwrap(), b"still fine");
    // The receiver enforces its own limit whatever the sender allows.
    a.send(&vec![0u8; 200_000]).unwrap();
    assert!(matches!(
        b.recv(),
        Err(SessionError::MessageTooLarge { max: 100_000, .. })
    ));
}

#[test]
fn a_connection_dropped_without_close_is_reported() {
    let (a, mut b) = established_pair(&config(), config());
    drop(a);
    assert!(matches!(b.recv(), Err(SessionError::UnexpectedEof)));
}

#[test]
fn refusal_text_is_bounded_and_printable() {
    assert_eq!(truncate_utf8("héllo", 2), "h");
    assert_eq!(sanitize_remote_text(b"bad\x1b[2Jname\n"), "bad?[2Jname?");
    assert_eq!(
        sanitize_remote_text(&[b'a'; 2000]).len(),
        MAX_REFUSAL_TEXT_LEN
    );
}
