#!/usr/bin/env bash
# Runs a local single-validator keyreg chain with RocksDB under ./.keyreg-dev
# and the HTTP API on 127.0.0.1:8080. Extra arguments go to `keyreg-node dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
testnet/ensure-deps.sh
cargo build --release -p keyreg-node -p keyreg-client
exec target/release/keyreg-node dev "$@"
