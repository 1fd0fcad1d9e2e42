//! Two threads: the verifier fetches and decodes a window of blocks and
//! verifies every transaction signature in it through one batch, while the
//! executor (the calling thread) checks and re-executes the previous window.
//! A one-window channel bounds how far the verifier runs ahead.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use keyreg_consensus::codec::Canonical;
use keyreg_registry::{check_stateless_all, CommittedBlock};

use super::checkpoint::save_checkpoint;
use super::progress::Progress;
use super::replay::{PreparedBlock, Replay};
use super::source::{BlockSource, SourceError, SourceInfo, MAX_PAGE_BLOCKS};
use super::{AuditError, AuditObject, AuditOptions};

enum Feed {
    Window(Vec<PreparedBlock>),
    /// Everything up to the source's head was sent.
    End,
    /// The next block could not be delivered (after every block before it).
    Failed(AuditError),
}

/// Replays `source` from `replay`'s head to `info.head` and checks the head.
pub(crate) fn run(
    opts: &AuditOptions,
    source: impl BlockSource,
    info: &SourceInfo,
    mut replay: Replay,
    progress: &mut dyn Progress,
) -> Result<Replay, AuditError> {
    let first = replay.height() + 1;
    progress.start(replay.height(), info.head.height);
    std::thread::scope(|scope| {
        let (sender, receiver) = sync_channel(1);
        let chain_id = info.chain_id.as_str();
        let head = info.head.height;
        let verifier = scope.spawn(move || feed(source, chain_id, first, head, opts, sender));
        // `consume` owns the receiver: when it returns early the verifier's
        // next send fails and it stops, so the join below cannot hang.
        let consumed = consume(&mut replay, receiver, opts, progress);
        let joined = verifier.join();
        consumed?;
        joined.map_err(|_| AuditError::VerifierPanicked)
    })?;
    progress.finish();
    let found = info.head.hash;
    if replay.height() != info.head.height || replay.head_hash() != found {
        return Err(AuditError::divergence(
            info.head.height,
            AuditObject::HeadHash,
            format!("{} at height {}", replay.head_hash(), replay.height()),
            found,
        ));
    }
    Ok(replay)
}

fn consume(
    replay: &mut Replay,
    receiver: Receiver<Feed>,
    opts: &AuditOptions,
    progress: &mut dyn Progress,
) -> Result<(), AuditError> {
    for feed in receiver {
        match feed {
            Feed::Window(blocks) => {
                for block in blocks {
                    let txs = block.committed.block.transactions.len() as u64;
                    replay.audit_block(block)?;
                    progress.advance(replay.height(), txs);
                    if let Some(cp) = &opts.checkpoint {
                        if cp.every > 0 && replay.height().is_multiple_of(cp.every) {
                            save_checkpoint(&cp.path, &replay.checkpoint()?)?;
                        }
                    }
                }
            }
            Feed::End => return Ok(()),
            Feed::Failed(e) => return Err(e),
        }
    }
    // The sender went away without End: the verifier panicked.
    Err(AuditError::VerifierPanicked)
}

/// The verifier thread: windows of decoded, signature-checked blocks.
fn feed(
    mut source: impl BlockSource,
    chain_id: &str,
    mut next: u64,
    head: u64,
    opts: &AuditOptions,
    out: SyncSender<Feed>,
) {
    let max_blocks = opts.window_blocks.max(1);
    let max_txs = opts.window_txs.max(1);
    loop {
        let window_start = next;
        let mut window = Vec::new();
        let mut txs = 0usize;
        let mut stop = None;
        while stop.is_none() && window.len() < max_blocks && txs < max_txs {
            let want = (max_blocks - window.len()).min(MAX_PAGE_BLOCKS);
            match source.fetch(next, want) {
                Err(e) => stop = Some(Feed::Failed(e.into())),
                Ok(batch) if batch.len() > want => {
                    stop = Some(Feed::Failed(
                        SourceError::TooMany {
                            asked: want,
                            got: batch.len(),
                        }
                        .into(),
                    ))
                }
                Ok(batch) if batch.is_empty() => {
                    stop = Some(if next == head + 1 {
                        Feed::End
                    } else {
                        Feed::Failed(SourceError::Ended { height: next, head }.into())
                    })
                }
                Ok(batch) => {
                    for bytes in batch {
                        match CommittedBlock::from_bytes(&bytes) {
                            Ok(block) => {
                                txs += block.block.transactions.len();
                                window.push(block);
                                next += 1;
                            }
                            Err(e) => {
                                stop = Some(Feed::Failed(AuditError::divergence(
                                    next,
                                    AuditObject::BlockEncoding,
                                    "a canonical committed block",
                                    e,
                                )));
                                break;
                            }
                        }
                    }
                }
            }
        }
        if !window.is_empty()
            && out
                .send(Feed::Window(prepare(chain_id, window_start, window)))
                .is_err()
        {
            return;
        }
        if let Some(last) = stop {
            // The executor may have stopped already; nothing else to tell it.
            let _ = out.send(last);
            return;
        }
    }
}

/// Hashes every transaction and runs the stateless checks of the whole
/// window with one batch verification.
fn prepare(
    chain_id: &str,
    first_height: u64,
    mut blocks: Vec<CommittedBlock>,
) -> Vec<PreparedBlock> {
    let tx_hashes: Vec<_> = blocks.iter().map(|b| b.block.tx_hashes()).collect();
    // Move the transactions into one slice for the registry's batch check,
    // then hand each block its own back.
    let counts: Vec<usize> = blocks.iter().map(|b| b.block.transactions.len()).collect();
    let mut all = Vec::with_capacity(counts.iter().sum());
    for b in &mut blocks {
        all.append(&mut b.block.transactions);
    }
    let mut stateless = check_stateless_all(chain_id, &all);
    let mut per_block = Vec::with_capacity(blocks.len());
    for (block, count) in blocks.iter_mut().zip(&counts).rev() {
        let split = all.len() - count;
        block.block.transactions = all.split_off(split);
        per_block.push(stateless.split_off(split));
    }
    per_block.reverse();
    blocks
        .into_iter()
        .zip(tx_hashes)
        .zip(per_block)
        .zip(first_height..)
        .map(
            |(((committed, tx_hashes), stateless), height)| PreparedBlock {
                height,
                committed,
                tx_hashes,
                stateless,
            },
        )
        .collect()
}
