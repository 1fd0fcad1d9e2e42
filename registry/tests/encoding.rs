//! Canonical encodings: every value round-trips, and no byte string other
//! than a value's own encoding decodes to it.

mod common;

use common::*;
use keyreg_consensus::codec::{Canonical, CodecError};
use keyreg_consensus::crypto::{Hash, PublicKey};
use keyreg_registry::testkit::{test_agreement_key, test_key};
use keyreg_registry::{
    Authority, Block, DeviceName, DeviceRecord, DeviceStatus, GovernanceAction, Header, OrgId,
    Transaction, TxBody, TxError,
};
use proptest::prelude::*;

fn org_id() -> impl Strategy<Value = OrgId> {
    "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?".prop_map(|s| OrgId::new(&s).unwrap())
}

fn device_name() -> impl Strategy<Value = DeviceName> {
    (org_id(), "[a-z0-9][a-z0-9._-]{0,20}")
        .prop_map(|(org, local)| DeviceName::from_parts(&org, &local).unwrap())
}

fn hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash)
}

fn body() -> impl Strategy<Value = TxBody> {
    prop_oneof![
        (device_name(), any::<u8>(), proptest::option::of(hash())).prop_map(|(n, seed, c)| {
            let reg = registration(n.as_str(), &test_key(&seed.to_string()), c);
            TxBody::RegisterDevice(reg)
        }),
        (device_name(), any::<u64>(), any::<bool>()).prop_map(|(n, v, admin)| {
            let authority = if admin {
                Authority::Admin
            } else {
                Authority::Device
            };
            rotation(n.as_str(), v, &test_key(&v.to_string()), None, authority)
        }),
        device_name().prop_map(|n| revocation(n.as_str(), Authority::Device)),
        (any::<u64>(), org_id()).prop_map(|(sequence, org)| TxBody::Governance {
            sequence,
            action: GovernanceAction::AddOrg {
                org,
                admins: vec![test_key("a").public()]
            },
        }),
    ]
}

fn transaction() -> impl Strategy<Value = Transaction> {
    (body(), 0usize..3).prop_map(|(body, signers)| {
        let keys: Vec<_> = (0..signers).map(|i| test_key(&format!("s{i}"))).collect();
        let refs: Vec<_> = keys.iter().collect();
        Transaction::new(CHAIN, body).signed_by(&refs)
    })
}

fn record() -> impl Strategy<Value = DeviceRecord> {
    (
        device_name(),
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        proptest::collection::btree_map("[a-z]{1,8}", "[ -~]{0,16}", 0..4),
        any::<bool>(),
    )
        .prop_map(|(name, n, expiry, metadata, revoked)| DeviceRecord {
            version: DeviceRecord::VERSION,
            signing_key: test_key(&n.to_string()).public(),
            agreement_key: test_agreement_key(name.as_str()),
            name,
            next_key_commitment: expiry.map(|e| Hash([e as u8; 32])),
            key_version: n,
            status: if revoked {
                DeviceStatus::Revoked {
                    height: n,
                    reason: "r".into(),
                }
            } else {
                DeviceStatus::Active
            },
            registered_at: n / 2,
            last_changed: n,
            expires_at_ms: expiry,
            metadata,
        })
}

fn header() -> impl Strategy<Value = Header> {
    (any::<u64>(), any::<u64>(), hash(), hash()).prop_map(|(epoch, height, a, b)| Header {
        version: Header::VERSION,
        chain_id: CHAIN.into(),
        epoch,
        height,
        prev_hash: a,
        timestamp_ms: height.wrapping_mul(7),
        proposer: PublicKey(b.0),
        tx_root: b,
        state_root: a,
        validator_set_hash: b,
        next_validator_set_hash: a,
    })
}

fn block() -> impl Strategy<Value = Block> {
    (header(), proptest::collection::vec(transaction(), 0..4)).prop_map(|(header, transactions)| {
        Block {
            version: Block::VERSION,
            header,
            transactions,
        }
    })
}

/// The canonical-decoding contract for `T`: the encoding round-trips, extra
/// or missing bytes are rejected, and any mutated byte string that decodes
/// re-encodes to exactly itself.
fn check_canonical<T: Canonical + PartialEq + std::fmt::Debug>(
    value: &T,
    flip_at: usize,
    flip: u8,
) -> Result<(), TestCaseError> {
    let bytes = value.to_bytes();
    prop_assert_eq!(&T::from_bytes(&bytes).unwrap(), value);
    let mut longer = bytes.clone();
    longer.push(0);
    prop_assert_eq!(
        T::from_bytes(&longer).unwrap_err(),
        CodecError::TrailingBytes(1)
    );
    prop_assert!(T::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    let mut mutated = bytes.clone();
    let i = flip_at % mutated.len();
    mutated[i] ^= flip.max(1);
    if let Ok(decoded) = T::from_bytes(&mutated) {
        prop_assert_eq!(decoded.to_bytes(), mutated);
        prop_assert_ne!(&decoded, value);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn transactions_are_canonical(tx in transaction(), at in any::<usize>(), flip in any::<u8>()) {
        check_canonical(&tx, at, flip)?;
    }

    #[test]
    fn records_are_canonical(r in record(), at in any::<usize>(), flip in any::<u8>()) {
        check_canonical(&r, at, flip)?;
    }

    #[test]
    fn headers_are_canonical(h in header(), at in any::<usize>(), flip in any::<u8>()) {
        check_canonical(&h, at, flip)?;
    }

    #[test]
    fn blocks_are_canonical(b in block(), at in any::<usize>(), flip in any::<u8>()) {
        check_canonical(&b, at, flip)?;
    }

    #[test]
    fn transactions_round_trip_through_json(tx in transaction()) {
        let json = serde_json::to_string(&tx).unwrap();
        prop_assert_eq!(serde_json::from_str::<Transaction>(&json).unwrap(), tx);
    }

    /// Arbitrary bytes never panic the decoder, and anything accepted is canonical.
    #[test]
    fn arbitrary_bytes_decode_only_canonically(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(tx) = Transaction::from_bytes(&bytes) {
            prop_assert_eq!(tx.to_bytes(), bytes);
        }
    }
}

#[test]
fn invalid_names_inside_encodings_are_rejected() {
    let tx = register(&test_key("a"), "acme/d1", &test_key("d"), None);
    let bytes = tx.to_bytes();
    let at = bytes.windows(7).position(|w| w == b"acme/d1").unwrap();
    let mut upper = bytes.clone();
    upper[at] = b'A';
    assert!(matches!(
        Transaction::from_bytes(&upper),
        Err(CodecError::Malformed(_))
    ));
}

#[test]
fn wire_decoding_gives_typed_errors() {
    let admin = test_key("admin/acme");
    let tx = register(&admin, "acme/d1", &test_key("d"), None);
    assert_eq!(Transaction::from_wire(&tx.to_bytes(), CHAIN).unwrap(), tx);
    let bytes = tx.to_bytes();
    assert!(matches!(
        Transaction::from_wire(&bytes[..10], CHAIN),
        Err(TxError::Malformed(_))
    ));
    assert!(matches!(
        Transaction::from_wire(&[0xff; 40], CHAIN),
        Err(TxError::Malformed(_))
    ));
    assert!(matches!(
        Transaction::from_wire(&bytes, "other"),
        Err(TxError::WrongChain { .. })
    ));
    let huge = vec![1u8; keyreg_registry::tx::MAX_TX_BYTES + 1];
    assert!(matches!(
        Transaction::from_wire(&huge, CHAIN),
        Err(TxError::TooLarge { .. })
    ));
}

#[test]
fn wrong_version_byte_is_rejected() {
    let tx = register(&test_key("a"), "acme/d1", &test_key("d"), None);
    let mut bytes = tx.to_bytes();
    bytes[0] = 2;
    assert!(matches!(
        Transaction::from_bytes(&bytes),
        Err(CodecError::Version { found: 2, .. })
    ));
    assert!(Transaction::from_bytes(&[]).is_err());
}
