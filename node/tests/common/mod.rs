//! Helpers shared by the node's integration tests (each test binary uses a
//! subset, hence the `dead_code` allowance).
#![allow(dead_code)]

use std::path::Path;

use keyreg_consensus::SigningKey;
use keyreg_node::cli::{generate_testnet, TestnetNode, TestnetSpec};
use keyreg_node::config::{Config, Overrides};
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

/// A testnet of `validators` and `observers` on loopback generated into
/// `dir`: p2p ports from a free base probed with `stride` (see
/// [`free_base_port`]; one spare port for a node a test adds later), API
/// ports `api_offset` above them. Returns the base port and the nodes.
pub fn loopback_testnet(
    dir: &Path,
    chain_id: &str,
    validators: usize,
    observers: usize,
    stride: u16,
    api_offset: u16,
) -> (u16, Vec<TestnetNode>) {
    let nodes = (validators + observers) as u16;
    let base = free_base_port(nodes + api_offset + 1, stride);
    let layout = generate_testnet(
        &TestnetSpec {
            validators,
            observers,
            base_port: base,
            api_base_port: base + api_offset,
            host_template: "127.0.0.1".into(),
            chain_id: chain_id.into(),
        },
        dir,
    )
    .unwrap();
    (base, layout)
}

/// The config in `home` with the API on a free port and consensus timings
/// shortened for tests.
pub fn fast_config(home: &Path) -> Config {
    let mut config = Config::load(home).unwrap();
    config
        .apply(Overrides {
            api_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Overrides::default()
        })
        .unwrap();
    config.consensus.min_block_interval_ms = 100;
    config.consensus.heartbeat_interval_ms = 1000;
    config.consensus.timeout_propose_ms = 1000;
    config.consensus.timeout_vote_ms = 500;
    config
}
