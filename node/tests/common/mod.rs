//! Helpers shared by the node's integration tests (each test binary uses a
//! subset, hence the `dead_code` allowance).
#![allow(dead_code)]

use std::path::Path;

use keyreg_consensus::SigningKey;
use serde_json::Value;

/// A base port with `count` consecutive free ports on loopback. `stride`
/// differs per test binary so binaries started together probe different
/// ranges.
pub fn free_base_port(count: u16, stride: u16) -> u16 {
    let seed = std::process::id() as u16;
    for attempt in 0..500u16 {
        let base = 20_000
            + (seed
                .wrapping_mul(stride)
                .wrapping_add(attempt.wrapping_mul(stride.wrapping_mul(13) | 1)))
                % 30_000;
        if (0..count).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free port range");
}

/// The signing key in an admin key file written by `dev` or `testnet`.
pub fn read_admin_key(path: &Path) -> SigningKey {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut seed = [0u8; 32];
    hex::decode_to_slice(json["signing_seed"].as_str().unwrap(), &mut seed).unwrap();
    SigningKey::from_seed(seed)
}
