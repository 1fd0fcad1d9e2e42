#!/usr/bin/env bash
# Profiles the 4 keyreg-node processes of a net-bench run during its
# throughput phase (docs/benchmarks.md, session 5).
#
#   [PROFILE_DELAY=S] tests/profile/profile-nodes.sh OUT.data SECONDS -- [net-bench args]
#   tests/profile/stack-shares.py OUT.txt 'admission::admit' 'Ledger.*commit' ...
#
# Starts target/release/net-bench with the given arguments, waits for its
# bound line and then for the nodes' CPU ticks to rise (the load generator
# has finished pre-signing and submits), records SECONDS of call stacks of
# every node with perf, lets net-bench finish, and writes OUT.txt
# (`perf script`) for stack-shares.py. PROFILE_DELAY waits S more seconds
# before recording (a later phase of a long run). PROFILE_MODE picks what
# is recorded:
#   cpu     call stacks sampled 400 times a second (the default);
#   faults  the call stack of every 50th page fault;
#   count   no stacks: OUT gets perf stat's counts of page faults and of the
#           calls that return or grow memory, and the nodes' summed VmRSS
#           and wchar before and after the window.
# Needs perf (Debian's linux-perf).
set -euo pipefail
out=$1 seconds=$2
shift 2
mode=${PROFILE_MODE:-cpu}
case "$mode" in
  cpu | faults | count) ;;
  *) echo "profile-nodes.sh: PROFILE_MODE is cpu, faults or count, not $mode" >&2; exit 2 ;;
esac
[ "${1:-}" = "--" ] && shift
cd "$(dirname "$0")/../.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
target/release/net-bench "$@" >"$log" 2>&1 &
bench=$!
for _ in $(seq 120); do grep -q "bound" "$log" && break; sleep 1; done
previous=0
for _ in $(seq 200); do
  ticks=0
  for pid in $(pgrep -x keyreg-node); do
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  # More than 0.6 CPU-seconds of node time in half a second: under load.
  if [ "$previous" -gt 0 ] && [ $((ticks - previous)) -gt 60 ]; then break; fi
  previous=$ticks
  sleep 0.5
done
sleep "${PROFILE_DELAY:-0}"
pids=$(pgrep -d, -x keyreg-node) || {
  # The kernel keeps 15 characters of a process name: a --node-bin wrapper
  # must exec a binary named exactly keyreg-node.
  echo "profile-nodes.sh: no process named keyreg-node to record" >&2
  wait "$bench" || true
  exit 1
}
# "VmRSS kB, wchar bytes", summed over the nodes.
node_memory() {
  local rss=0 written=0 pid
  for pid in ${pids//,/ }; do
    rss=$((rss + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")))
    written=$((written + $(awk '/^wchar/ {print $2}' "/proc/$pid/io")))
  done
  echo "$rss kB, $written bytes written"
}
case "$mode" in
  cpu) perf record -F 400 --call-graph dwarf,16384 -p "$pids" -o "$out" -- sleep "$seconds" ;;
  faults) perf record -e page-faults -c 50 --call-graph dwarf,16384 -p "$pids" -o "$out" -- sleep "$seconds" ;;
  count)
    before=$(node_memory)
    perf stat -e page-faults,syscalls:sys_enter_munmap,syscalls:sys_enter_madvise,syscalls:sys_enter_mprotect \
      -p "$pids" -o "$out" -- sleep "$seconds"
    echo "nodes' VmRSS and wchar: before $before; after $(node_memory)" >>"$out"
    ;;
esac
wait "$bench"
cat "$log"
if [ "$mode" != count ]; then
  perf script -i "$out" -F comm,tid,ip,sym >"${out%.data}.txt" 2>/dev/null
fi
