//! `keyreg`: the device and auditor command line (see `keyreg --help`).

use clap::error::ErrorKind;
use clap::Parser;
use keyreg_client::cli::{run, Cli};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            // clap's own message spans several lines; keep its first.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "keyreg: {} (see keyreg --help)",
                first.trim_start_matches("error: ")
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&cli) {
        eprintln!("keyreg: error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}
