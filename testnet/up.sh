#!/usr/bin/env bash
# Brings the 4-validator + 1-observer testnet up (building what it needs).
set -euo pipefail
source "$(dirname "$0")/common.sh"
"$TESTNET_DIR/build-image.sh"
if [ ! -f "$TESTNET_DIR/net/genesis.json" ]; then
  "$REPO_DIR/target/release/keyreg-node" testnet --validators 4 --observers 1 \
    --out "$TESTNET_DIR/net" --host-template 'node{i}'
fi
compose up -d --no-build
echo "testnet up: APIs on http://127.0.0.1:18080 .. :18084 (node4 is the observer)"
echo "try: target/release/keyreg --node http://127.0.0.1:18080 --genesis testnet/net/genesis.json status"
