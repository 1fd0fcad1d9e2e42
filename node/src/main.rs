use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    if let Err(missing) = check_cpu() {
        eprintln!(
            "error: this CPU lacks {missing}, which keyreg-node's RocksDB is compiled to use \
             for its checksums (.cargo/config.toml); any x86-64 server CPU since 2010 has it"
        );
        return std::process::ExitCode::FAILURE;
    }
    keep_freed_memory();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// RocksDB's C++ is built with SSE4.2 and PCLMUL (`.cargo/config.toml`):
/// without them its first checksum would die of an illegal instruction
/// instead of saying why.
fn check_cpu() -> Result<(), &'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if !std::arch::is_x86_feature_detected!("sse4.2") {
            return Err("SSE4.2");
        }
        if !std::arch::is_x86_feature_detected!("pclmulqdq") {
            return Err("PCLMULQDQ");
        }
    }
    Ok(())
}

/// Makes glibc's allocator keep freed memory for reuse instead of handing
/// it back to the kernel: a block's commit allocates megabytes (its write
/// batch, RocksDB's memtable arena), and with glibc's defaults each such
/// allocation was fresh memory the kernel faulted in and zeroed page by page
/// (4–13 % of a saturated node's CPU in `perf`, docs/benchmarks.md). The
/// node's peak heap is then kept for reuse rather than returned.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// glibc's largest mmap threshold (`DEFAULT_MMAP_THRESHOLD_MAX`).
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 512 << 20;
        // SAFETY: mallopt only sets allocator parameters; it runs before any
        // other thread exists.
        let set = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        };
        if !set {
            eprintln!("warning: glibc refused the allocator thresholds; running with its defaults");
        }
    }
}

async fn run() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = keyreg_node::cli::Cli::parse();
    match keyreg_node::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
