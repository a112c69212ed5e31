#!/usr/bin/env bash
# Builds the release binaries and installs them into PREFIX/bin (default /usr/local).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix="${PREFIX:-/usr/local}"
cargo build --release --locked --bin agentcom-hub --bin agentcom-sidecar --bin hubctl
install -d "$prefix/bin"
for bin in agentcom-hub agentcom-sidecar hubctl; do
  install -m 0755 "target/release/$bin" "$prefix/bin/$bin"
done
echo "installed agentcom-hub, agentcom-sidecar and hubctl into $prefix/bin"
