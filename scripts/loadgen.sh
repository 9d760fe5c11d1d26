#!/usr/bin/env bash
# The directory load generator: opens many authenticated sessions against a real
# dialtone-directory and reports memory per session, fan-out latency, lookups and publishes per
# second (see BENCHMARKS.md). Run as root for more than ~19 000 sessions (it raises the
# open-file limit). Example: scripts/loadgen.sh --sessions 100000
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2
cargo build --release -p dialtone-bench -p dialtone-directory --bins >&2
exec "${CARGO_TARGET_DIR:-target}"/release/dialtone-loadgen "$@"
