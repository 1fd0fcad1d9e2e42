//! Ed25519 verification rates on this machine: the bound every throughput
//! figure of keyreg is compared with (see docs/benchmarks.md).
//!
//! `cargo run --release -p keyreg-consensus --bin sig-bench -- [--seconds S] [--validators N] [--sigs-per-tx K]`

use std::time::{Duration, Instant};

use curve25519_dalek::edwards::CompressedEdwardsY;
use keyreg_consensus::crypto::{
    signed_message, BatchVerifier, Domain, PublicKey, Signature, SigningKey,
};

struct Args {
    seconds: f64,
    validators: u64,
    sigs_per_tx: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 2.0,
        validators: 4,
        sigs_per_tx: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--seconds" => args.seconds = value.parse().map_err(|e| bad(&e))?,
            "--validators" => args.validators = value.parse().map_err(|e| bad(&e))?,
            "--sigs-per-tx" => args.sigs_per_tx = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

/// The vector unit curve25519-dalek picks at run time on this CPU, among
/// the backends this build compiled in (`.cargo/config.toml` adds IFMA; a
/// `curve25519_dalek_backend` cfg in RUSTFLAGS replaces that choice).
fn vector_unit() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(curve25519_dalek_backend = "avx512")
            && std::is_x86_feature_detected!("avx512ifma")
            && std::is_x86_feature_detected!("avx512vl")
        {
            return "AVX-512 IFMA";
        }
        let serial_only = cfg!(any(
            curve25519_dalek_backend = "serial",
            curve25519_dalek_backend = "fiat"
        ));
        if !serial_only && std::is_x86_feature_detected!("avx2") {
            return "AVX2";
        }
    }
    "serial arithmetic"
}

/// Distinct keys and messages, as a block of transactions would have.
fn corpus(n: usize) -> Vec<(PublicKey, Vec<u8>, Signature)> {
    (0..n)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let key = SigningKey::from_seed(seed);
            let msg =
                format!("transaction {i} with a body of typical length ........").into_bytes();
            let sig = key.sign(Domain::Transaction, &msg);
            (key.public(), msg, sig)
        })
        .collect()
}

/// Runs `work` (which verifies `per_call` signatures) repeatedly for about
/// `seconds` on `threads` threads; returns verifications per second.
fn rate(threads: usize, seconds: f64, per_call: usize, work: &(dyn Fn() + Sync)) -> f64 {
    let deadline = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let calls: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut calls = 0usize;
                    while start.elapsed() < deadline {
                        work();
                        calls += 1;
                    }
                    calls
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    (calls * per_call) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sig-bench: {e}");
            std::process::exit(2);
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let items = corpus(1024);
    let single = |n: usize| {
        let items = &items[..n];
        move || {
            for (k, m, s) in items {
                assert!(k.verify(Domain::Transaction, m, s).is_ok());
            }
        }
    };
    let batch = |n: usize| {
        let items = &items[..n];
        move || {
            let mut b = BatchVerifier::with_capacity(n);
            for (k, m, s) in items {
                b.queue(*k, Domain::Transaction, m, *s);
            }
            assert!(b.verify().is_ok());
        }
    };
    println!(
        "Ed25519 (ZIP-215, keyreg's verifier on curve25519-dalek 5; {}) on {cores} cores, {:.1}s per figure",
        vector_unit(),
        args.seconds
    );
    let mut best_batch = 0f64;
    for threads in [1, cores.max(2)] {
        let s = rate(threads, args.seconds, 64, &single(64));
        println!("  single verify, {threads} thread(s): {s:>10.0} sig/s");
        for n in [16, 64, 256, 1024] {
            let b = rate(threads, args.seconds, n, &batch(n));
            best_batch = best_batch.max(b);
            println!("  batch of {n:>4}, {threads} thread(s):  {b:>10.0} sig/s");
        }
    }
    // What a batch spends most on, point decompression (every A and R),
    // one point at a time as upstream curve25519-dalek has it and with the
    // vendored decompress_batch (consensus/vendor/README.md).
    let points: Vec<CompressedEdwardsY> = items
        .iter()
        .flat_map(|(k, _, s)| {
            let mut r = [0u8; 32];
            r.copy_from_slice(&s.0[..32]);
            [CompressedEdwardsY(k.0), CompressedEdwardsY(r)]
        })
        .collect();
    let one_by_one = || assert!(points.iter().all(|p| p.decompress().is_some()));
    let batched = || {
        let decompressed = CompressedEdwardsY::decompress_batch(&points);
        assert!(decompressed.iter().all(Option::is_some));
    };
    let one = rate(1, args.seconds, points.len(), &one_by_one);
    let many = rate(1, args.seconds, points.len(), &batched);
    println!(
        "  point decompression, 1 thread: {one:>10.0} points/s one at a time, {many:>10.0} in batches ({:.2}x)",
        many / one
    );
    // The verifier keyreg used before (the ZIP-215 reference implementation,
    // on curve25519-dalek-ng's serial arithmetic), for comparison.
    let reference = || {
        let mut b = ed25519_consensus::batch::Verifier::new();
        for (k, m, s) in &items {
            let message = signed_message(Domain::Transaction, m);
            b.queue((
                ed25519_consensus::VerificationKeyBytes::from(k.0),
                ed25519_consensus::Signature::from(s.0),
                &message,
            ));
        }
        assert!(b
            .verify(<rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(7))
            .is_ok());
    };
    for threads in [1, cores.max(2)] {
        let r = rate(threads, args.seconds, items.len(), &reference);
        println!("  for comparison, ed25519-consensus 2.1, batch of 1024, {threads} thread(s): {r:>10.0} sig/s");
    }
    let per_tx = (args.validators * args.sigs_per_tx) as f64;
    println!(
        "commit-throughput bound ({} validators x {} signatures per transaction on one machine): {:.0} tx/s",
        args.validators,
        args.sigs_per_tx,
        best_batch / per_tx
    );
}
