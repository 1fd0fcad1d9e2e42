#!/usr/bin/env bash
# Runs one fuzz target: tests/fuzz/run.sh TARGET [SECONDS] [RUNS]
# New inputs go to $WORK/corpus/TARGET (not the checked-in corpus, which is
# read as seeds); crashes to $WORK/artifacts/TARGET/. Needs a prior
# `cargo +nightly fuzz build -s none -O` in tests/fuzz (same CARGO_TARGET_DIR).
set -euo pipefail
target=$1
seconds=${2:-600}
runs=${3:-10000000}
here=$(cd "$(dirname "$0")" && pwd)
tdir=${CARGO_TARGET_DIR:-$here/target}
work=${WORK:-$tdir/fuzz-work}
mkdir -p "$work/corpus/$target" "$work/artifacts/$target"
exec "$tdir/x86_64-unknown-linux-gnu/release/$target" \
  -runs="$runs" -max_total_time="$seconds" -max_len=65536 -timeout=10 \
  -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$work/artifacts/$target/" \
  "$work/corpus/$target" "$here/corpus/$target"
