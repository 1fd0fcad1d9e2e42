//! Progress reporting, injectable so tests and `--json` runs stay quiet.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Receives the replay's progress (on the auditing thread).
pub trait Progress {
    /// The replay starts after `from_height` and goes to `head_height`.
    fn start(&mut self, from_height: u64, head_height: u64);
    /// Block `height`, holding `txs` transactions, passed every check.
    fn advance(&mut self, height: u64, txs: u64);
    fn finish(&mut self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _: u64, _: u64) {}
    fn advance(&mut self, _: u64, _: u64) {}
    fn finish(&mut self) {}
}

/// An indicatif bar on stderr with blocks/s and transactions/s.
pub struct TerminalProgress {
    bar: ProgressBar,
    started: Instant,
    last_message: Instant,
    blocks: u64,
    txs: u64,
}

/// How often the rate message is recomputed.
const MESSAGE_INTERVAL: Duration = Duration::from_millis(250);

impl TerminalProgress {
    pub fn new() -> Self {
        let bar = ProgressBar::hidden();
        let style = ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} blocks  {msg}  eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        let now = Instant::now();
        TerminalProgress {
            bar,
            started: now,
            last_message: now,
            blocks: 0,
            txs: 0,
        }
    }
}

impl Default for TerminalProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for TerminalProgress {
    fn start(&mut self, from_height: u64, head_height: u64) {
        self.bar
            .set_draw_target(indicatif::ProgressDrawTarget::stderr());
        self.bar.set_length(head_height);
        self.bar.set_position(from_height);
        self.started = Instant::now();
    }

    fn advance(&mut self, height: u64, txs: u64) {
        self.blocks += 1;
        self.txs += txs;
        self.bar.set_position(height);
        let now = Instant::now();
        if now.duration_since(self.last_message) >= MESSAGE_INTERVAL {
            self.last_message = now;
            let secs = now.duration_since(self.started).as_secs_f64().max(1e-3);
            self.bar.set_message(format!(
                "{:.0} blocks/s  {:.0} tx/s",
                self.blocks as f64 / secs,
                self.txs as f64 / secs
            ));
        }
    }

    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// The CLI's reporter: a bar only when stderr is a terminal and the output
/// is not JSON.
pub fn cli_progress(json: bool) -> Box<dyn Progress> {
    if !json && std::io::stderr().is_terminal() {
        Box::new(TerminalProgress::new())
    } else {
        Box::new(NoProgress)
    }
}
