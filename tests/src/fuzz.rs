//! The logic of every fuzz target, as plain functions of the input bytes.
//!
//! Each function decodes the input the way the production entry point does,
//! runs the checks that entry point runs against the [`fixture`] chain, and
//! asserts the properties an attacker must not break:
//! * nothing panics (libFuzzer reports panics as crashes);
//! * an accepted encoding is the canonical one (re-encodes to the input);
//! * soundness oracles: whatever verifies is what the fixture chain really
//!   certified (a forged proof, certificate, block or peer never passes).
//!
//! `tests/fuzz/fuzz_targets/<name>.rs` calls `keyreg_tests::fuzz::<name>`;
//! `tests/tests/fuzz_corpus.rs` runs `tests/fuzz/corpus/<name>/*` through the
//! same function.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use keyreg_client::light::CertifiedHeader;
use keyreg_client::node::{
    parse_api_error, parse_block_answer, parse_block_page, parse_device_answer, parse_epoch_answer,
    parse_status, parse_submit_answer, parse_submit_batch_answer, parse_tx_status,
    MAX_BLOCKS_PER_PAGE,
};
use keyreg_client::session::{Hello, LocalIdentity, PeerVerifier, SecureSession, SessionConfig};
use keyreg_consensus::certificate::{verify_commit, CommitCertificate};
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::Hash;
use keyreg_consensus::engine::{Config, Engine, Event};
use keyreg_consensus::messages::{decode_message, Evidence, MessageBody};
use keyreg_consensus::validators::ValidatorSet;
use keyreg_registry::tree::SparseMerkleProof;
use keyreg_registry::wire::{
    decode_tx_batch, encode_tx_batch, BlockValue, CompactBlock, PageQuery, SubmitBatchBody,
    SubmitBody, SyncReply, SyncRequest, SyncResponse, MAX_SUBMIT_BATCH,
};
use keyreg_registry::{
    tx_root, verify_device_proof, Block, CommittedBlock, DeviceName, DeviceProof, Genesis,
    Transaction,
};

use crate::fixture::{fixture, name, Fixture, ABSENT, ACTIVE, CHAIN};

/// A fuzz target's logic.
pub type Target = fn(&[u8]);

/// Every target: its name (the corpus directory and the cargo-fuzz target)
/// and its function.
pub const TARGETS: &[(&str, Target)] = &[
    ("transaction", transaction),
    ("consensus_message", consensus_message),
    ("state_proof", state_proof),
    ("certificate", certificate),
    ("device_proof", device_proof),
    ("committed_block", committed_block),
    ("node_answer", node_answer),
    ("session_hello", session_hello),
    ("session_handshake", session_handshake),
    ("genesis", genesis),
    ("sync_message", sync_message),
    ("http_request", http_request),
    ("tx_batch", tx_batch),
];

/// Height the consensus engine under fuzz is at (epoch 1's first height).
pub const ENGINE_HEIGHT: u64 = 4;

fn assert_canonical<T: Canonical>(value: &T, input: &[u8]) {
    assert_eq!(
        value.to_bytes(),
        input,
        "an accepted input re-encodes to itself"
    );
}

/// A transaction as `POST /v1/transactions` and gossip receive it:
/// `Transaction::from_wire` (size, canonical decoding, stateless checks
/// with signatures), then the mempool's admission check against the head.
pub fn transaction(data: &[u8]) {
    let Ok(tx) = Transaction::from_wire(data, CHAIN) else {
        return;
    };
    assert_canonical(&tx, data);
    let _ = fixture().ledger.check_tx(&tx);
}

/// A consensus gossip message as the node decodes it (a proposal carries a
/// [`CompactBlock`]): `decode_message`, `Message::verify` against epoch 1,
/// the compact block's checks and its rebuilding from the transactions the
/// fixture holds (its proposal's, as a mempool would), for a rebuilt
/// proposal the validation a validator runs before prevoting (executing the
/// block on the head), and a follower engine at [`ENGINE_HEIGHT`] handling
/// it. Also the same bytes as equivocation evidence.
pub fn consensus_message(data: &[u8]) {
    let f = fixture();
    if let Ok(message) = decode_message::<CompactBlock>(data, Config::default().max_message_bytes) {
        assert_canonical(&message, data);
        let verified = message.verify(CHAIN, &f.next_set).is_ok();
        let held: HashMap<Hash, &Transaction> = f
            .proposal
            .transactions
            .iter()
            .map(|tx| (tx.hash(), tx))
            .collect();
        let rebuilt = message.map_value(|compact| {
            compact.check().map_err(|_| ())?;
            let txs = compact
                .tx_hashes
                .iter()
                .map(|hash| held.get(hash).map(|tx| (*tx).clone()))
                .collect::<Option<Vec<_>>>()
                .ok_or(())?;
            Ok::<_, ()>(BlockValue(std::sync::Arc::new(compact.into_block(txs))))
        });
        if let Ok(message) = rebuilt {
            if let (true, MessageBody::Proposal(proposal)) = (verified, &message.body) {
                let _ = f.ledger.validate(&proposal.value.0);
            }
            let mut engine = Engine::<BlockValue>::new(
                Config::default(),
                None,
                CHAIN,
                ENGINE_HEIGHT,
                f.next_set.clone(),
            )
            .expect("the fixture's engine configuration is valid");
            let _ = engine.start();
            let _ = engine.handle(Event::Message(message));
        }
    }
    if let Ok(evidence) = Evidence::from_bytes(data) {
        assert_canonical(&evidence, data);
        if evidence.verify(CHAIN, &f.next_set).is_ok() {
            let offender = evidence.offender();
            assert!(
                f.next_set.index_of(&offender).is_some(),
                "verified evidence names a validator"
            );
        }
    }
}

/// A sparse Merkle proof, canonical bytes or JSON (`{` first), checked for
/// the fixture's active and absent devices under the certified root.
pub fn state_proof(data: &[u8]) {
    let f = fixture();
    let proof = if data.first() == Some(&b'{') {
        serde_json::from_slice::<SparseMerkleProof>(data).ok()
    } else {
        SparseMerkleProof::from_bytes(data).ok()
    };
    let Some(proof) = proof else {
        return;
    };
    let root = f.proofs[0].header.state_root;
    let active = f.proofs[0]
        .record
        .as_ref()
        .expect("the active device has a record")
        .to_bytes();
    let active_key = name(ACTIVE).state_key();
    let absent_key = name(ABSENT).state_key();
    let _ = proof.verify(&root, &active_key, Some(&active));
    assert!(
        proof.verify(&root, &active_key, None).is_err(),
        "no proof shows a registered device absent"
    );
    assert!(
        proof.verify(&root, &absent_key, Some(&active)).is_err(),
        "no proof shows an unregistered device present"
    );
    let _ = proof.verify(&root, &absent_key, None);
}

/// A commit certificate against every fixture block, plus the same bytes as
/// a validator set and as a peer's certified header.
pub fn certificate(data: &[u8]) {
    let f = fixture();
    if let Ok(cert) = CommitCertificate::from_bytes(data) {
        assert_canonical(&cert, data);
        for block in &f.blocks {
            let height = block.block.header.height;
            let _ = verify_commit(CHAIN, &f.set, height, &block.block.hash(), &cert);
        }
        let never_signed = Hash([0xa5; 32]);
        assert!(
            verify_commit(CHAIN, &f.set, cert.height, &never_signed, &cert).is_err(),
            "no certificate commits a block nobody signed"
        );
    }
    if let Ok(set) = ValidatorSet::from_bytes(data) {
        if set.check().is_ok() {
            let _ = (set.hash(), set.total_power());
        }
    }
    if let Ok(certified) = CertifiedHeader::from_bytes(data) {
        let mut client = f.light_client();
        if client.check_peer_header(data, "fuzz").is_ok()
            && client.trusted_set().epoch == certified.header.epoch
        {
            let real = f.block(certified.header.height);
            assert_eq!(
                certified.header, real.block.header,
                "only a really certified header is accepted"
            );
        }
    }
}

/// A device proof (a look-up answer or a staple): `verify_device_proof`
/// against epoch 0, and the light client's staple path.
pub fn device_proof(data: &[u8]) {
    let f = fixture();
    let Ok(proof) = DeviceProof::from_bytes(data) else {
        return;
    };
    assert_canonical(&proof, data);
    if let Ok(record) = verify_device_proof(CHAIN, &f.set, &proof) {
        assert_certified_record(f, &proof, record);
    }
    let _ = f.light_client().verify_staple(&proof.name, data);
}

/// Soundness oracle: a verified proof says what the chain says.
fn assert_certified_record(
    f: &Fixture,
    proof: &DeviceProof,
    record: Option<keyreg_registry::DeviceRecord>,
) {
    let truth = f
        .ledger
        .device_proof_at(&proof.name, proof.header.height)
        .expect("a certified height is a fixture height");
    assert_eq!(
        record, truth.record,
        "a verified record is the chain's record"
    );
}

/// A committed block (block sync, `GET /v1/blocks`, auditors) through the
/// light client's block check, and the same bytes as a bare block through
/// the stateless checks and execution against the head.
pub fn committed_block(data: &[u8]) {
    let f = fixture();
    if let Ok(committed) = CommittedBlock::from_bytes(data) {
        assert_canonical(&committed, data);
        check_committed_block(f, committed);
    }
    if let Ok(block) = Block::from_bytes(data) {
        let _ = tx_root(&block.tx_hashes());
        for tx in &block.transactions {
            let _ = tx.check_stateless(CHAIN);
        }
        let _ = f.ledger.validate(&block);
    }
}

fn check_committed_block(f: &Fixture, committed: CommittedBlock) {
    let height = committed.block.header.height;
    let verified = f.light_client().verify_block(0, committed.clone());
    if verified.is_ok() {
        assert_eq!(
            &committed,
            f.block(height),
            "only a really committed block verifies"
        );
    }
}

/// A node's JSON answer as the light client parses it. The first byte picks
/// the endpoint; the rest is the body. Decoded objects go on to the
/// checks the client runs on them.
pub fn node_answer(data: &[u8]) {
    let Some((&endpoint, body)) = data.split_first() else {
        return;
    };
    let f = fixture();
    match endpoint % 8 {
        0 => {
            let _ = parse_status(body);
        }
        1 => {
            if let Ok(proof) = parse_device_answer(body) {
                if let Ok(record) = verify_device_proof(CHAIN, &f.set, &proof) {
                    assert_certified_record(f, &proof, record);
                }
            }
        }
        2 => {
            if let Ok(answer) = parse_epoch_answer(body) {
                let _ = answer.validator_set.check();
                if let Some(handover) = answer.handover {
                    check_committed_block(f, handover);
                }
            }
        }
        3 => {
            if let Ok(block) = parse_block_answer(body) {
                check_committed_block(f, block);
            }
        }
        4 => {
            if let Ok(page) = parse_block_page(body, MAX_BLOCKS_PER_PAGE) {
                for block in page.blocks {
                    check_committed_block(f, block);
                }
            }
        }
        5 => {
            let expected = f.transactions[0].hash();
            if let Ok(hash) = parse_submit_answer(body, &expected) {
                assert_eq!(hash, expected, "a submit answer names our transaction");
            }
            let expected: Vec<Hash> = f.transactions.iter().map(Transaction::hash).collect();
            if let Ok(verdicts) = parse_submit_batch_answer(body, &expected) {
                assert_eq!(verdicts.len(), expected.len(), "one verdict each");
                for (verdict, hash) in verdicts.iter().zip(&expected) {
                    if let Ok(named) = verdict {
                        assert_eq!(named, hash, "a batch answer names our transactions");
                    }
                }
            }
        }
        6 => {
            let _ = parse_tx_status(body);
        }
        _ => {
            let _ = parse_api_error(400, body);
        }
    }
}

/// A peer's handshake payload (`Hello`) through the light client's peer
/// verification, once with the static key registered for the claimed name
/// and once with a key nobody registered (which must always be refused).
pub fn session_hello(data: &[u8]) {
    let Ok(hello) = Hello::from_bytes(data) else {
        return;
    };
    assert_canonical(&hello, data);
    let f = fixture();
    let registered = Fixture::agreement_key(&hello.name);
    let mut client = f.light_client();
    if let Ok(peer) = client.verify_peer(
        &hello.name,
        &registered,
        hello.staple.as_deref(),
        hello.newest_header.as_deref(),
    ) {
        assert_eq!(peer.name, hello.name);
        assert_eq!(peer.static_key, registered);
    }
    let unregistered = Fixture::agreement_key("nobody/registered-this");
    assert!(
        f.light_client()
            .verify_peer(
                &hello.name,
                &unregistered,
                hello.staple.as_deref(),
                hello.newest_header.as_deref(),
            )
            .is_err(),
        "a peer with an unregistered static key is refused"
    );
}

/// Bytes from a hostile initiator, over loopback TCP, to a responder running
/// the real session handshake (frame reader, Noise, Hello decoding).
pub fn session_handshake(data: &[u8]) {
    static LISTENER: OnceLock<TcpListener> = OnceLock::new();
    let listener =
        LISTENER.get_or_init(|| TcpListener::bind("127.0.0.1:0").expect("a loopback port is free"));
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let Ok(mut initiator) = TcpStream::connect(addr) else {
        return;
    };
    let Ok((responder, _)) = listener.accept() else {
        return;
    };
    let mut config = SessionConfig::new(CHAIN);
    config.handshake_timeout = Duration::from_secs(5);
    config.frame_timeout = Duration::from_secs(5);
    let local = LocalIdentity::new(ACTIVE, Fixture::agreement_secret(ACTIVE));
    let mut verifier = fixture().light_client();
    std::thread::scope(|scope| {
        // The writer ends the stream after the input, so the responder
        // never waits for more; a responder that gives up early makes the
        // write fail, which ends the writer.
        scope.spawn(move || {
            let _ = initiator.write_all(data);
            let _ = initiator.shutdown(Shutdown::Write);
            initiator
        });
        let _ = SecureSession::respond(
            responder,
            &local,
            &mut verifier as &mut dyn PeerVerifier,
            &config,
        );
    });
}

/// A genesis file (operators and clients load it): JSON parsing, validation,
/// the validator set and the initial state.
pub fn genesis(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(genesis) = Genesis::from_json(text) else {
        return;
    };
    if genesis.validate().is_ok() {
        let _ = genesis.hash();
        let _ = genesis.validator_set();
        let _ = genesis.initial_state();
    }
}

/// A gossiped transaction batch as the node's admission decodes it:
/// `decode_tx_batch` (an accepted batch re-encodes to itself), then every
/// transaction in it down the [`transaction`] path.
pub fn tx_batch(data: &[u8]) {
    let Ok(txs) = decode_tx_batch(data) else {
        return;
    };
    let owned: Vec<Vec<u8>> = txs.iter().map(|tx| tx.to_vec()).collect();
    assert_eq!(
        encode_tx_batch(&owned),
        data,
        "an accepted batch re-encodes to itself"
    );
    for tx in txs {
        transaction(tx);
    }
}

/// A block-sync message as the node decodes it: the bytes as a request
/// (what the sync server answers) and as a response (what the sync client
/// takes from a peer); synced blocks go through the committed-block check.
pub fn sync_message(data: &[u8]) {
    if let Ok(request) = SyncRequest::from_bytes(data) {
        assert_canonical(&request, data);
    }
    if let Ok(response) = SyncResponse::from_bytes(data) {
        assert_canonical(&response, data);
        match response.reply {
            SyncReply::Blocks(blocks) => {
                let f = fixture();
                for committed in blocks {
                    check_committed_block(f, committed);
                }
            }
            SyncReply::Transactions(txs) => {
                for tx in txs {
                    transaction(&tx.to_bytes());
                }
            }
            _ => {}
        }
    }
}

/// An HTTP request's untrusted parts as the node's API decodes them. The
/// first byte picks the part: the `POST /v1/transactions` JSON body (then
/// the transaction path of [`transaction`]), the `GET /v1/blocks` query
/// string, the `org/name` of `GET /v1/devices/{org}/{name}`, the hash of
/// `GET /v1/transactions/{hash}`, or the `POST /v1/transactions/batch` body.
pub fn http_request(data: &[u8]) {
    let Some((&part, rest)) = data.split_first() else {
        return;
    };
    match part % 5 {
        4 => {
            if let Ok(body) = serde_json::from_slice::<SubmitBatchBody>(rest) {
                if let Ok(txs) = body.txs_bytes() {
                    assert!((1..=MAX_SUBMIT_BATCH).contains(&txs.len()));
                    for tx in txs {
                        transaction(&tx);
                    }
                }
            }
        }
        0 => {
            if let Ok(body) = serde_json::from_slice::<SubmitBody>(rest) {
                if let Ok(tx) = body.tx_bytes() {
                    transaction(&tx);
                }
            }
        }
        1 => {
            if let Ok(query) = std::str::from_utf8(rest) {
                let _ = serde_urlencoded::from_str::<PageQuery>(query);
            }
        }
        2 => {
            let name = std::str::from_utf8(rest).map(DeviceName::new);
            if let Ok(Ok(name)) = name {
                assert!(
                    DeviceName::new(&name.to_string()).as_ref() == Ok(&name),
                    "an accepted device name reads back as itself"
                );
            }
        }
        _ => {
            if let Ok(hex) = std::str::from_utf8(rest) {
                let _ = Hash::from_hex(hex);
            }
        }
    }
}
