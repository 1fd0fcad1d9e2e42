//! Building, signing and submitting transactions, and waiting for them.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use keyreg_consensus::codec::{try_encode, Canonical};
use keyreg_consensus::crypto::{Hash, SigningKey};
use keyreg_registry::names::DeviceName;
use keyreg_registry::records::Metadata;
use keyreg_registry::tx::{
    Authority, DeviceRegistration, GovernanceAction, Revocation, Rotation, Transaction, TxBody,
    MAX_LOT_SIZE, MAX_TX_BYTES,
};
use thiserror::Error;

use crate::keys::{AdminKey, DeviceKeySet, DeviceKeys, KeyFileError};
use crate::node::{NodeClient, NodeError};

/// Most devices read from one lot file.
pub const MAX_LOT_FILE_DEVICES: usize = 100_000;
/// Largest lot file.
const MAX_LOT_FILE_LEN: u64 = 64 * 1024 * 1024;
/// Room left in a lot transaction for its envelope and admin signature.
const LOT_ENVELOPE_RESERVE: usize = 4 * 1024;

#[derive(Debug, Error)]
pub enum TxBuildError {
    #[error("{file}:{line}: {reason}")]
    Lot {
        file: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{0}: {1}")]
    LotFile(PathBuf, String),
    #[error("key file: {0}")]
    Key(#[from] KeyFileError),
    #[error("{0}")]
    Invalid(String),
}

/// A registration of `device`'s current keys, signed by an org admin.
pub fn register_device(
    chain_id: &str,
    admin: &AdminKey,
    device: &DeviceKeys,
    expires_at_ms: Option<u64>,
    metadata: Metadata,
) -> Transaction {
    let registration = registration_of(chain_id, device, expires_at_ms, metadata);
    Transaction::new(chain_id, TxBody::RegisterDevice(registration)).signed_by(&[&admin.signing])
}

fn registration_of(
    chain_id: &str,
    device: &DeviceKeys,
    expires_at_ms: Option<u64>,
    metadata: Metadata,
) -> DeviceRegistration {
    DeviceRegistration::new_signed(
        chain_id,
        device.name.clone(),
        &device.current.signing,
        device.current.agreement_key(),
        Some(device.current.next_key_commitment()),
        expires_at_ms,
        metadata,
    )
}

/// One device of a lot.
#[derive(Clone, Debug)]
pub struct LotEntry {
    pub keys: DeviceKeys,
    pub expires_at_ms: Option<u64>,
    pub metadata: Metadata,
}

/// Registrations of a lot, split into as few transactions as the size
/// limits allow (each all-or-nothing), each signed by the admin.
pub fn register_lot(
    chain_id: &str,
    admin: &AdminKey,
    entries: &[LotEntry],
) -> Result<Vec<Transaction>, TxBuildError> {
    let mut txs = Vec::new();
    let mut batch: Vec<DeviceRegistration> = Vec::new();
    let mut batch_bytes = 0usize;
    let budget = MAX_TX_BYTES - LOT_ENVELOPE_RESERVE;
    for entry in entries {
        if entry.keys.name.org() != admin.org {
            return Err(TxBuildError::Invalid(format!(
                "{} is not a device of {}, the admin's organisation",
                entry.keys.name, admin.org
            )));
        }
        let registration = registration_of(
            chain_id,
            &entry.keys,
            entry.expires_at_ms,
            entry.metadata.clone(),
        );
        let size = try_encode(&registration)
            .map_err(|e| TxBuildError::Invalid(e.to_string()))?
            .len();
        if !batch.is_empty() && (batch.len() == MAX_LOT_SIZE || batch_bytes + size > budget) {
            txs.push(lot_tx(chain_id, admin, std::mem::take(&mut batch)));
            batch_bytes = 0;
        }
        batch.push(registration);
        batch_bytes += size;
    }
    if !batch.is_empty() {
        txs.push(lot_tx(chain_id, admin, batch));
    }
    Ok(txs)
}

fn lot_tx(chain_id: &str, admin: &AdminKey, devices: Vec<DeviceRegistration>) -> Transaction {
    let body = TxBody::RegisterLot {
        org: admin.org.clone(),
        devices,
    };
    Transaction::new(chain_id, body).signed_by(&[&admin.signing])
}

/// Reads a lot file: one device per line, `name,key_file[,expires_at_ms[,metadata]]`
/// with metadata as `key=value;key=value`. Key-file paths are relative to the
/// lot file. Blank lines, `#` comments and a `name,...` header are skipped;
/// there is no quoting.
pub fn read_lot_file(path: &Path) -> Result<Vec<LotEntry>, TxBuildError> {
    use std::io::Read;
    let file_error = |reason: String| TxBuildError::LotFile(path.to_path_buf(), reason);
    let file = std::fs::File::open(path).map_err(|e| file_error(e.to_string()))?;
    let mut text = String::new();
    file.take(MAX_LOT_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| file_error(e.to_string()))?;
    if text.len() as u64 > MAX_LOT_FILE_LEN {
        return Err(file_error(format!("larger than {MAX_LOT_FILE_LEN} bytes")));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (i == 0 && line.starts_with("name,")) {
            continue;
        }
        if entries.len() == MAX_LOT_FILE_DEVICES {
            return Err(file_error(format!(
                "more than {MAX_LOT_FILE_DEVICES} devices"
            )));
        }
        let at_line = |reason: String| TxBuildError::Lot {
            file: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let (name, key_file, expires, metadata) = match fields.as_slice() {
            [n, k] => (*n, *k, "", ""),
            [n, k, e] => (*n, *k, *e, ""),
            [n, k, e, m] => (*n, *k, *e, *m),
            _ => {
                return Err(at_line(
                    "expected name,key_file[,expires_at_ms[,metadata]]".into(),
                ))
            }
        };
        let name = DeviceName::new(name).map_err(|e| at_line(e.to_string()))?;
        let keys = DeviceKeys::load(&base.join(key_file)).map_err(|e| at_line(e.to_string()))?;
        if keys.name != name {
            return Err(at_line(format!("key file {key_file} is for {}", keys.name)));
        }
        let expires_at_ms = if expires.is_empty() {
            None
        } else {
            Some(
                expires
                    .parse()
                    .map_err(|_| at_line(format!("bad expiry {expires:?}")))?,
            )
        };
        let metadata =
            parse_metadata(metadata.split(';').filter(|s| !s.is_empty())).map_err(at_line)?;
        entries.push(LotEntry {
            keys,
            expires_at_ms,
            metadata,
        });
    }
    Ok(entries)
}

/// Parses `key=value` items.
pub fn parse_metadata<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Metadata, String> {
    let mut metadata = Metadata::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("metadata {item:?} is not key=value"))?;
        if metadata.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("metadata key {k:?} given twice"));
        }
    }
    keyreg_registry::tx::check_metadata(&metadata).map_err(|e| e.to_string())?;
    Ok(metadata)
}

/// A rotation by the device itself to `new` (which must be
/// `keys.current.successor()`-shaped: its signing key is the committed one),
/// signed by the current and the new key.
pub fn rotate_device(
    chain_id: &str,
    keys: &DeviceKeys,
    new: &DeviceKeySet,
    key_version: u64,
) -> Transaction {
    rotation(chain_id, &keys.name, new, key_version, Authority::Device)
        .signed_by(&[&keys.current.signing, &new.signing])
}

/// A recovery rotation by an org admin (when the device's key is lost or
/// stolen), signed by the admin and the new key.
pub fn rotate_by_admin(
    chain_id: &str,
    admin: &AdminKey,
    name: &DeviceName,
    new: &DeviceKeySet,
    key_version: u64,
) -> Transaction {
    rotation(chain_id, name, new, key_version, Authority::Admin)
        .signed_by(&[&admin.signing, &new.signing])
}

fn rotation(
    chain_id: &str,
    name: &DeviceName,
    new: &DeviceKeySet,
    key_version: u64,
    authority: Authority,
) -> Transaction {
    Transaction::new(
        chain_id,
        TxBody::RotateDevice(Rotation {
            name: name.clone(),
            expected_key_version: key_version,
            new_signing_key: new.signing.public(),
            new_agreement_key: new.agreement_key(),
            next_key_commitment: Some(new.next_key_commitment()),
            authority,
        }),
    )
}

/// A revocation signed by `signer`: the device's own key
/// (`Authority::Device`) or an admin's (`Authority::Admin`).
pub fn revoke(
    chain_id: &str,
    name: &DeviceName,
    reason: &str,
    authority: Authority,
    signer: &SigningKey,
) -> Transaction {
    Transaction::new(
        chain_id,
        TxBody::RevokeDevice(Revocation {
            name: name.clone(),
            reason: reason.to_string(),
            authority,
        }),
    )
    .signed_by(&[signer])
}

/// A governance proposal (unsigned: each approving admin adds a signature
/// with [`Transaction::sign`]; `sequence` is the governance record's next).
pub fn governance(chain_id: &str, sequence: u64, action: GovernanceAction) -> Transaction {
    Transaction::new(chain_id, TxBody::Governance { sequence, action })
}

/// Admin keys as the governance actions want them: sorted, distinct.
pub fn admin_list(
    mut keys: Vec<keyreg_consensus::crypto::PublicKey>,
) -> Vec<keyreg_consensus::crypto::PublicKey> {
    keys.sort();
    keys.dedup();
    keys
}

#[derive(Debug, Error)]
pub enum SubmitError {
    #[error("no node accepted the transaction: {}", describe(.0))]
    NotAccepted(Vec<(String, NodeError)>),
    #[error("not committed within {waited:?} (last status: {last})")]
    Timeout { waited: Duration, last: String },
    #[error("no node to ask")]
    NoNodes,
}

fn describe(failures: &[(String, NodeError)]) -> String {
    failures
        .iter()
        .map(|(n, e)| format!("{n}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Submits to the first node that takes the transaction; returns its hash
/// and that node. A 4xx that names the transaction invalid is final (every
/// honest node would say the same); other failures try the next node.
pub fn submit(nodes: &[NodeClient], tx: &Transaction) -> Result<(Hash, String), SubmitError> {
    if nodes.is_empty() {
        return Err(SubmitError::NoNodes);
    }
    let mut failures = Vec::new();
    for node in nodes {
        match node.submit(tx) {
            Ok(hash) => return Ok((hash, node.url().to_string())),
            Err(e @ NodeError::Api { status: 400, .. }) => {
                failures.push((node.url().to_string(), e));
                break;
            }
            Err(e) => failures.push((node.url().to_string(), e)),
        }
    }
    Err(SubmitError::NotAccepted(failures))
}

/// How a submitted transaction ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxOutcome {
    Committed { height: u64, index: u32 },
    Rejected { height: Option<u64>, reason: String },
}

/// Polls the nodes until one reports the transaction committed or
/// rejected, or `timeout` passes. Polling backs off from 100 ms to 2 s.
pub fn wait_for_commit(
    nodes: &[NodeClient],
    hash: &Hash,
    timeout: Duration,
) -> Result<TxOutcome, SubmitError> {
    if nodes.is_empty() {
        return Err(SubmitError::NoNodes);
    }
    let start = Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut last = String::from("not asked yet");
    // Ends at the deadline: every pass either returns or sleeps.
    loop {
        for node in nodes {
            match node.tx_status(hash) {
                Ok(Some(status)) => match status.status.as_str() {
                    "committed" => {
                        if let (Some(height), Some(index)) = (status.height, status.index) {
                            return Ok(TxOutcome::Committed { height, index });
                        }
                        last = format!("{} reports committed without height and index", node.url());
                    }
                    "rejected" => {
                        return Ok(TxOutcome::Rejected {
                            height: status.height,
                            reason: status.error.unwrap_or_else(|| "no reason given".into()),
                        })
                    }
                    other => last = format!("{other} at {}", node.url()),
                },
                Ok(None) => last = format!("unknown to {}", node.url()),
                Err(e) => last = format!("{}: {e}", node.url()),
            }
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(SubmitError::Timeout { waited, last });
        }
        thread::sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Encodes a transaction as the hex the API and governance files use.
pub fn to_hex(tx: &Transaction) -> String {
    hex::encode(tx.to_bytes())
}

/// Decodes a transaction from hex (as written by [`to_hex`]).
pub fn from_hex(text: &str) -> Result<Transaction, TxBuildError> {
    let bytes = hex::decode(text.trim())
        .map_err(|e| TxBuildError::Invalid(format!("transaction hex: {e}")))?;
    Transaction::from_bytes(&bytes).map_err(|e| TxBuildError::Invalid(format!("transaction: {e}")))
}

#[cfg(test)]
mod tests {
    use keyreg_consensus::crypto::Domain;
    use keyreg_registry::names::OrgId;
    use keyreg_registry::tx::TxError;

    use super::*;
    use crate::light::now_ms;
    use crate::testkit::{Chain, FakeNode, CHAIN};

    fn name(s: &str) -> DeviceName {
        DeviceName::new(s).unwrap()
    }

    /// Every builder's output is accepted by the registry's own execution
    /// (`Chain::commit` panics on a rejected transaction).
    #[test]
    fn built_transactions_execute() {
        let mut chain = Chain::new();
        let (mut alpha, register) = chain.new_device("alpha");
        chain.commit(vec![register], now_ms());

        // Device rotation to the pre-committed key.
        let next = alpha.current.successor().unwrap();
        chain.commit(vec![rotate_device(CHAIN, &alpha, &next, 0)], now_ms());
        let record = chain.device_proof("acme/alpha", 2).record.unwrap();
        assert_eq!(record.signing_key, alpha.current.next_signing.public());
        assert_eq!(record.key_version, 1);
        assert_eq!(
            record.next_key_commitment,
            Some(next.next_signing.public().digest(Domain::DeviceKey))
        );
        alpha.current = next;

        // Admin recovery rotation (any new key), then revocation by the device.
        let recovered = crate::keys::DeviceKeySet::generate().unwrap();
        let admin = chain.admin.clone();
        chain.commit(
            vec![rotate_by_admin(CHAIN, &admin, &alpha.name, &recovered, 1)],
            now_ms(),
        );
        chain.commit(
            vec![revoke(
                CHAIN,
                &alpha.name,
                "end of life",
                Authority::Device,
                &recovered.signing,
            )],
            now_ms(),
        );
        assert!(!chain
            .device_proof("acme/alpha", 4)
            .record
            .unwrap()
            .is_active());

        // A governance action approved by the (threshold 1) admin.
        let mut proposal = governance(
            CHAIN,
            0,
            GovernanceAction::AddOrg {
                org: OrgId::new("globex").unwrap(),
                admins: admin_list(vec![keyreg_consensus::crypto::SigningKey::from_seed(
                    [7; 32],
                )
                .public()]),
            },
        );
        proposal.sign(&admin.signing);
        let proposal = from_hex(&to_hex(&proposal)).unwrap();
        chain.commit(vec![proposal], now_ms());
    }

    #[test]
    fn a_rotation_to_an_uncommitted_key_is_refused_by_the_registry() {
        let mut chain = Chain::new();
        let (alpha, register) = chain.new_device("alpha");
        chain.commit(vec![register], now_ms());
        let stranger = crate::keys::DeviceKeySet::generate().unwrap();
        let tx = rotate_device(CHAIN, &alpha, &stranger, 0);
        let execution =
            keyreg_registry::execute::execute_block(&chain.store, CHAIN, &[tx], 2, now_ms())
                .unwrap();
        assert_eq!(execution.results, vec![Err(TxError::PreRotationMismatch)]);
    }

    #[test]
    fn lots_are_read_split_and_executed() {
        let dir = tempfile::tempdir().unwrap();
        let mut csv = String::from("name,key_file,expires_at_ms,metadata\n# a comment\n");
        let mut chain = Chain::new();
        for i in 0..5 {
            let keys = DeviceKeys::generate(name(&format!("acme/lot-{i}"))).unwrap();
            keys.create(&dir.path().join(format!("lot-{i}.json")))
                .unwrap();
            csv.push_str(&format!("acme/lot-{i},lot-{i}.json,,model=x1;fw=1.{i}\n"));
        }
        csv.push_str(&format!("acme/lot-5,lot-0.json,{}\n", now_ms() + 1000));
        let path = dir.path().join("lot.csv");
        std::fs::write(&path, &csv).unwrap();
        // Line 8 names a key file of another device.
        assert!(matches!(
            read_lot_file(&path),
            Err(TxBuildError::Lot { line: 8, .. })
        ));

        std::fs::write(&path, csv.lines().take(7).collect::<Vec<_>>().join("\n")).unwrap();
        let entries = read_lot_file(&path).unwrap();
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[2].metadata["fw"], "1.2");
        let txs = register_lot(CHAIN, &chain.admin, &entries).unwrap();
        assert_eq!(txs.len(), 1);
        chain.commit(txs, now_ms());
        assert!(chain.device_proof("acme/lot-4", 1).record.is_some());

        // More devices than one transaction may hold: split, each valid.
        let many: Vec<LotEntry> = (0..MAX_LOT_SIZE + 3)
            .map(|i| LotEntry {
                keys: DeviceKeys::generate(name(&format!("acme/many-{i}"))).unwrap(),
                expires_at_ms: None,
                metadata: Metadata::new(),
            })
            .collect();
        let txs = register_lot(CHAIN, &chain.admin, &many).unwrap();
        assert!(txs.len() >= 2);
        assert!(txs.iter().all(|t| t.to_bytes().len() <= MAX_TX_BYTES));
        chain.commit(txs, now_ms());
        assert!(chain
            .device_proof(&format!("acme/many-{MAX_LOT_SIZE}"), 2)
            .record
            .is_some());
    }

    #[test]
    fn submit_and_wait_for_commit() {
        let chain = Chain::new();
        let (_, tx) = chain.new_device("alpha");
        let hash = tx.hash();
        let (busy, good) = (FakeNode::start(), FakeNode::start());
        busy.set(
            "POST",
            "/v1/transactions",
            503,
            r#"{"error":{"code":"busy","message":"mempool full"}}"#.into(),
        );
        good.set(
            "POST",
            "/v1/transactions",
            202,
            format!(r#"{{"hash":"{hash}","status":"pending"}}"#),
        );
        good.set(
            "GET",
            &format!("/v1/transactions/{hash}"),
            200,
            format!(r#"{{"hash":"{hash}","status":"committed","height":7,"index":2}}"#),
        );
        let nodes = vec![busy.client(), good.client()];
        let (submitted, accepted_by) = submit(&nodes, &tx).unwrap();
        assert_eq!(submitted, hash);
        assert_eq!(accepted_by, good.url());
        let posted = good.posted.lock().unwrap().clone();
        assert_eq!(posted.len(), 1);
        assert!(posted[0].1.contains(&to_hex(&tx)));
        assert_eq!(
            wait_for_commit(&nodes, &hash, Duration::from_secs(5)).unwrap(),
            TxOutcome::Committed {
                height: 7,
                index: 2
            }
        );

        // A node that names another hash is not believed; a 400 is final.
        good.set(
            "POST",
            "/v1/transactions",
            202,
            format!(r#"{{"hash":"{}","status":"pending"}}"#, Hash([1; 32])),
        );
        assert!(matches!(
            submit(&[good.client()], &tx),
            Err(SubmitError::NotAccepted(_))
        ));
        busy.set(
            "POST",
            "/v1/transactions",
            400,
            r#"{"error":{"code":"bad_signature","message":"bad signature"}}"#.into(),
        );
        match submit(&nodes, &tx) {
            Err(SubmitError::NotAccepted(f)) => assert_eq!(f.len(), 1, "stopped at the 400"),
            other => panic!("{other:?}"),
        }
        good.set(
            "GET",
            &format!("/v1/transactions/{hash}"),
            200,
            format!(
                r#"{{"hash":"{hash}","status":"rejected","height":7,"error":"already registered"}}"#
            ),
        );
        assert!(matches!(
            wait_for_commit(&[good.client()], &hash, Duration::from_secs(5)).unwrap(),
            TxOutcome::Rejected { .. }
        ));
    }
}
