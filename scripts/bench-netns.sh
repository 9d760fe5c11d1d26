#!/usr/bin/env bash
# Builds release binaries and runs the network-namespace benchmark as root (see BENCHMARKS.md):
# connect time and RTT per topology, direct and relayed. Extra arguments go to
# dialtone-bench-netns, e.g. `--runs 5` or `--only symmetric_nat_both`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bins
exec "${CARGO_TARGET_DIR:-target}"/release/dialtone-bench-netns "$@"
