#!/usr/bin/env bash
# The testnet without Docker: 4 validators and 1 observer as plain processes
# on 127.0.0.1 (p2p ports 26656.., APIs on 8080..8084). Ctrl-C stops them all.
#   testnet/run-local.sh [--validators N] [--observers M] [--dir DIR]
set -euo pipefail
source "$(dirname "$0")/common.sh"
validators=4 observers=1 dir="$TESTNET_DIR/local"
while [ $# -gt 0 ]; do
  case "$1" in
    --validators) validators=$2; shift 2 ;;
    --observers) observers=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    *) echo "usage: $0 [--validators N] [--observers M] [--dir DIR]" >&2; exit 2 ;;
  esac
done
"$REPO_DIR/scripts/ensure-deps.sh"
(cd "$REPO_DIR" && cargo build --release -p keyreg-node -p keyreg-client)
node_bin="$REPO_DIR/target/release/keyreg-node"
if [ ! -f "$dir/genesis.json" ]; then
  "$node_bin" testnet --validators "$validators" --observers "$observers" --out "$dir"
fi
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; echo "testnet stopped"; }
trap stop EXIT INT TERM
for home in "$dir"/node*; do
  "$node_bin" start --home "$home" >"$home/node.log" 2>&1 &
  pids+=($!)
  echo "started $(basename "$home") (pid $!, log $home/node.log)"
done
echo "APIs: http://127.0.0.1:8080 .. (one port per node; see $dir/node*/config.toml)"
echo "try: target/release/keyreg --node http://127.0.0.1:8080 --genesis $dir/genesis.json status"
wait
