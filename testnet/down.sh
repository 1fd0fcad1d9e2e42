#!/usr/bin/env bash
# Takes the testnet down and deletes its containers, network and volumes.
set -euo pipefail
source "$(dirname "$0")/common.sh"
compose down -v --remove-orphans
[ "${1:-}" = "--purge" ] && rm -rf "$TESTNET_DIR/net"
echo "testnet down"
