//! Test fixtures: an in-process chain built with the registry crate (real
//! execution, real state tree, real certificates) and a fake node: a tiny
//! HTTP responder on 127.0.0.1 serving whatever JSON a test puts in it.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use keyreg_consensus::certificate::{CommitCertificate, VoteData, VoteKind};
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::{PublicKey, SigningKey};
use keyreg_consensus::validators::ValidatorSet;
use keyreg_registry::block::{tx_root, Block, CommittedBlock, Header};
use keyreg_registry::execute::execute_block;
use keyreg_registry::genesis::Genesis;
use keyreg_registry::lookup::DeviceProof;
use keyreg_registry::names::{DeviceName, OrgId};
use keyreg_registry::records::{DeviceRecord, ValidatorInfo};
use keyreg_registry::tree::MemNodeStore;
use keyreg_registry::tree_state::TreeState;
use keyreg_registry::tx::Transaction;

use crate::keys::{AdminKey, DeviceKeys};
use crate::light::{now_ms, CertifiedHeader, LightClient, LightConfig, TrustAnchor};
use crate::node::NodeClient;

pub const CHAIN: &str = "test-chain";

/// A chain advanced block by block in memory.
#[derive(Clone)]
pub struct Chain {
    pub genesis: Genesis,
    pub admin: AdminKey,
    /// Every validator key the chain ever used, by public key.
    pub validator_keys: BTreeMap<PublicKey, SigningKey>,
    pub store: MemNodeStore,
    /// Committed blocks by height (height 0: the genesis header, no certificate).
    pub headers: Vec<Header>,
    pub blocks: BTreeMap<u64, CommittedBlock>,
    /// Validator sets by epoch.
    pub sets: BTreeMap<u64, ValidatorSet>,
    /// How many of the certifying set sign each block (all by default).
    pub signers: usize,
}

pub fn validator_key(seed: u8) -> SigningKey {
    SigningKey::from_seed([seed; 32])
}

impl Chain {
    /// Genesis with four validators (seeds 1..=4) and one org, `acme`.
    pub fn new() -> Self {
        let admin = AdminKey {
            org: OrgId::new("acme").unwrap(),
            signing: SigningKey::from_seed([100; 32]),
        };
        let validators: Vec<SigningKey> = (1..=4).map(validator_key).collect();
        let genesis_json = serde_json::json!({
            "chain_id": CHAIN,
            "genesis_time_ms": now_ms() - 60_000,
            "governance_threshold": 1,
            "validators": validators.iter().enumerate().map(|(i, k)| serde_json::json!({
                "key": k.public().to_hex(), "power": 1, "address": format!("/ip4/127.0.0.1/tcp/{}", 26656 + i),
            })).collect::<Vec<_>>(),
            "organisations": [{"id": "acme", "admins": [admin.public().to_hex()]}],
        });
        let genesis = Genesis::from_json(&genesis_json.to_string()).unwrap();
        let state = genesis.initial_state().unwrap();
        let mut store = MemNodeStore::new();
        store.write(&state.tree_batch);
        let mut sets = BTreeMap::new();
        sets.insert(0, state.validator_set.clone());
        Chain {
            genesis,
            admin,
            validator_keys: validators.into_iter().map(|k| (k.public(), k)).collect(),
            store,
            headers: vec![state.header],
            blocks: BTreeMap::new(),
            sets,
            signers: usize::MAX,
        }
    }

    pub fn anchor(&self) -> TrustAnchor {
        TrustAnchor::from_genesis(&self.genesis).unwrap()
    }

    pub fn height(&self) -> u64 {
        self.headers.len() as u64 - 1
    }

    /// Makes `keys` usable as validator keys of a later set.
    pub fn add_validator_keys(&mut self, keys: &[SigningKey]) {
        for k in keys {
            self.validator_keys.insert(k.public(), k.clone());
        }
    }

    /// Executes `txs` as the next block at `timestamp_ms`, certifies it and
    /// returns it. Panics when a transaction is rejected (fixtures are valid).
    pub fn commit(&mut self, txs: Vec<Transaction>, timestamp_ms: u64) -> CommittedBlock {
        let height = self.height() + 1;
        let execution = execute_block(&self.store, CHAIN, &txs, height, timestamp_ms).unwrap();
        for r in &execution.results {
            assert!(r.is_ok(), "fixture transaction rejected: {r:?}");
        }
        self.store.write(&execution.tree_batch);
        let set = execution.validator_set.clone();
        let header = Header {
            version: Header::VERSION,
            chain_id: CHAIN.into(),
            epoch: set.epoch,
            height,
            prev_hash: self.headers.last().unwrap().hash(),
            timestamp_ms,
            proposer: set.validators()[0].key,
            tx_root: tx_root(&txs.iter().map(Transaction::hash).collect::<Vec<_>>()),
            state_root: execution.state_root,
            validator_set_hash: set.hash(),
            next_validator_set_hash: execution.next_validator_set.hash(),
        };
        let next = execution.next_validator_set;
        self.sets.insert(next.epoch, next);
        let certificate = self.certify(&set, &header);
        let block = CommittedBlock {
            version: CommittedBlock::VERSION,
            block: Block {
                version: Block::VERSION,
                header: header.clone(),
                transactions: txs,
            },
            certificate,
        };
        self.headers.push(header);
        self.blocks.insert(height, block.clone());
        block
    }

    /// Precommits of the first `self.signers` validators of `set` for `header`.
    pub fn certify(&self, set: &ValidatorSet, header: &Header) -> CommitCertificate {
        let vote = VoteData {
            version: VoteData::VERSION,
            chain_id: CHAIN.into(),
            epoch: set.epoch,
            height: header.height,
            round: 0,
            kind: VoteKind::Precommit,
            block: Some(header.hash()),
        };
        let votes = set
            .validators()
            .iter()
            .take(self.signers)
            .enumerate()
            .map(|(i, v)| (i, vote.sign(&self.validator_keys[&v.key])))
            .collect();
        CommitCertificate::from_precommits(set, header.height, 0, header.hash(), votes)
    }

    pub fn certified_header(&self, height: u64) -> CertifiedHeader {
        let block = &self.blocks[&height];
        CertifiedHeader::new(block.block.header.clone(), block.certificate.clone())
    }

    /// The proof of `name` at `height`, as a node would serve it.
    pub fn device_proof(&self, name: &str, height: u64) -> DeviceProof {
        let name = DeviceName::new(name).unwrap();
        let (value, proof) = TreeState::new(&self.store, height)
            .prove(&name.state_key())
            .unwrap();
        let block = &self.blocks[&height];
        DeviceProof {
            version: DeviceProof::VERSION,
            name,
            record: value.map(|v| DeviceRecord::from_bytes(&v).unwrap()),
            proof,
            header: block.block.header.clone(),
            certificate: block.certificate.clone(),
        }
    }

    /// A device of `acme` with fresh keys, and its registration.
    pub fn new_device(&self, local: &str) -> (DeviceKeys, Transaction) {
        let keys =
            DeviceKeys::generate(DeviceName::new(&format!("acme/{local}")).unwrap()).unwrap();
        let tx = crate::txs::register_device(CHAIN, &self.admin, &keys, None, Default::default());
        (keys, tx)
    }

    /// Serves this chain's current state on a fake node: every registered
    /// name's proof at the head, every block, and every epoch handover.
    pub fn serve(&self, node: &FakeNode, names: &[&str]) {
        let head = self.height();
        for name in names {
            node.set_device_proof(name, &self.device_proof(name, head));
        }
        for (height, block) in &self.blocks {
            node.set(
                "GET",
                &format!("/v1/blocks/{height}"),
                200,
                serde_json::json!({"block": hex::encode(block.to_bytes()), "header": null})
                    .to_string(),
            );
        }
        for (epoch, set) in &self.sets {
            let handover = self.blocks.values().rev().find(|b| {
                b.block.header.epoch + 1 == *epoch && b.block.header.changes_validators()
            });
            node.set(
                "GET",
                &format!("/v1/epochs/{epoch}"),
                200,
                serde_json::json!({
                    "epoch": epoch,
                    "validator_set": hex::encode(set.to_bytes()),
                    "handover": handover.map(|b| hex::encode(b.to_bytes())),
                })
                .to_string(),
            );
        }
    }

    /// A governance transaction replacing the validators with `keys`.
    pub fn set_validators_tx(&self, keys: &[SigningKey], sequence: u64) -> Transaction {
        let mut validators: Vec<ValidatorInfo> = keys
            .iter()
            .map(|k| ValidatorInfo::new(k.public(), 1, "/ip4/127.0.0.1/tcp/1"))
            .collect();
        validators.sort_by_key(|v| v.key);
        crate::txs::governance(
            CHAIN,
            sequence,
            keyreg_registry::tx::GovernanceAction::SetValidators { validators },
        )
        .signed_by(&[&self.admin.signing])
    }
}

/// A light client over `nodes` with default policy.
pub fn light_client(chain: &Chain, nodes: &[&FakeNode]) -> LightClient {
    light_client_with(chain, nodes, LightConfig::default())
}

pub fn light_client_with(chain: &Chain, nodes: &[&FakeNode], config: LightConfig) -> LightClient {
    let clients = nodes.iter().map(|n| n.client()).collect();
    LightClient::new(chain.anchor(), clients, config)
}

type Routes = HashMap<(String, String), (u16, String)>;

/// An HTTP/1.1 responder on 127.0.0.1 answering from a route table.
#[derive(Clone)]
pub struct FakeNode {
    pub addr: SocketAddr,
    routes: Arc<Mutex<Routes>>,
    /// Bodies of POST requests received, by path.
    pub posted: Arc<Mutex<Vec<(String, String)>>>,
}

impl FakeNode {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let node = FakeNode {
            addr: listener.local_addr().unwrap(),
            routes: Arc::default(),
            posted: Arc::default(),
        };
        let serving = node.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let node = serving.clone();
                thread::spawn(move || node.answer(stream));
            }
        });
        node
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self) -> NodeClient {
        NodeClient::new(&self.url(), Duration::from_secs(5))
    }

    pub fn set(&self, method: &str, path: &str, status: u16, body: String) {
        self.routes
            .lock()
            .unwrap()
            .insert((method.into(), path.into()), (status, body));
    }

    pub fn set_device_proof(&self, name: &str, proof: &DeviceProof) {
        self.set_device_answer(name, hex::encode(proof.to_bytes()));
    }

    /// Serves `proof_hex` (anything) as the proof for `name`.
    pub fn set_device_answer(&self, name: &str, proof_hex: String) {
        self.set(
            "GET",
            &format!("/v1/devices/{name}"),
            200,
            serde_json::json!({"proof": proof_hex, "record": null, "height": 0, "state_root": ""})
                .to_string(),
        );
    }

    fn answer(&self, stream: TcpStream) {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = match (parts.next(), parts.next()) {
            (Some(m), Some(p)) => (m.to_string(), p.to_string()),
            _ => return,
        };
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if method == "POST" {
            self.posted
                .lock()
                .unwrap()
                .push((path.clone(), String::from_utf8_lossy(&body).into_owned()));
        }
        let (status, body) = self
            .routes
            .lock()
            .unwrap()
            .get(&(method, path))
            .cloned()
            .unwrap_or((
                404,
                r#"{"error":{"code":"not_found","message":"no such route"}}"#.into(),
            ));
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = stream;
        let _ = stream.write_all(response.as_bytes());
    }
}
