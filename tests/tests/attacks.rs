//! Attacks from the catalogue in docs/security.md that no crate's own tests
//! show, played against the public APIs of the workspace's crates.

use keyreg_client::session::{PeerVerifier, RefusalReason};
use keyreg_consensus::certificate::{verify_commit, CertificateError};
use keyreg_consensus::codec::{Canonical, CodecError, MAX_ENCODED_LEN};
use keyreg_consensus::engine::Config;
use keyreg_consensus::messages::{decode_message, MessageError};
use keyreg_registry::testkit::{commit_next, TestNet};
use keyreg_registry::tx::MAX_TX_BYTES;
use keyreg_registry::wire::BlockValue;
use keyreg_registry::{
    verify_device_proof, DeviceProof, DeviceStatus, Ledger, MemLedgerStore, ProofCheckError,
    Transaction, TxBody, TxError,
};
use keyreg_tests::fixture::{
    fixture, name, registration, Fixture, ACTIVE, CHAIN, PROOF_HEIGHT, REVOKED,
};

/// A genuine certificate, cut from its header and stapled to another
/// (another height, or the same height with another state root), proves
/// nothing: it signs one header hash at one height.
#[test]
fn a_certificate_replayed_on_another_header_is_rejected() {
    let f = fixture();
    let genuine = f.proofs[0].clone();
    verify_device_proof(CHAIN, &f.set, &genuine).expect("the genuine proof verifies");

    let mut other_height = genuine.clone();
    other_height.certificate = f.block(1).certificate.clone();
    assert!(matches!(
        verify_device_proof(CHAIN, &f.set, &other_height),
        Err(ProofCheckError::Certificate(
            CertificateError::WrongHeight { .. }
        ))
    ));

    // A lying node rewrites the state root (to prove a record of its own)
    // and keeps the certificate of the real header.
    let mut rewritten = genuine.clone();
    rewritten.header.state_root = f.block(1).block.header.state_root;
    assert!(matches!(
        verify_device_proof(CHAIN, &f.set, &rewritten),
        Err(ProofCheckError::Certificate(
            CertificateError::WrongBlock { .. }
        ))
    ));

    // The certificate's own claims edited to match: the signatures fail.
    let mut relabelled = f.block(1).certificate.clone();
    relabelled.height = PROOF_HEIGHT;
    relabelled.block_hash = genuine.header.hash();
    assert!(matches!(
        verify_commit(
            CHAIN,
            &f.set,
            PROOF_HEIGHT,
            &genuine.header.hash(),
            &relabelled
        ),
        Err(CertificateError::BadSignature(_))
    ));
}

/// The same validators (same keys) run a second chain. Nothing certified
/// there is accepted here: headers, votes and transactions all sign the
/// chain id.
#[test]
fn another_chains_proofs_and_transactions_are_rejected_even_with_the_same_validators() {
    let f = fixture();
    let other = TestNet::new("keyreg-other", 4, &["acme", "globex"], 1);
    assert_eq!(
        other
            .genesis
            .validator_set()
            .expect("valid set")
            .validators(),
        f.set.validators(),
        "both chains have the same validators"
    );
    let mut ledger = Ledger::open(MemLedgerStore::new(), &other.genesis).expect("opens");
    let register = Transaction::new("keyreg-other", TxBody::RegisterDevice(registration(ACTIVE)))
        .signed_by(&[other.admin("acme")]);
    commit_next(&mut ledger, &other.validator_keys, vec![register.clone()]).expect("commits");
    let foreign = ledger.device_proof(&name(ACTIVE)).expect("proof");

    assert!(matches!(
        verify_device_proof(CHAIN, &f.set, &foreign),
        Err(ProofCheckError::WrongChain { .. })
    ));
    let mut relabelled = foreign.clone();
    relabelled.header.chain_id = CHAIN.to_string();
    assert!(
        verify_device_proof(CHAIN, &f.set, &relabelled).is_err(),
        "relabelling the header breaks its certificate"
    );
    assert!(matches!(
        Transaction::from_wire(&register.to_bytes(), CHAIN),
        Err(TxError::WrongChain { .. })
    ));
}

/// A proof from before a revocation is genuine and certified. Once the
/// client has seen the revocation, the old proof cannot revive the device:
/// the newer record wins, and a peer stapling its pre-revocation proof is
/// refused.
#[test]
fn a_proof_from_before_a_revocation_cannot_revive_the_device() {
    let f = fixture();
    let before: DeviceProof = f
        .ledger
        .device_proof_at(&name(REVOKED), 1)
        .expect("proof at height 1");
    assert!(before.record.as_ref().is_some_and(|r| r.is_active()));
    let after = &f.proofs[1];
    assert!(matches!(
        after.record.as_ref().map(|r| &r.status),
        Some(DeviceStatus::Revoked { .. })
    ));

    let mut client = f.light_client();
    client
        .verify_staple(&name(REVOKED), &after.to_bytes())
        .expect("the revocation verifies");
    let replayed = client
        .verify_staple(&name(REVOKED), &before.to_bytes())
        .expect("the old proof is genuine");
    assert!(
        replayed.record.as_ref().is_some_and(|r| !r.is_active()),
        "the newer (revoked) record wins over the replayed one"
    );
    let refused = client.verify_peer(
        REVOKED,
        &Fixture::agreement_key(REVOKED),
        Some(&before.to_bytes()),
        None,
    );
    assert_eq!(
        refused.map(|p| p.name),
        Err(RefusalReason::Revoked(REVOKED.to_string()))
    );
}

/// Oversized inputs are refused by their length, before any decoding
/// allocates; a length prefix claiming more than the input holds is refused
/// without allocating it.
#[test]
fn oversized_and_lying_length_inputs_are_rejected_before_decoding() {
    let huge_tx = vec![Transaction::VERSION; MAX_TX_BYTES + 1];
    assert!(matches!(
        Transaction::from_wire(&huge_tx, CHAIN),
        Err(TxError::TooLarge { .. })
    ));

    let limit = Config::default().max_message_bytes;
    let huge_message = vec![1u8; limit + 1];
    assert!(matches!(
        decode_message::<BlockValue>(&huge_message, limit),
        Err(MessageError::TooLarge { .. })
    ));

    let beyond_codec = vec![1u8; MAX_ENCODED_LEN + 1];
    assert!(matches!(
        DeviceProof::from_bytes(&beyond_codec),
        Err(CodecError::TooLarge(_))
    ));

    // A genuine transaction whose chain-id length prefix claims 2^63 bytes.
    let mut lying = fixture().transactions[0].to_bytes();
    lying[1..9].copy_from_slice(&(1u64 << 63).to_le_bytes());
    assert!(matches!(
        Transaction::from_wire(&lying, CHAIN),
        Err(TxError::Malformed(_))
    ));
}

/// A node (or peer) that truncates or flips any byte of a valid proof gets
/// an error, never a panic and never a different accepted record.
#[test]
fn every_truncation_and_bit_flip_of_a_proof_is_rejected() {
    let f = fixture();
    let bytes = f.proofs[0].to_bytes();
    for len in 0..bytes.len() {
        assert!(DeviceProof::from_bytes(&bytes[..len]).is_err());
    }
    for i in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0x01;
        if let Ok(proof) = DeviceProof::from_bytes(&flipped) {
            if let Ok(record) = verify_device_proof(CHAIN, &f.set, &proof) {
                // Only bytes outside what is certified could be flipped
                // harmlessly; there are none: the record must be the same.
                assert_eq!(record, f.proofs[0].record, "byte {i} changed the record");
            }
        }
    }
}

/// A peer with a valid staple for one device cannot use it for another
/// name, nor with a key other than the registered one.
#[test]
fn a_valid_staple_does_not_vouch_for_another_name_or_key() {
    let f = fixture();
    let staple = f.proofs[0].to_bytes();
    let mut client = f.light_client();
    assert!(client
        .verify_peer(ACTIVE, &Fixture::agreement_key(ACTIVE), Some(&staple), None)
        .is_ok());
    assert!(matches!(
        client.verify_peer(
            ACTIVE,
            &Fixture::agreement_key("acme/impostor"),
            Some(&staple),
            None
        ),
        Err(RefusalReason::KeyMismatch(_))
    ));
    assert!(matches!(
        client.verify_peer(
            "acme/lot-0",
            &Fixture::agreement_key(ACTIVE),
            Some(&staple),
            None
        ),
        Err(RefusalReason::InvalidProof(_))
    ));
}
