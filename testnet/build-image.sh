#!/usr/bin/env bash
# Builds the keyreg-node:local image from the host's release build.
set -euo pipefail
cd "$(dirname "$0")/.."
testnet/ensure-deps.sh
cargo build --release -p keyreg-node -p keyreg-client

rootfs=target/testnet-rootfs
rm -rf "$rootfs"
mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc" "$rootfs/keyreg"
cp target/release/keyreg-node "$rootfs/bin/"
# The binary's shared libraries and the dynamic loader, at their own paths.
ldd target/release/keyreg-node | awk '/=> \// {print $3} $1 ~ /ld-linux/ {print $1}' |
  while read -r lib; do cp --parents -L "$lib" "$rootfs/"; done
echo "root:x:0:0:root:/keyreg:/bin/keyreg-node" > "$rootfs/etc/passwd"
echo "hosts: files dns" > "$rootfs/etc/nsswitch.conf"
docker build -q -t keyreg-node:local -f testnet/Dockerfile "$rootfs"
