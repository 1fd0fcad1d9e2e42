#!/usr/bin/env bash
# The whole test suite: what README.md tells a newcomer to run and what CI runs.
# Everything builds with the release profile (see Cargo.toml), so RocksDB and
# libp2p compile once and the simulator and signature checks run at speed.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh || exit 1

log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --workspace --all-targets --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# Doc tests are not in --all-targets; run them too.
cargo test --release --workspace --doc 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo
echo "keyreg: ${passed} passed, ${failed} failed"
exit "$status"
