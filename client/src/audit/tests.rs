use std::io::Cursor;
use std::sync::OnceLock;

use keyreg_consensus::codec::Canonical;
use keyreg_consensus::crypto::Hash;
use keyreg_registry::export::{ExportError, ExportHeader, ExportWriter, FrameError};
use keyreg_registry::testkit::certify;
use keyreg_registry::{CommittedBlock, DeviceName, Genesis, TxBody};

use super::synthetic::{synthetic_ledger, ChainBuilder};
use super::*;

const BLOCKS: usize = 12;
const TXS_PER_BLOCK: usize = 20;
/// `synthetic_ledger` changes the validator set in block BLOCKS / 2 + 1.
const SET_CHANGE_HEIGHT: u64 = BLOCKS as u64 / 2 + 1;

/// Built once: signing and certifying dominates these tests' time.
fn chain() -> &'static ChainBuilder {
    static CHAIN: OnceLock<ChainBuilder> = OnceLock::new();
    CHAIN.get_or_init(|| synthetic_ledger(BLOCKS, TXS_PER_BLOCK).unwrap())
}

fn options(genesis: &Genesis) -> AuditOptions {
    // Small windows so a run spans several of them.
    AuditOptions {
        window_blocks: 5,
        window_txs: 50,
        ..AuditOptions::new(genesis.clone())
    }
}

fn audit(source: impl BlockSource) -> Result<AuditSummary, AuditError> {
    run_audit(&options(chain().genesis()), source, &mut NoProgress)
}

fn mem_source() -> MemSource {
    chain().source().unwrap()
}

/// A source whose block at `height` was replaced by `f(block)`, re-encoded.
fn tampered(height: u64, f: impl FnOnce(&mut CommittedBlock)) -> MemSource {
    let mut source = mem_source();
    let index = height as usize - 1;
    let mut block = CommittedBlock::from_bytes(&source.blocks[index]).unwrap();
    f(&mut block);
    source.blocks[index] = block.to_bytes();
    source
}

/// A source whose block at `height` has one byte flipped: the first byte of
/// `needle` within the block's canonical encoding.
fn flipped(height: u64, needle: &[u8]) -> MemSource {
    let mut source = mem_source();
    let bytes = &mut source.blocks[height as usize - 1];
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle occurs in the block");
    bytes[at] ^= 0x01;
    source
}

fn block(height: u64) -> &'static CommittedBlock {
    &chain().blocks[height as usize - 1]
}

fn expect_divergence(result: Result<AuditSummary, AuditError>, height: u64, object: AuditObject) {
    match result {
        Err(AuditError::Divergence {
            height: h,
            object: o,
            ..
        }) if h == height && o == object => {}
        other => panic!("expected a divergence at {height} in {object}, got {other:?}"),
    }
}

#[test]
fn clean_ledger_audits_clean_with_exact_counts() {
    let summary = audit(mem_source()).unwrap();
    let mut expected = TxCounts::default();
    for b in &chain().blocks {
        for tx in &b.block.transactions {
            expected.count(&tx.body, false);
        }
    }
    assert_eq!(summary.transactions, expected);
    assert_eq!(expected.total, (BLOCKS * TXS_PER_BLOCK + 1) as u64);
    assert_eq!(expected.governance, 1);
    assert!(expected.rotate_device > 0 && expected.revoke_device > 0);
    assert_eq!(summary.blocks, BLOCKS as u64);
    assert_eq!(summary.head_hash, block(BLOCKS as u64).block.hash());
    assert_eq!(
        summary.state_root,
        block(BLOCKS as u64).block.header.state_root
    );
    assert_eq!(
        summary.devices,
        DeviceCounts {
            active: expected.register_device - expected.revoke_device,
            revoked: expected.revoke_device,
        }
    );
    assert_eq!(
        summary.organisations,
        OrgCounts {
            active: 2,
            removed: 0
        }
    );
    assert_eq!(summary.validator_set_changes, 1);
    assert_eq!(summary.epoch, 1);
    assert_eq!(
        summary.recent_validator_set_changes[0].height,
        SET_CHANGE_HEIGHT
    );
    assert_eq!(summary.resumed_from, None);
    let json = serde_json::to_string(&summary).unwrap();
    assert_eq!(
        serde_json::from_str::<AuditSummary>(&json).unwrap(),
        summary
    );
    assert!(summary.to_string().contains("devices"));
}

#[test]
fn flipped_transaction_signature_names_the_transaction() {
    let height = 3;
    let tx = &block(height).block.transactions[4];
    let signature = tx.signatures[0].signature.0;
    let result = audit(flipped(height, &signature));
    let message = result.as_ref().map_err(ToString::to_string).unwrap_err();
    assert!(
        message.starts_with("divergence at height 3: transaction 4 signature: expected"),
        "{message}"
    );
    expect_divergence(result, height, AuditObject::TransactionSignature(4));
}

#[test]
fn flipped_transaction_body_fails_its_signature() {
    let height = 2;
    let TxBody::RegisterDevice(reg) = &block(height).block.transactions[0].body else {
        panic!("the first transaction registers a device");
    };
    // The device's key sits inside the signed body.
    expect_divergence(
        audit(flipped(height, &reg.signing_key.0)),
        height,
        AuditObject::TransactionSignature(0),
    );
}

#[test]
fn reordered_transactions_break_the_tx_root() {
    let height = 4;
    let source = tampered(height, |b| b.block.transactions.swap(0, 1));
    expect_divergence(audit(source), height, AuditObject::TxRoot);
}

#[test]
fn flipped_header_link_is_caught() {
    let height = 5;
    let prev = block(height).block.header.prev_hash.0;
    expect_divergence(audit(flipped(height, &prev)), height, AuditObject::PrevHash);
}

#[test]
fn flipped_certificate_signature_is_caught() {
    let height = 6;
    let signature = block(height).certificate.signatures[1].0;
    expect_divergence(
        audit(flipped(height, &signature)),
        height,
        AuditObject::Certificate,
    );
}

#[test]
fn flipped_state_root_is_no_longer_certified() {
    let height = 3;
    let root = block(height).block.header.state_root.0;
    expect_divergence(
        audit(flipped(height, &root)),
        height,
        AuditObject::Certificate,
    );
}

#[test]
fn certified_wrong_state_root_is_caught_by_re_execution() {
    // A quorum signing a header with a state root execution does not give.
    let height = 3;
    let genesis_set = chain().genesis().validator_set().unwrap();
    let source = tampered(height, |b| {
        b.block.header.state_root = Hash([7; 32]);
        b.certificate = certify(
            &chain().genesis().chain_id,
            &genesis_set,
            &chain().net.validator_keys,
            &b.block,
        );
    });
    expect_divergence(audit(source), height, AuditObject::StateRoot);
}

#[test]
fn outgoing_set_cannot_certify_after_the_hand_over() {
    let height = SET_CHANGE_HEIGHT + 1;
    let genesis_set = chain().genesis().validator_set().unwrap();
    let source = tampered(height, |b| {
        b.certificate = certify(
            &chain().genesis().chain_id,
            &genesis_set,
            &chain().net.validator_keys,
            &b.block,
        );
    });
    expect_divergence(audit(source), height, AuditObject::Certificate);
}

#[test]
fn undecodable_block_is_a_divergence_at_its_height() {
    let mut source = mem_source();
    source.blocks[6][0] ^= 0xff;
    expect_divergence(audit(source), 7, AuditObject::BlockEncoding);
}

#[test]
fn wrong_head_and_wrong_chain_are_reported() {
    let mut source = mem_source();
    source.info.head.hash = Hash([1; 32]);
    expect_divergence(audit(source), BLOCKS as u64, AuditObject::HeadHash);

    let mut source = mem_source();
    source.info.genesis_hash = Hash([2; 32]);
    assert!(matches!(audit(source), Err(AuditError::WrongChain { .. })));

    let mut source = mem_source();
    source.blocks.truncate(4);
    assert!(matches!(
        audit(source),
        Err(AuditError::Source(SourceError::Ended { height: 5, .. }))
    ));
}

fn export_bytes() -> Vec<u8> {
    let last = block(BLOCKS as u64);
    let header = ExportHeader {
        version: ExportHeader::VERSION,
        chain_id: chain().genesis().chain_id.clone(),
        genesis_hash: chain().genesis().hash(),
        head_height: BLOCKS as u64,
        head_hash: last.block.hash(),
    };
    let mut writer = ExportWriter::new(Vec::new(), header).unwrap();
    for b in &chain().blocks {
        writer.write(b).unwrap();
    }
    writer.finish().unwrap()
}

#[test]
fn export_file_audits_like_the_node() {
    let bytes = export_bytes();
    let from_file = audit(FileSource::new(Cursor::new(bytes))).unwrap();
    assert_eq!(from_file, audit(mem_source()).unwrap());
}

#[test]
fn truncated_export_is_a_clear_error() {
    let bytes = export_bytes();
    for cut in [bytes.len() - 1, bytes.len() - 40, bytes.len() / 2] {
        let source = FileSource::new(Cursor::new(bytes[..cut].to_vec()));
        let err = audit(source).unwrap_err();
        assert!(
            matches!(
                err,
                AuditError::Source(SourceError::Export(ExportError::Frame(
                    FrameError::Truncated { .. }
                )))
            ),
            "cut at {cut}: {err}"
        );
    }
}

fn checkpoint_options(dir: &std::path::Path, every: u64) -> AuditOptions {
    AuditOptions {
        checkpoint: Some(CheckpointOptions {
            path: dir.join("audit.ckpt"),
            every,
            resume: true,
        }),
        ..options(chain().genesis())
    }
}

#[test]
fn resumed_audit_gives_the_full_summary() {
    let full = audit(mem_source()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = checkpoint_options(dir.path(), 4);
    // A first run over the chain's first 9 blocks (checkpoints at 4, 8, 9).
    let mut prefix = mem_source();
    prefix.blocks.truncate(9);
    prefix.info.head = ChainHead {
        height: 9,
        hash: block(9).block.hash(),
    };
    let first = run_audit(&opts, prefix, &mut NoProgress).unwrap();
    assert_eq!(first.head_height, 9);
    let resumed = run_audit(&opts, mem_source(), &mut NoProgress).unwrap();
    assert_eq!(resumed.resumed_from, Some(9));
    assert_eq!(
        AuditSummary {
            resumed_from: None,
            ..resumed
        },
        full
    );
    // Resuming at the head (from an export file, read past every block)
    // has nothing left to replay and agrees again.
    let file = FileSource::new(Cursor::new(export_bytes()));
    let again = run_audit(&opts, file, &mut NoProgress).unwrap();
    assert_eq!(again.resumed_from, Some(BLOCKS as u64));
    assert_eq!(again.devices, full.devices);
}

#[test]
fn tampered_checkpoint_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let opts = checkpoint_options(dir.path(), 0);
    let path = dir.path().join("audit.ckpt");
    run_audit(&opts, mem_source(), &mut NoProgress).unwrap();
    let good = load_checkpoint(&path).unwrap();

    // A record changed and the file rewritten consistently: the state no
    // longer reproduces the certified root.
    let mut cp = good.clone();
    let last = cp.leaves.len() - 1;
    cp.leaves[last].1[3] ^= 0x01;
    save_checkpoint(&path, &cp).unwrap();
    assert!(matches!(
        run_audit(&opts, mem_source(), &mut NoProgress),
        Err(AuditError::Checkpoint(CheckpointError::StateRoot { .. }))
    ));

    // A different validator set than the one the state hands over to.
    let mut cp = good.clone();
    cp.validator_set = chain().genesis().validator_set().unwrap();
    save_checkpoint(&path, &cp).unwrap();
    assert!(matches!(
        run_audit(&opts, mem_source(), &mut NoProgress),
        Err(AuditError::Checkpoint(CheckpointError::ValidatorSet { .. }))
    ));

    // A flipped byte anywhere: the checksum.
    save_checkpoint(&path, &good).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(
        run_audit(&opts, mem_source(), &mut NoProgress),
        Err(AuditError::Checkpoint(CheckpointError::Frame(
            FrameError::Checksum
        )))
    ));
}

#[test]
fn device_history_lists_register_rotate_revoke_in_order() {
    let mut chain = ChainBuilder::new().unwrap();
    let name = "acme/camera-7";
    let tx = chain.register(name).unwrap();
    let other = chain.register("globex/door-1").unwrap();
    chain.commit(vec![other, tx]).unwrap();
    let tx = chain.rotate(name).unwrap();
    chain.commit(vec![tx]).unwrap();
    chain.commit(vec![]).unwrap();
    let tx = chain.rotate(name).unwrap();
    chain.commit(vec![tx]).unwrap();
    let key_after_rotations = chain.current_key(name).unwrap().public();
    let tx = chain.revoke(name).unwrap();
    let unrelated = chain.revoke("globex/door-1").unwrap();
    chain.commit(vec![unrelated, tx]).unwrap();

    let device = DeviceName::new(name).unwrap();
    let events = device_history(
        chain.source().unwrap(),
        chain.genesis(),
        &device,
        &mut NoProgress,
    )
    .unwrap();
    let shape: Vec<_> = events
        .iter()
        .map(|e| (e.kind, e.height, e.index, e.key_version))
        .collect();
    assert_eq!(
        shape,
        vec![
            (HistoryKind::Registered, 1, 1, 0),
            (HistoryKind::Rotated, 2, 0, 1),
            (HistoryKind::Rotated, 4, 0, 2),
            (HistoryKind::Revoked, 5, 1, 2),
        ]
    );
    assert!(events.iter().all(HistoryEvent::inclusion_verifies));
    assert_eq!(events[3].signing_key, key_after_rotations);
    assert!(events[3].revoked);
    for e in &events {
        let b = &chain.blocks[e.height as usize - 1];
        assert_eq!(e.header, b.block.header);
        assert_eq!(e.tx_hash, b.block.transactions[e.index as usize].hash());
    }
    let unknown = DeviceName::new("acme/never").unwrap();
    let none = device_history(
        chain.source().unwrap(),
        chain.genesis(),
        &unknown,
        &mut NoProgress,
    )
    .unwrap();
    assert!(none.is_empty());
}

#[test]
fn progress_sees_every_block() {
    struct Count(u64, u64);
    impl Progress for Count {
        fn start(&mut self, _: u64, _: u64) {}
        fn advance(&mut self, _: u64, txs: u64) {
            self.0 += 1;
            self.1 += txs;
        }
        fn finish(&mut self) {}
    }
    let mut count = Count(0, 0);
    let summary = run_audit(&options(chain().genesis()), mem_source(), &mut count).unwrap();
    assert_eq!(count.0, summary.blocks);
    assert_eq!(count.1, summary.transactions.total);
}

/// Serves the chain's `/v1/status` and `/v1/blocks` pages over HTTP/1.1,
/// one request per connection, until asked for `/quit`.
fn serve_chain(listener: std::net::TcpListener, source: MemSource) {
    use std::io::{BufRead, BufReader, Write};
    for stream in listener.incoming() {
        let mut stream = stream.unwrap();
        let mut request_line = String::new();
        BufReader::new(&stream)
            .read_line(&mut request_line)
            .unwrap();
        let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
        let body = if path == "/v1/status" {
            serde_json::json!({
                "chain_id": source.info.chain_id,
                "genesis_hash": source.info.genesis_hash,
                "height": source.info.head.height,
                "head_hash": source.info.head.hash,
                "state_root": Hash::ZERO,
                "epoch": 0, "peers": 0, "syncing": false, "is_validator": false, "mempool": 0,
            })
        } else if let Some(query) = path.strip_prefix("/v1/blocks?") {
            let param = |name: &str| -> usize {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(name))
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            let (from, limit) = (param("from="), param("limit="));
            assert!(limit <= MAX_PAGE_BLOCKS);
            let page: Vec<String> = source
                .blocks
                .iter()
                .skip(from - 1)
                .take(limit)
                .map(hex::encode)
                .collect();
            let next = (from + page.len() <= source.blocks.len()).then_some(from + page.len());
            serde_json::json!({ "blocks": page, "next": next })
        } else {
            return;
        };
        let body = body.to_string();
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
    }
}

#[test]
fn http_source_audits_a_node() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || serve_chain(listener, mem_source()));
    let source = HttpSource::new(&url, std::time::Duration::from_secs(10));
    let result = audit(source);
    // Stop the server whatever the outcome.
    let _ = ureq::get(&format!("{url}/quit")).call();
    server.join().unwrap();
    assert_eq!(result.unwrap(), audit(mem_source()).unwrap());
}
