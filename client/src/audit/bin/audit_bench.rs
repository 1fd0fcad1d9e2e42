//! Audit throughput on a synthetic signed ledger, next to this machine's
//! Ed25519 verification rates.
//!
//! `cargo run --release -p keyreg-client --bin audit-bench -- --blocks 200 --txs-per-block 200`

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use keyreg_client::audit::synthetic::synthetic_ledger;
use keyreg_client::audit::{run_audit, AuditOptions, NoProgress};
use keyreg_consensus::crypto::{BatchVerifier, Domain, SigningKey};
use keyreg_registry::{check_stateless_all, Transaction, TxBody};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 200)]
    blocks: usize,
    #[arg(long, default_value_t = 200)]
    txs_per_block: usize,
    /// Blocks per signature batch window.
    #[arg(long, default_value_t = AuditOptions::DEFAULT_WINDOW_BLOCKS)]
    window_blocks: usize,
    /// Transactions that close a window early.
    #[arg(long, default_value_t = AuditOptions::DEFAULT_WINDOW_TXS)]
    window_txs: usize,
}

/// Signatures a transaction carries: its signers' and its registrations' proofs of possession.
fn signatures(tx: &Transaction) -> usize {
    let proofs = match &tx.body {
        TxBody::RegisterDevice(_) => 1,
        TxBody::RegisterLot { devices, .. } => devices.len(),
        _ => 0,
    };
    tx.signatures.len() + proofs
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Single-signature and 256-signature-batch verification rates (one core).
fn ed25519_rates() -> (f64, f64) {
    const N: usize = 4096;
    const BATCH: usize = 256;
    let items: Vec<_> = (0..N)
        .map(|i| {
            let key = SigningKey::from_seed([(i % 251) as u8 + 1; 32]);
            let msg = (i as u64).to_le_bytes();
            (key.public(), msg, key.sign(Domain::Transaction, &msg))
        })
        .collect();
    let start = Instant::now();
    for (key, msg, sig) in &items {
        assert!(key.verify(Domain::Transaction, msg, sig).is_ok());
    }
    let single = per_sec(N, start.elapsed());
    let start = Instant::now();
    for chunk in items.chunks(BATCH) {
        let mut batch = BatchVerifier::with_capacity(chunk.len());
        for (key, msg, sig) in chunk {
            batch.queue(*key, Domain::Transaction, msg, *sig);
        }
        assert!(batch.verify().is_ok());
    }
    (single, per_sec(N, start.elapsed()))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let start = Instant::now();
    let chain = synthetic_ledger(args.blocks, args.txs_per_block)?;
    let built = start.elapsed();
    let txs: Vec<&Transaction> = chain
        .blocks
        .iter()
        .flat_map(|b| &b.block.transactions)
        .collect();
    let sig_count: usize = txs.iter().map(|tx| signatures(tx)).sum();
    println!(
        "ledger: {} blocks, {} transactions, {} signatures (built in {:.1?})",
        chain.blocks.len(),
        txs.len(),
        sig_count,
        built
    );

    let (single, batch) = ed25519_rates();
    println!(
        "ed25519 on one core: {single:.0} verifications/s single, {batch:.0}/s in batches of 256"
    );

    // The signature pass alone: the registry's stateless checks of every
    // transaction, in one thread, in window-sized batches.
    let all: Vec<Transaction> = txs.iter().map(|tx| (*tx).clone()).collect();
    let start = Instant::now();
    for chunk in all.chunks(args.window_txs.max(1)) {
        let failed = check_stateless_all(&chain.genesis().chain_id, chunk)
            .iter()
            .filter(|r| r.is_err())
            .count();
        assert_eq!(failed, 0);
    }
    let stateless = start.elapsed();
    println!(
        "stateless checks alone (1 thread): {:.2?}, {:.0} tx/s",
        stateless,
        per_sec(all.len(), stateless)
    );

    for (label, window_blocks) in [
        ("per-block batches", 1),
        ("cross-block windows", args.window_blocks),
    ] {
        let opts = AuditOptions {
            window_blocks,
            window_txs: args.window_txs,
            ..AuditOptions::new(chain.genesis().clone())
        };
        let start = Instant::now();
        let summary = run_audit(&opts, chain.source()?, &mut NoProgress)?;
        let took = start.elapsed();
        assert_eq!(summary.transactions.total as usize, txs.len());
        let tx_rate = per_sec(txs.len(), took);
        let sig_rate = per_sec(sig_count, took);
        println!(
            "audit, {label} (window {window_blocks} blocks / {} txs): {took:.2?}: {:.0} blocks/s, {tx_rate:.0} tx/s, \
             {sig_rate:.0} signatures/s = {:.2}x single-core single, {:.2}x single-core batch",
            args.window_txs,
            per_sec(chain.blocks.len(), took),
            sig_rate / single,
            sig_rate / batch,
        );
    }
    Ok(())
}
