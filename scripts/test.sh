#!/usr/bin/env bash
# Runs every test: formatting, the unit and integration tests of every crate (including the
# end-to-end tests that start the real binaries, and the tests against a real SMTP server),
# doctests, and clippy. Fails if anything fails. Ends with one line: "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# A clean clone gains nothing from incremental compilation, and its caches would double the
# build's size on disk (a CI run once stopped with "No space left on device").
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
echo "== disk: $(df -h . | awk 'NR==2 {print $4 " free on " $6}')"
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== build binaries (the end-to-end tests run them)"
cargo build --workspace --bins
# The lying directory of the malicious-directory tests: its own binary name, so the ordinary
# dialtone-directory binary is never built with the `malicious` feature. `--workspace` keeps
# the dependencies' features those of the build above, so none of them is compiled twice.
cargo build --workspace --bin dialtone-directory-malicious --features dialtone-directory/malicious

echo "== doctests"
cargo test --workspace --doc --quiet

# -- fuzz: every parser in fuzz/ for 10 s, from the checked-in seeds; a crash fails the
# -- suite. Its own build (fuzz/target, the dependencies again with coverage instrumentation).
echo "== fuzz (scripts/fuzz.sh, 10 s per target)"
scripts/fuzz.sh 10

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast 2>&1 | tee "$log"
  summary=$(grep -E '^ *Summary .* tests? run:' "$log" | tail -n 1)
  passed=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$summary")
  failed=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$summary")
else
  cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
  passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s+=$1} END {print s+0}')
  failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')
fi

if [ "${DIALTONE_SKIP_CLIPPY:-0}" != 1 ]; then
  echo "== cargo clippy --all-targets -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
fi
echo "== all checks passed"
echo "${passed:-0} passed, ${failed:-0} failed"
