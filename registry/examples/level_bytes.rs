//! Bytes of tree nodes a block writes per update, by depth (docs/benchmarks.md,
//! session 20): inserts `ENTRIES` random keys in blocks of `BLOCK`, then counts
//! the nodes (key and value bytes as stored) that the last four blocks wrote.
//!
//!     cargo run --release -p keyreg-registry --example level_bytes -- 200000 2300

use keyreg_consensus::crypto::{hash, Domain};
use keyreg_registry::tree::{MemNodeStore, Node, StateTree};

/// Device records are about this long.
const VALUE_BYTES: usize = 100;
const MEASURED_BLOCKS: u64 = 4;
/// Depths of internal nodes; leaves are counted in the last slot.
const DEPTHS: usize = 65;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let (Some(entries), Some(block)) = (args.next().transpose()?, args.next().transpose()?) else {
        return Err("usage: level_bytes ENTRIES BLOCK".into());
    };
    let block = block.max(1);
    let blocks = entries.div_ceil(block);
    let mut store = MemNodeStore::new();
    let (mut bytes, mut counts) = ([0usize; DEPTHS + 1], [0usize; DEPTHS + 1]);
    let mut measured_updates = 0;
    for version in 1..=blocks {
        let first = (version - 1) * block;
        let mut updates: Vec<_> = (first..(first + block).min(entries))
            .map(|k| {
                (
                    hash(Domain::DeviceName, &k.to_le_bytes()),
                    Some(vec![7; VALUE_BYTES]),
                )
            })
            .collect();
        updates.sort();
        let base = (version > 1).then(|| version - 1);
        let batch = StateTree::new(&store).apply(base, version, &updates)?;
        if version + MEASURED_BLOCKS > blocks {
            for (key, node) in &batch.new_nodes {
                let depth = match node {
                    Node::Leaf(_) => DEPTHS,
                    _ => key.path.len(),
                };
                bytes[depth] += key.encoded_len() + node.encoded_len();
                counts[depth] += 1;
            }
            measured_updates += updates.len();
        }
        store.write_owned(batch);
    }
    let total: usize = bytes.iter().sum();
    let per_update = |n: usize| n as f64 / measured_updates.max(1) as f64;
    println!(
        "{entries} entries, blocks of {block}: {:.0} B of tree nodes per update (last {MEASURED_BLOCKS} blocks)",
        per_update(total)
    );
    for (depth, (&b, &c)) in bytes
        .iter()
        .zip(&counts)
        .enumerate()
        .filter(|(_, (_, &c))| c > 0)
    {
        let what = if depth == DEPTHS {
            "leaves".to_string()
        } else {
            format!("depth {depth}")
        };
        println!(
            "  {what:>8}: {:.3} nodes, {:.0} B per update ({:.0} %)",
            per_update(c),
            per_update(b),
            100.0 * b as f64 / total as f64
        );
    }
    Ok(())
}
