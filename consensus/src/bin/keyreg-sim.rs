//! keyreg-sim: runs the deterministic consensus simulator over a range of
//! seeds and reports safety/liveness violations.
//!
//! ```text
//! keyreg-sim [--seeds N] [--first-seed S] [--validators N] [--byzantine B]
//!            [--heights H] [--no-partitions] [--no-crashes] [--loss PERMILLE]
//!            [--duplicate PERMILLE] [--max-delay MS] [--fault-phase MS]
//!            [--behaviors silent,equivocate,double-vote,bad-signatures,twins]
//!            [--liveness-budget MS] [--epoch-length H] [--rebroadcast MS] [--verbose] [--trace]
//!            [--unsafe-ignore-lock]   (only with feature `fault-injection`)
//! ```
//! Ends with `seeds: N, violations: V`; exits 1 if V > 0. A failing seed is
//! printed with the command that replays it exactly.

use std::process::ExitCode;
use std::time::Instant;

use keyreg_consensus::sim::{run, Behavior, SimConfig};

const USAGE: &str = "usage: keyreg-sim [--seeds N] [--first-seed S] [--validators N] \
[--byzantine B] [--behaviors silent,equivocate,double-vote,bad-signatures,twins] [--heights H] [--no-partitions] [--no-crashes] [--loss PERMILLE] \
[--duplicate PERMILLE] [--max-delay MS] [--fault-phase MS] [--liveness-budget MS] \
[--epoch-length H] [--rebroadcast MS] [--verbose] [--trace] [--unsafe-ignore-lock]";

struct Options {
    seeds: u64,
    first_seed: u64,
    verbose: bool,
    sim: SimConfig,
    /// The flags that shape a run, echoed in replay commands.
    replay_flags: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        seeds: 100,
        first_seed: 0,
        verbose: false,
        sim: SimConfig::default(),
        replay_flags: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let raw = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            raw.parse::<u64>()
                .map_err(|_| format!("{name}: not a number: {raw}"))
        };
        match flag.as_str() {
            "--seeds" => o.seeds = value(flag)?,
            "--first-seed" => o.first_seed = value(flag)?,
            "--verbose" => o.verbose = true,
            "--trace" => o.sim.trace = true,
            "--help" | "-h" => return Err(USAGE.into()),
            "--no-partitions" => {
                o.sim.partitions = false;
                o.replay_flags.push(flag.clone());
            }
            "--behaviors" => {
                let list = it.next().ok_or("--behaviors needs a value")?;
                for name in list.split(',') {
                    o.sim.behaviors.push(match name {
                        "silent" => Behavior::Silent,
                        "equivocate" => Behavior::EquivocatingProposer,
                        "double-vote" => Behavior::DoubleVoter,
                        "bad-signatures" => Behavior::BadSignatures,
                        "twins" => Behavior::Twin,
                        other => return Err(format!("unknown behavior {other}")),
                    });
                }
                o.replay_flags.push(format!("--behaviors {list}"));
            }
            "--no-crashes" => {
                o.sim.crashes = false;
                o.replay_flags.push(flag.clone());
            }
            "--unsafe-ignore-lock" => {
                if !cfg!(feature = "fault-injection") {
                    return Err("--unsafe-ignore-lock needs --features fault-injection".into());
                }
                o.sim.engine.unsafe_ignore_lock = true;
                o.replay_flags.push(flag.clone());
            }
            "--validators" | "--byzantine" | "--heights" | "--loss" | "--duplicate"
            | "--max-delay" | "--fault-phase" | "--liveness-budget" | "--epoch-length"
            | "--rebroadcast" => {
                let v = value(flag)?;
                match flag.as_str() {
                    "--validators" => {
                        if !(1..=200).contains(&v) {
                            return Err("--validators must be 1..=200".into());
                        }
                        o.sim.validators = Some(v as usize);
                    }
                    "--byzantine" => o.sim.byzantine = Some(v as usize),
                    "--heights" => o.sim.heights = v,
                    "--loss" => o.sim.loss_permille = v.min(1000),
                    "--duplicate" => o.sim.duplicate_permille = v.min(1000),
                    "--max-delay" => o.sim.max_delay_ms = v.max(1),
                    "--fault-phase" => o.sim.fault_phase_ms = v,
                    "--liveness-budget" => o.sim.liveness_budget_ms = v,
                    "--rebroadcast" => o.sim.engine.rebroadcast_interval_ms = v.max(1),
                    _ => o.sim.epoch_length = v.max(1),
                }
                o.replay_flags.push(format!("{flag} {v}"));
            }
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let mut violations = 0u64;
    let mut events = 0u64;
    for seed in options.first_seed..options.first_seed.saturating_add(options.seeds) {
        let report = run(seed, &options.sim);
        events += report.events;
        if options.verbose {
            println!(
                "seed {seed}: n={} byzantine={:?} heights>={} (target {}) sim={}ms msgs={} evidence={}",
                report.validators,
                report.byzantine,
                report.min_honest_height,
                report.target_height,
                report.sim_time_ms,
                report.messages_delivered,
                report.evidence
            );
        }
        if !report.violations.is_empty() {
            violations += 1;
            println!(
                "seed {seed} FAILED (n={}, byzantine={:?}):",
                report.validators, report.byzantine
            );
            for v in &report.violations {
                println!("  {v}");
            }
            let mut replay = format!(
                "  replay: cargo run --release -p keyreg-consensus --bin keyreg-sim -- --seeds 1 --first-seed {seed}"
            );
            for f in &options.replay_flags {
                replay.push(' ');
                replay.push_str(f);
            }
            if options.sim.engine.unsafe_ignore_lock {
                replay = replay.replace(
                    "-p keyreg-consensus",
                    "-p keyreg-consensus --features fault-injection",
                );
            }
            println!("{replay}");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{:.1} seeds/s, {:.0} events/s",
        options.seeds as f64 / secs.max(1e-9),
        events as f64 / secs.max(1e-9)
    );
    println!("seeds: {}, violations: {violations}", options.seeds);
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
