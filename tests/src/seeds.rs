//! Real, valid encodings from the [`fixture`] chain: the fuzz corpus's
//! seeds. `cargo run --release -p keyreg-tests --bin fuzz-seeds` writes them
//! to `tests/fuzz/corpus/<target>/seed-<name>`.

use keyreg_client::light::CertifiedHeader;
use keyreg_client::session::Hello;
use keyreg_consensus::certificate::{VoteData, VoteKind};
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::engine::proposer_index;
use keyreg_consensus::messages::{Evidence, Message, ProposalData, Signed, SignedProposal};
use keyreg_registry::wire::{
    encode_tx_batch, CompactBlock, SyncQuery, SyncReply, SyncRequest, SyncResponse,
};
use serde_json::json;

use crate::fixture::{fixture, ACTIVE, CHAIN, PROOF_HEIGHT, REVOKED};
use crate::fuzz::ENGINE_HEIGHT;

/// One seed: the target it belongs to, a file name, the bytes.
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
}

fn seed(target: &'static str, name: impl Into<String>, bytes: Vec<u8>) -> Seed {
    Seed {
        target,
        name: name.into(),
        bytes,
    }
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let f = fixture();
    let mut out = Vec::new();

    for (i, tx) in f.transactions.iter().enumerate() {
        out.push(seed("transaction", format!("tx-{i}"), tx.to_bytes()));
    }

    // Consensus: a proposal of the fixture's height-4 block by its proposer,
    // votes for it and for nil, and evidence of a double vote.
    let set = &f.next_set;
    let key_of = |index: usize| {
        let key = set.validators()[index].key;
        f.next_keys
            .iter()
            .find(|k| k.public() == key)
            .expect("every epoch-1 validator's key is in the fixture")
    };
    let proposer = key_of(proposer_index(set, ENGINE_HEIGHT, 0));
    let value = CompactBlock::of(&f.proposal);
    let proposal = ProposalData {
        version: ProposalData::VERSION,
        chain_id: CHAIN.into(),
        epoch: set.epoch,
        height: ENGINE_HEIGHT,
        round: 0,
        pol_round: None,
        value_hash: f.proposal.hash(),
    };
    let proposal = Message::proposal(SignedProposal {
        signed: Signed::sign(proposal, proposer),
        value,
    });
    out.push(seed("consensus_message", "proposal", proposal.to_bytes()));
    let vote = |kind, block, signer| {
        let data = VoteData {
            version: VoteData::VERSION,
            chain_id: CHAIN.into(),
            epoch: set.epoch,
            height: ENGINE_HEIGHT,
            round: 0,
            kind,
            block,
        };
        Signed::sign(data, key_of(signer))
    };
    let block_hash = Some(f.proposal.hash());
    let prevote = vote(VoteKind::Prevote, block_hash, 1);
    let nil_prevote = vote(VoteKind::Prevote, None, 1);
    let precommit = vote(VoteKind::Precommit, block_hash, 2);
    for (label, v) in [
        ("prevote", &prevote),
        ("prevote-nil", &nil_prevote),
        ("precommit", &precommit),
    ] {
        out.push(seed(
            "consensus_message",
            label,
            Message::<CompactBlock>::vote(v.clone()).to_bytes(),
        ));
    }
    let evidence = Evidence::conflicting_votes(prevote, nil_prevote);
    out.push(seed("consensus_message", "evidence", evidence.to_bytes()));

    for (i, proof) in f.proofs.iter().enumerate() {
        out.push(seed(
            "state_proof",
            format!("proof-{i}"),
            proof.proof.to_bytes(),
        ));
        out.push(seed("device_proof", format!("proof-{i}"), proof.to_bytes()));
    }
    out.push(seed(
        "state_proof",
        "proof-0-json",
        serde_json::to_vec(&f.proofs[0].proof).expect("a proof serialises"),
    ));

    for block in &f.blocks {
        let height = block.block.header.height;
        out.push(seed(
            "certificate",
            format!("cert-{height}"),
            block.certificate.to_bytes(),
        ));
        out.push(seed(
            "committed_block",
            format!("block-{height}"),
            block.to_bytes(),
        ));
    }
    out.push(seed("certificate", "set-0", f.set.to_bytes()));
    out.push(seed("certificate", "set-1", f.next_set.to_bytes()));
    out.push(seed(
        "certificate",
        "certified-header-2",
        f.certified_header(PROOF_HEIGHT).to_bytes(),
    ));
    out.push(seed("committed_block", "proposal-4", f.proposal.to_bytes()));

    let hex_of = |bytes: Vec<u8>| hex::encode(bytes);
    let answers = [
        (
            0u8,
            "status",
            json!({"chain_id": CHAIN, "genesis_hash": f.net.genesis.hash().to_hex(),
                "height": 3, "head_hash": f.block(3).block.hash().to_hex(),
                "state_root": f.block(3).block.header.state_root.to_hex(), "epoch": 1,
                "validator_set": hex_of(f.next_set.to_bytes()), "peers": 3, "syncing": false,
                "is_validator": true, "mempool": 0}),
        ),
        (
            1,
            "device",
            json!({"proof": hex_of(f.proofs[0].to_bytes()), "record": null,
                "height": PROOF_HEIGHT, "state_root": f.proofs[0].header.state_root.to_hex()}),
        ),
        (
            2,
            "epoch-1",
            json!({"epoch": 1, "validator_set": hex_of(f.next_set.to_bytes()),
                "handover": hex_of(f.block(3).to_bytes())}),
        ),
        (
            3,
            "block-2",
            json!({"block": hex_of(f.block(2).to_bytes()), "header": null}),
        ),
        (
            4,
            "blocks",
            json!({"blocks": [hex_of(f.block(1).to_bytes()), hex_of(f.block(2).to_bytes())],
                "next": 3}),
        ),
        (
            5,
            "submitted",
            json!({"hash": f.transactions[0].hash().to_hex(), "status": "pending"}),
        ),
        (
            6,
            "tx-status",
            json!({"hash": f.transactions[0].hash().to_hex(), "status": "committed",
                "height": 1, "index": 0}),
        ),
        (
            7,
            "error",
            json!({"error": {"code": "busy", "message": "mempool full"}}),
        ),
    ];
    for (endpoint, label, body) in answers {
        let mut bytes = vec![endpoint];
        bytes.extend(serde_json::to_vec(&body).expect("JSON serialises"));
        out.push(seed("node_answer", label, bytes));
    }

    let hello = |name: &str, staple: Option<Vec<u8>>, header: Option<CertifiedHeader>| Hello {
        version: Hello::VERSION,
        name: name.to_string(),
        staple,
        newest_header: header.map(|h| h.to_bytes()),
    };
    let staple = |i: usize| Some(f.proofs[i].to_bytes());
    for (label, h) in [
        (
            "active-stapled",
            hello(ACTIVE, staple(0), Some(f.certified_header(PROOF_HEIGHT))),
        ),
        ("revoked-stapled", hello(REVOKED, staple(1), None)),
        ("no-staple", hello(ACTIVE, None, None)),
    ] {
        out.push(seed("session_hello", label, h.to_bytes()));
    }

    // The initiator's first handshake message: a frame holding an ephemeral
    // X25519 key and no payload; then the same followed by a second frame.
    let ephemeral = crate::fixture::Fixture::agreement_key("fuzz/ephemeral");
    let mut first = vec![0u8, 32];
    first.extend_from_slice(&ephemeral);
    out.push(seed("session_handshake", "first-message", first.clone()));
    let mut two = first;
    two.extend_from_slice(&[0, 80]);
    two.extend_from_slice(&[7u8; 80]);
    out.push(seed("session_handshake", "two-frames", two));

    out.push(seed(
        "genesis",
        "fixture",
        f.net.genesis.to_json().into_bytes(),
    ));

    // Block sync: both requests, and both answers with the fixture's chain.
    let request = |query| SyncRequest {
        version: SyncRequest::VERSION,
        query,
    };
    let response = |reply| SyncResponse {
        version: SyncResponse::VERSION,
        reply,
    };
    out.push(seed(
        "sync_message",
        "status-request",
        request(SyncQuery::Status).to_bytes(),
    ));
    out.push(seed(
        "sync_message",
        "blocks-request",
        request(SyncQuery::Blocks { from: 1, limit: 64 }).to_bytes(),
    ));
    let proposal_hashes = f.proposal.tx_hashes();
    out.push(seed(
        "sync_message",
        "transactions-request",
        request(SyncQuery::Transactions {
            hashes: proposal_hashes,
        })
        .to_bytes(),
    ));
    out.push(seed(
        "sync_message",
        "transactions-response",
        response(SyncReply::Transactions(f.proposal.transactions.clone())).to_bytes(),
    ));
    let head = f.blocks.last().expect("the fixture has blocks");
    out.push(seed(
        "sync_message",
        "status-response",
        response(SyncReply::Status {
            height: head.block.header.height,
            head_hash: head.block.hash(),
        })
        .to_bytes(),
    ));
    out.push(seed(
        "sync_message",
        "blocks-response",
        response(SyncReply::Blocks(f.blocks.clone())).to_bytes(),
    ));

    // A gossiped batch of the fixture's transactions.
    let batch: Vec<Vec<u8>> = f.transactions.iter().map(Canonical::to_bytes).collect();
    out.push(seed(
        "tx_batch",
        "fixture-transactions",
        encode_tx_batch(&batch),
    ));

    // HTTP: a submission body, a page query, a device path, a hash path
    // (the first byte picks the part, see `fuzz::http_request`).
    let tx = f
        .transactions
        .first()
        .expect("the fixture has transactions");
    let http = [
        (
            0u8,
            "submit",
            json!({"tx": hex_of(tx.to_bytes())}).to_string(),
        ),
        (1, "page-query", "from=2&limit=100".to_string()),
        (2, "device-path", ACTIVE.to_string()),
        (3, "tx-hash", tx.hash().to_hex()),
        (
            4,
            "submit-batch",
            json!({"txs": f.transactions.iter().map(|tx| hex_of(tx.to_bytes())).collect::<Vec<_>>()})
                .to_string(),
        ),
    ];
    for (part, label, text) in http {
        let mut bytes = vec![part];
        bytes.extend_from_slice(text.as_bytes());
        out.push(seed("http_request", label, bytes));
    }
    out
}
