//! Every authorisation rule, accepted and rejected, through a real ledger.
//! A rejected transaction must leave the state root unchanged.

mod common;

use common::*;
use keyreg_consensus::crypto::Domain;
use keyreg_registry::testkit::{test_agreement_key, test_key};
use keyreg_registry::{
    Authority, DeviceStatus, GovernanceAction, OrgId, SignatureRef, SignerRole, Transaction,
    TxBody, TxError, ValidatorInfo,
};

/// Runs `tx` in its own block, expecting `err`, and checks the root is unchanged.
fn rejects<S: keyreg_registry::LedgerStore>(env: &mut Env<S>, tx: Transaction, err: TxError) {
    let before = env.root();
    assert_eq!(env.run_one(tx), Err(err));
    assert_eq!(
        env.root(),
        before,
        "a rejected transaction changed the state"
    );
}

#[test]
fn admin_registers_a_device() {
    let mut env = env();
    let key = device_key("d1");
    let before = env.root();
    assert_eq!(
        env.run_one(register(&env.admin("acme"), "acme/d1", &key, None)),
        Ok(())
    );
    assert_ne!(env.root(), before);
    let record = env.ledger.device(&name("acme/d1")).unwrap().unwrap();
    assert_eq!(record.signing_key, key.public());
    assert_eq!(record.key_version, 0);
    assert_eq!(record.status, DeviceStatus::Active);
    assert_eq!(record.registered_at, 1);
    let org = env
        .ledger
        .org(&OrgId::new("acme").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(org.active_devices, 1);
}

#[test]
fn registration_by_another_orgs_admin_is_not_authorised() {
    let mut env = env();
    let tx = register(&env.admin("globex"), "acme/d1", &device_key("d1"), None);
    rejects(
        &mut env,
        tx,
        TxError::NotAuthorised {
            role: SignerRole::Admin,
        },
    );
}

#[test]
fn registration_in_an_unknown_org_is_rejected() {
    let mut env = env();
    let tx = register(&env.admin("acme"), "nobody/d1", &device_key("d1"), None);
    rejects(
        &mut env,
        tx,
        TxError::UnknownOrg(OrgId::new("nobody").unwrap()),
    );
}

#[test]
fn registration_with_a_bad_proof_of_possession_is_rejected() {
    let mut env = env();
    let mut reg = registration("acme/d1", &device_key("d1"), None);
    // Proof made by another key than the one registered.
    reg.proof_of_possession =
        registration("acme/d1", &device_key("other"), None).proof_of_possession;
    let tx = Transaction::new(CHAIN, TxBody::RegisterDevice(reg)).signed_by(&[&env.admin("acme")]);
    rejects(
        &mut env,
        tx,
        TxError::BadSignature {
            which: SignatureRef::ProofOfPossession(0),
        },
    );
}

#[test]
fn wrong_admin_signature_is_rejected() {
    let mut env = env();
    let mut tx = register(&env.admin("acme"), "acme/d1", &device_key("d1"), None);
    tx.signatures[0].signature.0[3] ^= 1;
    rejects(
        &mut env,
        tx,
        TxError::BadSignature {
            which: SignatureRef::Signer(0),
        },
    );
}

#[test]
fn another_chains_transaction_is_rejected() {
    let mut env = env();
    let mut tx = register(&env.admin("acme"), "acme/d1", &device_key("d1"), None);
    tx.chain_id = "other-chain".into();
    tx.signatures.clear();
    let tx = tx.signed_by(&[&env.admin("acme")]);
    rejects(
        &mut env,
        tx,
        TxError::WrongChain {
            expected: CHAIN.into(),
            found: "other-chain".into(),
        },
    );
}

#[test]
fn replayed_registration_is_rejected() {
    let mut env = env();
    let tx = register(&env.admin("acme"), "acme/d1", &device_key("d1"), None);
    assert_eq!(env.run_one(tx.clone()), Ok(()));
    // The mempool sees it in the transaction index.
    assert_eq!(env.ledger.check_tx(&tx).unwrap(), Err(TxError::Replay));
    // A proposer that includes it anyway gets it rejected by state.
    rejects(&mut env, tx, TxError::AlreadyRegistered(name("acme/d1")));
}

#[test]
fn a_replay_within_one_block_applies_once() {
    let mut env = env();
    let tx = register(&env.admin("acme"), "acme/d1", &device_key("d1"), None);
    let results = env.run(vec![tx.clone(), tx]);
    assert_eq!(
        results,
        vec![Ok(()), Err(TxError::AlreadyRegistered(name("acme/d1")))]
    );
}

#[test]
fn expired_registration_is_rejected() {
    let mut env = env();
    let mut reg = registration("acme/d1", &device_key("d1"), None);
    reg.expires_at_ms = Some(env.ledger.head().timestamp_ms);
    let tx = Transaction::new(CHAIN, TxBody::RegisterDevice(reg)).signed_by(&[&env.admin("acme")]);
    rejects(&mut env, tx, TxError::Expired);
}

#[test]
fn lot_registers_all_devices() {
    let mut env = env();
    let devices = (0..50)
        .map(|i| {
            registration(
                &format!("acme/lot-{i}"),
                &device_key(&format!("lot-{i}")),
                None,
            )
        })
        .collect();
    let tx = Transaction::new(
        CHAIN,
        TxBody::RegisterLot {
            org: OrgId::new("acme").unwrap(),
            devices,
        },
    )
    .signed_by(&[&env.admin("acme")]);
    assert_eq!(env.run_one(tx), Ok(()));
    assert!(env.ledger.device(&name("acme/lot-49")).unwrap().is_some());
    let org = env
        .ledger
        .org(&OrgId::new("acme").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(org.active_devices, 50);
}

#[test]
fn lot_with_one_bad_proof_of_possession_registers_nothing() {
    let mut env = env();
    let mut devices: Vec<_> = (0..3)
        .map(|i| {
            registration(
                &format!("acme/lot-{i}"),
                &device_key(&format!("lot-{i}")),
                None,
            )
        })
        .collect();
    devices[1].proof_of_possession.0[0] ^= 1;
    let tx = Transaction::new(
        CHAIN,
        TxBody::RegisterLot {
            org: OrgId::new("acme").unwrap(),
            devices,
        },
    )
    .signed_by(&[&env.admin("acme")]);
    rejects(
        &mut env,
        tx,
        TxError::BadSignature {
            which: SignatureRef::ProofOfPossession(1),
        },
    );
    assert!(env.ledger.device(&name("acme/lot-0")).unwrap().is_none());
}

#[test]
fn lot_with_a_taken_name_registers_nothing() {
    let mut env = env();
    env.run_one(register(
        &env.admin("acme"),
        "acme/lot-2",
        &device_key("x"),
        None,
    ))
    .unwrap();
    let devices = (0..3)
        .map(|i| {
            registration(
                &format!("acme/lot-{i}"),
                &device_key(&format!("lot-{i}")),
                None,
            )
        })
        .collect();
    let tx = Transaction::new(
        CHAIN,
        TxBody::RegisterLot {
            org: OrgId::new("acme").unwrap(),
            devices,
        },
    )
    .signed_by(&[&env.admin("acme")]);
    rejects(&mut env, tx, TxError::AlreadyRegistered(name("acme/lot-2")));
    assert!(env.ledger.device(&name("acme/lot-0")).unwrap().is_none());
}

#[test]
fn lot_shape_is_checked() {
    let mut env = env();
    let admin = env.admin("acme");
    let acme = OrgId::new("acme").unwrap();
    let dup = registration("acme/a", &device_key("a"), None);
    let tx = Transaction::new(
        CHAIN,
        TxBody::RegisterLot {
            org: acme.clone(),
            devices: vec![dup.clone(), dup],
        },
    )
    .signed_by(&[&admin]);
    rejects(&mut env, tx, TxError::DuplicateName(name("acme/a")));
    let foreign = registration("globex/a", &device_key("a"), None);
    let tx = Transaction::new(
        CHAIN,
        TxBody::RegisterLot {
            org: acme,
            devices: vec![foreign],
        },
    )
    .signed_by(&[&admin]);
    rejects(
        &mut env,
        tx,
        TxError::WrongOrg {
            name: name("globex/a"),
            org: OrgId::new("acme").unwrap(),
        },
    );
}

fn registered_with_commitment(
    env: &mut Env,
) -> (
    keyreg_consensus::crypto::SigningKey,
    keyreg_consensus::crypto::SigningKey,
) {
    let current = device_key("d1/v0");
    let next = device_key("d1/v1");
    let tx = register(
        &env.admin("acme"),
        "acme/d1",
        &current,
        Some(commitment_to(&next)),
    );
    env.run_one(tx).unwrap();
    (current, next)
}

#[test]
fn rotation_to_the_committed_key_signed_by_both_is_accepted() {
    let mut env = env();
    let (current, next) = registered_with_commitment(&mut env);
    let after_next = device_key("d1/v2");
    let tx = Transaction::new(
        CHAIN,
        rotation(
            "acme/d1",
            0,
            &next,
            Some(commitment_to(&after_next)),
            Authority::Device,
        ),
    )
    .signed_by(&[&current, &next]);
    assert_eq!(env.run_one(tx), Ok(()));
    let record = env.ledger.device(&name("acme/d1")).unwrap().unwrap();
    assert_eq!(record.signing_key, next.public());
    assert_eq!(record.key_version, 1);
    assert_eq!(record.next_key_commitment, Some(commitment_to(&after_next)));
    assert_eq!(record.last_changed, 2);
}

#[test]
fn rotation_ignoring_the_pre_rotation_commitment_is_rejected() {
    let mut env = env();
    let (current, _next) = registered_with_commitment(&mut env);
    // A thief holding the current key picks its own new key.
    let thief = device_key("thief");
    let tx = Transaction::new(
        CHAIN,
        rotation("acme/d1", 0, &thief, None, Authority::Device),
    )
    .signed_by(&[&current, &thief]);
    rejects(&mut env, tx, TxError::PreRotationMismatch);
}

#[test]
fn stolen_current_key_alone_cannot_rotate() {
    let mut env = env();
    let (current, next) = registered_with_commitment(&mut env);
    // The committed key is public (its digest is), but it did not sign.
    let tx = Transaction::new(
        CHAIN,
        rotation("acme/d1", 0, &next, None, Authority::Device),
    )
    .signed_by(&[&current]);
    rejects(
        &mut env,
        tx,
        TxError::SignatureCount {
            expected: 2,
            found: 1,
        },
    );
    let other = device_key("other");
    let tx = Transaction::new(
        CHAIN,
        rotation("acme/d1", 0, &next, None, Authority::Device),
    )
    .signed_by(&[&current, &other]);
    rejects(
        &mut env,
        tx,
        TxError::MissingSignature {
            role: SignerRole::NewKey,
        },
    );
}

#[test]
fn rotation_without_the_current_key_is_not_authorised() {
    let mut env = env();
    let (_current, next) = registered_with_commitment(&mut env);
    let impostor = device_key("impostor");
    let tx = Transaction::new(
        CHAIN,
        rotation("acme/d1", 0, &next, None, Authority::Device),
    )
    .signed_by(&[&impostor, &next]);
    rejects(
        &mut env,
        tx,
        TxError::NotAuthorised {
            role: SignerRole::Device,
        },
    );
}

#[test]
fn rotation_without_commitment_accepts_any_new_key() {
    let mut env = env();
    let current = device_key("d1/v0");
    env.run_one(register(&env.admin("acme"), "acme/d1", &current, None))
        .unwrap();
    let new = device_key("anything");
    let tx = Transaction::new(CHAIN, rotation("acme/d1", 0, &new, None, Authority::Device))
        .signed_by(&[&current, &new]);
    assert_eq!(env.run_one(tx), Ok(()));
}

#[test]
fn replayed_rotation_is_rejected_as_replay() {
    let mut env = env();
    let (current, next) = registered_with_commitment(&mut env);
    let tx = Transaction::new(
        CHAIN,
        rotation("acme/d1", 0, &next, None, Authority::Device),
    )
    .signed_by(&[&current, &next]);
    assert_eq!(env.run_one(tx.clone()), Ok(()));
    rejects(&mut env, tx, TxError::Replay);
}

#[test]
fn rotation_for_a_future_key_version_is_rejected() {
    let mut env = env();
    let (current, next) = registered_with_commitment(&mut env);
    let tx = Transaction::new(
        CHAIN,
        rotation("acme/d1", 5, &next, None, Authority::Device),
    )
    .signed_by(&[&current, &next]);
    rejects(
        &mut env,
        tx,
        TxError::KeyVersionMismatch {
            expected: 0,
            found: 5,
        },
    );
}

#[test]
fn admin_recovery_rotation_overrides_the_commitment() {
    let mut env = env();
    let (_current, _next) = registered_with_commitment(&mut env);
    let recovered = device_key("recovered");
    let tx = Transaction::new(
        CHAIN,
        rotation("acme/d1", 0, &recovered, None, Authority::Admin),
    )
    .signed_by(&[&env.admin("acme"), &recovered]);
    assert_eq!(env.run_one(tx), Ok(()));
    let record = env.ledger.device(&name("acme/d1")).unwrap().unwrap();
    assert_eq!(record.signing_key, recovered.public());
    assert_eq!(record.next_key_commitment, None);
}

#[test]
fn recovery_rotation_by_another_orgs_admin_is_not_authorised() {
    let mut env = env();
    registered_with_commitment(&mut env);
    let recovered = device_key("recovered");
    let tx = Transaction::new(
        CHAIN,
        rotation("acme/d1", 0, &recovered, None, Authority::Admin),
    )
    .signed_by(&[&env.admin("globex"), &recovered]);
    rejects(
        &mut env,
        tx,
        TxError::NotAuthorised {
            role: SignerRole::Admin,
        },
    );
}

#[test]
fn device_revokes_itself_and_revocation_is_terminal() {
    let mut env = env();
    let key = device_key("d1");
    env.run_one(register(&env.admin("acme"), "acme/d1", &key, None))
        .unwrap();
    let tx = Transaction::new(CHAIN, revocation("acme/d1", Authority::Device)).signed_by(&[&key]);
    assert_eq!(env.run_one(tx.clone()), Ok(()));
    let record = env.ledger.device(&name("acme/d1")).unwrap().unwrap();
    assert_eq!(
        record.status,
        DeviceStatus::Revoked {
            height: 2,
            reason: "decommissioned".into()
        }
    );
    let org = env
        .ledger
        .org(&OrgId::new("acme").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(org.active_devices, 0);
    // Terminal: no re-registration (even with a fresh key), rotation or second revocation.
    let again = register(&env.admin("acme"), "acme/d1", &device_key("fresh"), None);
    rejects(&mut env, again, TxError::NameRevoked(name("acme/d1")));
    let new = device_key("new");
    let rot = Transaction::new(CHAIN, rotation("acme/d1", 0, &new, None, Authority::Device))
        .signed_by(&[&key, &new]);
    rejects(&mut env, rot, TxError::NameRevoked(name("acme/d1")));
    rejects(&mut env, tx, TxError::NameRevoked(name("acme/d1")));
}

#[test]
fn admin_revokes_a_device() {
    let mut env = env();
    env.run_one(register(
        &env.admin("acme"),
        "acme/d1",
        &device_key("d1"),
        None,
    ))
    .unwrap();
    let tx = Transaction::new(CHAIN, revocation("acme/d1", Authority::Admin))
        .signed_by(&[&env.admin("acme")]);
    assert_eq!(env.run_one(tx), Ok(()));
    assert!(!env
        .ledger
        .device(&name("acme/d1"))
        .unwrap()
        .unwrap()
        .is_active());
}

#[test]
fn revocation_by_a_stranger_is_not_authorised() {
    let mut env = env();
    env.run_one(register(
        &env.admin("acme"),
        "acme/d1",
        &device_key("d1"),
        None,
    ))
    .unwrap();
    let tx = Transaction::new(CHAIN, revocation("acme/d1", Authority::Device))
        .signed_by(&[&device_key("stranger")]);
    rejects(
        &mut env,
        tx,
        TxError::NotAuthorised {
            role: SignerRole::Device,
        },
    );
    let tx = Transaction::new(CHAIN, revocation("acme/d1", Authority::Admin))
        .signed_by(&[&env.admin("globex")]);
    rejects(
        &mut env,
        tx,
        TxError::NotAuthorised {
            role: SignerRole::Admin,
        },
    );
    let tx = Transaction::new(CHAIN, revocation("acme/nope", Authority::Admin))
        .signed_by(&[&env.admin("acme")]);
    rejects(&mut env, tx, TxError::UnknownDevice(name("acme/nope")));
}

fn add_org(org: &str) -> GovernanceAction {
    GovernanceAction::AddOrg {
        org: OrgId::new(org).unwrap(),
        admins: vec![test_key(&format!("admin/{org}")).public()],
    }
}

#[test]
fn governance_below_threshold_is_rejected() {
    let mut env = env();
    let tx = governance(0, add_org("hooli"), &[&env.admin("acme")]);
    rejects(
        &mut env,
        tx,
        TxError::ThresholdNotReached {
            approvals: 1,
            threshold: 2,
        },
    );
}

#[test]
fn governance_at_threshold_adds_an_org_that_can_register() {
    let mut env = env();
    let tx = governance(
        0,
        add_org("hooli"),
        &[&env.admin("acme"), &env.admin("globex")],
    );
    assert_eq!(env.run_one(tx.clone()), Ok(()));
    assert_eq!(env.ledger.governance().unwrap().sequence, 1);
    let hooli_admin = test_key("admin/hooli");
    assert_eq!(
        env.run_one(register(&hooli_admin, "hooli/d1", &device_key("h"), None)),
        Ok(())
    );
    // Replaying the approved action is rejected.
    rejects(&mut env, tx, TxError::Replay);
}

#[test]
fn governance_signer_outside_the_consortium_is_not_authorised() {
    let mut env = env();
    let outsider = test_key("outsider");
    let tx = governance(
        0,
        add_org("hooli"),
        &[&env.admin("acme"), &env.admin("globex"), &outsider],
    );
    rejects(
        &mut env,
        tx,
        TxError::NotAuthorised {
            role: SignerRole::Approver,
        },
    );
}

#[test]
fn governance_out_of_sequence_is_rejected() {
    let mut env = env();
    let tx = governance(
        3,
        add_org("hooli"),
        &[&env.admin("acme"), &env.admin("globex")],
    );
    rejects(
        &mut env,
        tx,
        TxError::GovernanceSequence {
            expected: 0,
            found: 3,
        },
    );
}

#[test]
fn org_removal_needs_no_active_devices_and_is_final() {
    let mut env = env();
    let (a, g) = (env.admin("acme"), env.admin("globex"));
    let key = device_key("i1");
    env.run_one(register(&env.admin("initech"), "initech/d1", &key, None))
        .unwrap();
    let initech = OrgId::new("initech").unwrap();
    let remove = GovernanceAction::RemoveOrg {
        org: initech.clone(),
    };
    rejects(
        &mut env,
        governance(0, remove.clone(), &[&a, &g]),
        TxError::OrgHasActiveDevices {
            org: initech.clone(),
            count: 1,
        },
    );
    env.run_one(
        Transaction::new(CHAIN, revocation("initech/d1", Authority::Device)).signed_by(&[&key]),
    )
    .unwrap();
    assert_eq!(env.run_one(governance(0, remove, &[&a, &g])), Ok(()));
    // Removed: no registrations, and the id cannot come back.
    let late = register(&env.admin("initech"), "initech/d2", &device_key("i2"), None);
    rejects(&mut env, late, TxError::OrgRemoved(initech.clone()));
    rejects(
        &mut env,
        governance(1, add_org("initech"), &[&a, &g]),
        TxError::OrgExists(initech.clone()),
    );
    // Two orgs left with threshold 2: removing another would make governance impossible.
    let remove_globex = GovernanceAction::RemoveOrg {
        org: OrgId::new("globex").unwrap(),
    };
    rejects(
        &mut env,
        governance(1, remove_globex, &[&a, &g]),
        TxError::ThresholdUnreachable {
            orgs: 1,
            threshold: 2,
        },
    );
}

#[test]
fn admin_keys_change_and_cannot_be_shared() {
    let mut env = env();
    let (a, g) = (env.admin("acme"), env.admin("globex"));
    let acme = OrgId::new("acme").unwrap();
    let shared = GovernanceAction::SetOrgAdmins {
        org: acme.clone(),
        admins: vec![g.public()],
    };
    rejects(
        &mut env,
        governance(0, shared, &[&a, &g]),
        TxError::AdminKeyInUse {
            key: g.public(),
            org: OrgId::new("globex").unwrap(),
        },
    );
    let new_admin = test_key("admin/acme/2");
    let change = GovernanceAction::SetOrgAdmins {
        org: acme,
        admins: vec![new_admin.public()],
    };
    assert_eq!(env.run_one(governance(0, change, &[&a, &g])), Ok(()));
    rejects(
        &mut env,
        register(&a, "acme/d1", &device_key("d1"), None),
        TxError::NotAuthorised {
            role: SignerRole::Admin,
        },
    );
    assert_eq!(
        env.run_one(register(&new_admin, "acme/d1", &device_key("d1"), None)),
        Ok(())
    );
}

#[test]
fn validator_change_takes_effect_next_height_with_epoch_plus_one() {
    let mut env = env();
    let (a, g) = (env.admin("acme"), env.admin("globex"));
    let new_keys: Vec<_> = (0..3)
        .map(|i| test_key(&format!("new-validator/{i}")))
        .collect();
    let mut validators: Vec<ValidatorInfo> = new_keys
        .iter()
        .enumerate()
        .map(|(i, k)| ValidatorInfo::new(k.public(), 10, &format!("/memory/new/{i}")))
        .collect();
    validators.sort_by_key(|v| v.key);
    let old_set = env.ledger.validator_set().clone();
    let tx = governance(
        0,
        GovernanceAction::SetValidators {
            validators: validators.clone(),
        },
        &[&a, &g],
    );
    assert_eq!(env.run_one(tx), Ok(()));
    let head = env.ledger.head().clone();
    assert_eq!(head.epoch, 0);
    assert_eq!(head.validator_set_hash, old_set.hash());
    assert_ne!(head.next_validator_set_hash, head.validator_set_hash);
    let new_set = env.ledger.validator_set().clone();
    assert_eq!(new_set.epoch, 1);
    assert_eq!(new_set.hash(), head.next_validator_set_hash);
    assert_eq!(env.ledger.validators().unwrap(), validators);
    // The old validators can no longer certify.
    let err =
        keyreg_registry::testkit::commit_next(&mut env.ledger, &env.net.validator_keys, vec![])
            .unwrap_err();
    assert!(
        matches!(err, keyreg_registry::LedgerError::Certificate(_)),
        "{err}"
    );
    // The new ones certify block 3 at epoch 1.
    keyreg_registry::testkit::commit_next(&mut env.ledger, &new_keys, vec![]).unwrap();
    assert_eq!(env.ledger.head().epoch, 1);
    assert!(!env.ledger.head().changes_validators());
}

#[test]
fn invalid_validator_set_is_rejected_statelessly() {
    let mut env = env();
    let (a, g) = (env.admin("acme"), env.admin("globex"));
    let k = test_key("v");
    let tx = governance(
        0,
        GovernanceAction::SetValidators {
            validators: vec![ValidatorInfo::new(k.public(), 0, "x")],
        },
        &[&a, &g],
    );
    let before = env.root();
    assert!(matches!(
        env.run_one(tx),
        Err(TxError::InvalidValidatorSet(_))
    ));
    assert_eq!(env.root(), before);
}

#[test]
fn degenerate_agreement_key_and_oversized_metadata_are_rejected() {
    let mut env = env();
    let key = device_key("d1");
    let mut reg = registration("acme/d1", &key, None);
    reg.agreement_key = keyreg_registry::AgreementKey([0; 32]);
    let tx = Transaction::new(CHAIN, TxBody::RegisterDevice(reg)).signed_by(&[&env.admin("acme")]);
    rejects(&mut env, tx, TxError::DegenerateAgreementKey);
    let metadata = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
    let reg = keyreg_registry::DeviceRegistration::new_signed(
        CHAIN,
        name("acme/d1"),
        &key,
        test_agreement_key("x"),
        None,
        None,
        metadata,
    );
    let tx = Transaction::new(CHAIN, TxBody::RegisterDevice(reg)).signed_by(&[&env.admin("acme")]);
    rejects(
        &mut env,
        tx,
        TxError::TooLarge {
            what: keyreg_registry::SizeLimit::MetadataEntries,
            size: 17,
            max: 16,
        },
    );
}

#[test]
fn commitment_to_the_new_key_itself_is_rejected() {
    let mut env = env();
    let current = device_key("c");
    env.run_one(register(&env.admin("acme"), "acme/d1", &current, None))
        .unwrap();
    let new = device_key("n");
    let tx = Transaction::new(
        CHAIN,
        rotation(
            "acme/d1",
            0,
            &new,
            Some(new.public().digest(Domain::DeviceKey)),
            Authority::Device,
        ),
    )
    .signed_by(&[&current, &new]);
    rejects(&mut env, tx, TxError::CommitmentReuse);
}

#[test]
fn two_validator_changes_in_one_block_move_one_epoch() {
    let mut env = env();
    let (a, g) = (env.admin("acme"), env.admin("globex"));
    let set_of = |tag: &str| {
        let mut v: Vec<ValidatorInfo> = (0..2)
            .map(|i| ValidatorInfo::new(test_key(&format!("{tag}/{i}")).public(), 1, "addr"))
            .collect();
        v.sort_by_key(|x| x.key);
        v
    };
    let first = governance(
        0,
        GovernanceAction::SetValidators {
            validators: set_of("x"),
        },
        &[&a, &g],
    );
    let second = governance(
        1,
        GovernanceAction::SetValidators {
            validators: set_of("y"),
        },
        &[&a, &g],
    );
    assert_eq!(env.run(vec![first, second]), vec![Ok(()), Ok(())]);
    assert_eq!(env.ledger.validator_set().epoch, 1);
    assert_eq!(env.ledger.validators().unwrap(), set_of("y"));
    // A smaller set leaves no stale validator entries behind.
    assert_eq!(env.ledger.governance().unwrap().validator_count, 2);
    let head = env.ledger.state_at(env.ledger.height()).unwrap();
    for index in 2..4 {
        let key = keyreg_registry::records::validator_key(index);
        assert_eq!(keyreg_registry::StateView::get(&head, &key).unwrap(), None);
    }
}
