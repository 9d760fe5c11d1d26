#!/usr/bin/env bash
# Runs every test: formatting, the unit and integration tests of every crate, and the
# end-to-end tests that start the real binaries. Fails if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== build binaries (the end-to-end tests run them)"
cargo build --workspace --bins

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --profile "${NEXTEST_PROFILE:-default}"
  # nextest does not run doctests
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi

if [ "${DIALTONE_SKIP_CLIPPY:-0}" != 1 ]; then
  echo "== cargo clippy --all-targets -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
fi
echo "== all tests passed"
