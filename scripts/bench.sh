#!/usr/bin/env bash
# Builds release binaries and runs the loopback benchmark (see BENCHMARKS.md).
# Extra arguments go to dialtone-bench, e.g. `scripts/bench.sh --json` or `--rtt-n 200`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bins
exec "${CARGO_TARGET_DIR:-target}"/release/dialtone-bench "$@"
