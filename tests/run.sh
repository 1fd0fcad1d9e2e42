#!/usr/bin/env bash
# The whole test suite: what README.md tells a newcomer to run and what CI runs.
# Everything builds with the release profile (see Cargo.toml), so RocksDB and
# libp2p compile once and the simulator and signature checks run at speed.
set -uo pipefail
cd "$(dirname "$0")/.."
testnet/ensure-deps.sh || exit 1

log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --workspace --all-targets --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# Doc tests are not in --all-targets; run them too.
cargo test --release --workspace --doc 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# The docker fault test: 4 validators + 1 observer in containers, faults
# injected under load. It skips itself, saying so, when no Docker engine answers.
fault_passed=0 fault_failed=0
if [ "${KEYREG_SKIP_FAULT_TEST:-0}" = 1 ]; then
  echo "fault-test: SKIPPED (KEYREG_SKIP_FAULT_TEST=1)"
else
  # One retry: the test drives real containers on a shared 2-core machine.
  # A first failure is printed and counted in the log, never hidden.
  for attempt in 1 2; do
    if testnet/fault-test.sh 2>&1 | tee -a "$log" | grep --line-buffered -v '^\(Creating\|Removing\|Stopping\|Starting\) '; then
      grep -q '^fault-test: PASSED' "$log" && fault_passed=1
      break
    fi
    echo "fault-test: attempt $attempt failed"
  done
  if [ "$fault_passed" = 0 ] && ! grep -q '^fault-test: SKIPPED' "$log"; then
    fault_failed=1
    status=1
  fi
fi

passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo
passed=$((passed + fault_passed)); failed=$((failed + fault_failed))
echo "keyreg: ${passed} passed, ${failed} failed"
exit "$status"
