//! The workload every tree gets, and the clocks that time it.

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{bail, Result};
use keyreg_consensus::crypto::{hash, Domain};

use crate::trees::Key;

/// Index of the first key that is never inserted: absent-key queries use
/// indices from here on, far above anything a run inserts.
pub const ABSENT_BASE: u64 = 1 << 40;

/// The key of device `i`: BLAKE3 of its name, as keyreg derives device
/// keys (and as `tree-bench` does).
pub fn device_key(i: u64) -> Key {
    hash(
        Domain::DeviceName,
        format!("org{}/device-{i}", i % 97).as_bytes(),
    )
    .0
}

/// A `len`-byte record for device `i`, different for every generation.
pub fn record(i: u64, generation: u64, len: usize) -> Vec<u8> {
    let seed = hash(
        Domain::Payload,
        &[i.to_le_bytes(), generation.to_le_bytes()].concat(),
    );
    seed.0.iter().copied().cycle().take(len).collect()
}

/// xorshift64*: reproducible choices without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `count` distinct indices below `n`, for `count <= n / 2` (so
    /// rejection sampling needs under two draws per index on average; the
    /// loop is capped at 64 draws per index all the same).
    pub fn distinct_below(&mut self, n: u64, count: usize) -> Result<Vec<u64>> {
        if count as u64 > n / 2 {
            bail!("{count} distinct indices below {n}: more than half");
        }
        let mut seen = HashSet::with_capacity(count);
        let mut out = Vec::with_capacity(count);
        for _ in 0..count.saturating_mul(64) {
            if out.len() == count {
                break;
            }
            let i = self.below(n);
            if seen.insert(i) {
                out.push(i);
            }
        }
        if out.len() < count {
            bail!("drew only {} of {count} distinct indices", out.len());
        }
        Ok(out)
    }
}

/// CPU time of the whole process (all threads), in seconds.
pub fn process_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the call's duration.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    if status != 0 {
        return f64::NAN;
    }
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// Wall-clock and CPU time since it started.
#[derive(Clone, Copy)]
pub struct Stopwatch {
    wall: Instant,
    cpu: f64,
}

#[derive(Clone, Copy, Default, Debug)]
pub struct Elapsed {
    pub wall: f64,
    pub cpu: f64,
}

impl std::ops::AddAssign for Elapsed {
    fn add_assign(&mut self, other: Elapsed) {
        self.wall += other.wall;
        self.cpu += other.cpu;
    }
}

impl Stopwatch {
    pub fn start() -> Self {
        Stopwatch {
            wall: Instant::now(),
            cpu: process_cpu_seconds(),
        }
    }

    pub fn elapsed(&self) -> Elapsed {
        Elapsed {
            wall: self.wall.elapsed().as_secs_f64(),
            cpu: process_cpu_seconds() - self.cpu,
        }
    }
}

/// A line of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`), 0 if unknown.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

pub fn rss_bytes() -> u64 {
    status_bytes("VmRSS")
}

pub fn peak_rss_bytes() -> u64 {
    status_bytes("VmHWM")
}

/// The 1-minute load average, NaN if unknown.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_sampling_is_distinct_and_bounded() {
        let mut rng = Rng(7);
        let mut drawn = rng.distinct_below(1000, 500).unwrap();
        drawn.sort_unstable();
        drawn.dedup();
        assert_eq!(drawn.len(), 500);
        assert!(drawn.iter().all(|&i| i < 1000));
        assert!(rng.distinct_below(1000, 501).is_err());
    }

    #[test]
    fn keys_and_records_are_reproducible() {
        assert_eq!(device_key(5), device_key(5));
        assert_ne!(device_key(5), device_key(6));
        assert_eq!(record(1, 2, 300).len(), 300);
        assert_ne!(record(1, 2, 300), record(1, 3, 300));
    }
}
