//! One deterministic chain that fuzz targets and security tests check inputs
//! against. Every key derives from a public label (`registry::testkit`):
//! nothing here is a production key.
//!
//! Chain `keyreg-fuzz`, four equal validators (epoch 0), organisations
//! `acme` and `globex` (governance threshold 1):
//! * height 1: `acme/sensor-1` and `acme/sensor-2` registered (pre-rotation
//!   commitments), a lot of `acme/lot-0` and `acme/lot-1`;
//! * height 2: `acme/sensor-2` revoked by its own key;
//! * height 3: governance adds a fifth validator, so height 3 hands over to
//!   epoch 1 (the handover block).
//!
//! Device proofs are taken at height 2 (certified by epoch 0).

use std::sync::OnceLock;
use std::time::Duration;

use keyreg_client::light::{CertifiedHeader, LightClient, LightConfig, TrustAnchor};
use keyreg_client::node::NodeClient;
use keyreg_consensus::crypto::{Domain, Hash, SigningKey};
use keyreg_consensus::engine::proposer_index;
use keyreg_consensus::validators::ValidatorSet;
use keyreg_registry::testkit::{commit_next, test_agreement_key, test_key, TestNet};
use keyreg_registry::{
    Authority, Block, CommittedBlock, DeviceName, DeviceProof, DeviceRegistration,
    GovernanceAction, Ledger, MemLedgerStore, Metadata, OrgId, Revocation, Rotation, Transaction,
    TxBody, ValidatorInfo,
};

pub const CHAIN: &str = "keyreg-fuzz";
/// The device with an active record at height 2.
pub const ACTIVE: &str = "acme/sensor-1";
/// The device revoked at height 2.
pub const REVOKED: &str = "acme/sensor-2";
/// A name never registered.
pub const ABSENT: &str = "acme/ghost";
/// Height of the block that hands over from epoch 0 to epoch 1.
pub const HANDOVER_HEIGHT: u64 = 3;
/// Height the device proofs are taken at.
pub const PROOF_HEIGHT: u64 = 2;

pub struct Fixture {
    pub net: TestNet,
    /// The chain after height [`HANDOVER_HEIGHT`].
    pub ledger: Ledger<MemLedgerStore>,
    /// Epoch 0.
    pub set: ValidatorSet,
    /// Epoch 1 (after the handover).
    pub next_set: ValidatorSet,
    /// Heights 1..=3, index `h - 1`.
    pub blocks: Vec<CommittedBlock>,
    /// Stateless-valid transactions of every kind; the last three (a
    /// rotation, an admin revocation and a governance action) are not
    /// committed, so they still pass the stateful checks at the head.
    pub transactions: Vec<Transaction>,
    /// Proofs at [`PROOF_HEIGHT`] for [`ACTIVE`], [`REVOKED`] and [`ABSENT`].
    pub proofs: Vec<DeviceProof>,
    /// A valid, uncertified block for height 4 (epoch 1) holding the three
    /// uncommitted transactions, proposed by the round-0 proposer.
    pub proposal: Block,
    /// Epoch 1's validator keys (the genesis four and `validator/4`).
    pub next_keys: Vec<SigningKey>,
}

impl Fixture {
    pub fn block(&self, height: u64) -> &CommittedBlock {
        let index = usize::try_from(height - 1).expect("fixture heights are small");
        &self.blocks[index]
    }

    pub fn certified_header(&self, height: u64) -> CertifiedHeader {
        let block = self.block(height);
        CertifiedHeader::new(block.block.header.clone(), block.certificate.clone())
    }

    pub fn anchor(&self) -> TrustAnchor {
        TrustAnchor::from_genesis(&self.net.genesis).expect("the fixture genesis is valid")
    }

    /// A light client trusting the genesis, whose clock rules accept the
    /// fixture's (old) headers as fresh, and whose only node is unreachable
    /// (port 1 on loopback: refused at once), so look-ups fail fast.
    pub fn light_client(&self) -> LightClient {
        let config = LightConfig {
            max_header_age: CENTURY,
            max_staple_age: CENTURY,
            ..LightConfig::default()
        };
        let unreachable = NodeClient::new("http://127.0.0.1:1", Duration::from_millis(200));
        LightClient::new(self.anchor(), vec![unreachable], config)
    }

    /// The X25519 key registered for `name` (active and revoked devices).
    pub fn agreement_key(name: &str) -> [u8; 32] {
        test_agreement_key(name).0
    }

    /// The X25519 secret behind [`Fixture::agreement_key`].
    pub fn agreement_secret(name: &str) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(
            keyreg_consensus::crypto::hash(Domain::Handshake, name.as_bytes()).0,
        )
    }
}

const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The signing key of device `name` (`/next` appended: the pre-committed one).
pub fn device_key(name: &str) -> SigningKey {
    test_key(&format!("device/{name}"))
}

pub fn name(s: &str) -> DeviceName {
    DeviceName::new(s).expect("fixture names are valid")
}

/// A registration of `device` with its fixture keys and a commitment to its
/// `/next` key.
pub fn registration(device: &str) -> DeviceRegistration {
    DeviceRegistration::new_signed(
        CHAIN,
        name(device),
        &device_key(device),
        test_agreement_key(device),
        Some(commitment(&device_key(&format!("{device}/next")))),
        None,
        Metadata::new(),
    )
}

pub fn commitment(key: &SigningKey) -> Hash {
    key.public().digest(Domain::DeviceKey)
}

/// The shared fixture, built once per process.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build)
}

fn build() -> Fixture {
    let net = TestNet::new(CHAIN, 4, &["acme", "globex"], 1);
    let acme = net.admin("acme").clone();
    let mut ledger =
        Ledger::open(MemLedgerStore::new(), &net.genesis).expect("fixture genesis opens");
    let set = ledger.validator_set().clone();
    let keys = net.validator_keys.clone();

    let register = |device: &str| {
        Transaction::new(CHAIN, TxBody::RegisterDevice(registration(device))).signed_by(&[&acme])
    };
    let lot = Transaction::new(
        CHAIN,
        TxBody::RegisterLot {
            org: OrgId::new("acme").expect("valid org"),
            devices: vec![registration("acme/lot-0"), registration("acme/lot-1")],
        },
    )
    .signed_by(&[&acme]);
    let height1 = vec![register(ACTIVE), register(REVOKED), lot];
    let revoke_own = Transaction::new(
        CHAIN,
        TxBody::RevokeDevice(Revocation {
            name: name(REVOKED),
            reason: "decommissioned".into(),
            authority: Authority::Device,
        }),
    )
    .signed_by(&[&device_key(REVOKED)]);
    let mut validators: Vec<ValidatorInfo> = net.genesis.validators.clone();
    validators.push(ValidatorInfo::new(
        test_key("validator/4").public(),
        1,
        "/memory/4",
    ));
    validators.sort_by_key(|v| v.key);
    let add_validator = Transaction::new(
        CHAIN,
        TxBody::Governance {
            sequence: 0,
            action: GovernanceAction::SetValidators { validators },
        },
    )
    .signed_by(&[&acme]);

    let mut blocks = Vec::new();
    let mut committed_txs = Vec::new();
    for txs in [height1, vec![revoke_own], vec![add_validator]] {
        committed_txs.extend(txs.iter().cloned());
        let (block, results) = commit_next(&mut ledger, &keys, txs).expect("fixture block commits");
        assert!(
            results.iter().all(Result::is_ok),
            "fixture transactions apply: {results:?}"
        );
        blocks.push(block);
    }
    let next_set = ledger.validator_set().clone();
    assert_eq!(next_set.epoch, 1, "height 3 hands over to epoch 1");

    let next = device_key(&format!("{ACTIVE}/next"));
    let rotate = Transaction::new(
        CHAIN,
        TxBody::RotateDevice(Rotation {
            name: name(ACTIVE),
            expected_key_version: 0,
            new_signing_key: next.public(),
            new_agreement_key: test_agreement_key(&format!("{ACTIVE}/1")),
            next_key_commitment: Some(commitment(&device_key(&format!("{ACTIVE}/next/next")))),
            authority: Authority::Device,
        }),
    )
    .signed_by(&[&device_key(ACTIVE), &next]);
    let revoke_by_admin = Transaction::new(
        CHAIN,
        TxBody::RevokeDevice(Revocation {
            name: name("acme/lot-0"),
            reason: "lost".into(),
            authority: Authority::Admin,
        }),
    )
    .signed_by(&[&acme]);
    let add_org = Transaction::new(
        CHAIN,
        TxBody::Governance {
            sequence: 1,
            action: GovernanceAction::AddOrg {
                org: OrgId::new("initech").expect("valid org"),
                admins: vec![test_key("admin/initech").public()],
            },
        },
    )
    .signed_by(&[&acme]);
    let mut transactions = committed_txs;
    transactions.extend([rotate, revoke_by_admin, add_org]);
    for tx in transactions.iter().rev().take(3) {
        let verdict = ledger.check_tx(tx).expect("the fixture ledger reads");
        assert_eq!(verdict, Ok(()), "uncommitted fixture transaction applies");
    }

    let mut next_keys = keys;
    next_keys.push(test_key("validator/4"));
    let proposer = next_set.validators()[proposer_index(&next_set, 4, 0)].key;
    let uncommitted = transactions[transactions.len() - 3..].to_vec();
    let (proposal, _) = ledger
        .propose(
            uncommitted.clone(),
            ledger.head().timestamp_ms + 1000,
            proposer,
            |_| false,
        )
        .expect("fixture proposal executes");
    assert_eq!(
        proposal.transactions, uncommitted,
        "every proposed transaction fits"
    );

    let proofs = [ACTIVE, REVOKED, ABSENT]
        .iter()
        .map(|n| {
            ledger
                .device_proof_at(&name(n), PROOF_HEIGHT)
                .expect("fixture proof")
        })
        .collect();
    Fixture {
        net,
        ledger,
        set,
        next_set,
        blocks,
        transactions,
        proofs,
        proposal,
        next_keys,
    }
}
