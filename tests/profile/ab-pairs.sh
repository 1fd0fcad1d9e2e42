#!/usr/bin/env bash
# Adjacent A/B pairs of net-bench runs: two keyreg-node builds measured in
# turn (A, B, A, B, ...), so the machine's drift (often 10-20 % within
# minutes on shared cores) falls on both alike. docs/benchmarks.md's
# "before -> after" tables come from it.
#
#   tests/profile/ab-pairs.sh A_NODE_BIN B_NODE_BIN PAIRS OUT_DIR -- [net-bench args]
#
# Copy each build's target/release/keyreg-node somewhere first (building B
# overwrites A's). Each run's full output goes to OUT_DIR/{a,b}-N.log; the
# key lines are printed as the runs end, then each side's mean throughput.
# Runs target/release/net-bench, which must be built; do not compile while
# it runs.
set -euo pipefail
[ $# -ge 4 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
a_bin=$1 b_bin=$2 pairs=$3 out=$4
shift 4
[ "${1:-}" = "--" ] && shift
case "$pairs" in '' | *[!0-9]*) echo "ab-pairs.sh: PAIRS is a number, not $pairs" >&2; exit 2 ;; esac
for bin in "$a_bin" "$b_bin"; do
  [ -x "$bin" ] || { echo "ab-pairs.sh: $bin is not an executable" >&2; exit 2; }
done
cd "$(dirname "$0")/../.."
mkdir -p "$out"
for i in $(seq "$pairs"); do
  for side in a b; do
    bin=$a_bin
    [ "$side" = b ] && bin=$b_bin
    log="$out/$side-$i.log"
    # net-bench bounds its own phases; the timeout is a last resort.
    timeout 1800 target/release/net-bench --node-bin "$bin" "$@" >"$log" 2>&1 || echo "($side $i: net-bench exited $?)"
    echo "== $side $i ($bin)"
    grep -E 'committed in|x the verification bound \(|half saturation: offered|polling|revocation path|revocation visibility' "$log" |
      sed -E 's/; verified proof shows Revoked, polled every [0-9]+ ms//' || true
  done
done
echo "== mean committed tx/s over $pairs pairs"
for side in a b; do
  grep -ho '^throughput: .* = [0-9]* tx/s' "$out"/$side-*.log | grep -o '[0-9]* tx/s$' |
    awk -v side="$side" '{ s += $1; n++ } END { if (n) printf "%s: %.0f tx/s (%d runs)\n", side, s / n, n }'
done
