//! Writes the fuzz seeds (`keyreg_tests::seeds`) into the corpus:
//! `cargo run --release -p keyreg-tests --bin fuzz-seeds [CORPUS_DIR]`
//! (default `tests/fuzz/corpus`, relative to the workspace root).

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus"));
    let seeds = keyreg_tests::seeds::all();
    for s in &seeds {
        let dir = root.join(s.target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{}", s.name)), &s.bytes)?;
    }
    println!("wrote {} seeds under {}", seeds.len(), root.display());
    Ok(())
}
