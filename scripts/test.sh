#!/usr/bin/env bash
# Runs every test: formatting, the unit and integration tests of every crate (including the
# end-to-end tests that start the real binaries, and the tests against a real SMTP server),
# doctests, and clippy. Fails if anything fails. Ends with one line:
# "N passed, N failed, N skipped".
#
# A test that cannot run here (no root, no `ip netns`, no Prosody user) is skipped, not
# passed: it names itself in the file $DIALTONE_SKIP_LOG (dialtone_testkit::skip), and the
# summary moves it from passed to skipped. DIALTONE_FORCE_SKIP=1 makes every such test skip.
#
# Arguments, if any, go to `cargo nextest run` (e.g. `-E 'binary(netns)'`): only the tests
# they select run, and the doctests do not.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# A clean clone gains nothing from incremental compilation, and its caches would double the
# build's size on disk (a CI run once stopped with "No space left on device").
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
echo "== disk: $(df -h . | awk 'NR==2 {print $4 " free on " $6}')"
log=$(mktemp)
skips=$(mktemp)
trap 'rm -f "$log" "$skips"' EXIT
export DIALTONE_SKIP_LOG=$skips
failures=()

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== build binaries (the end-to-end tests run them)"
# This includes dialtone-directory-malicious, the lying directory of the malicious-directory
# tests: a crate of its own (publish = false) on the directory's seams, no feature flag.
cargo build --workspace --bins

if [ $# -eq 0 ]; then
  echo "== doctests"
  cargo test --workspace --doc --quiet || failures+=(doctests)
fi

# -- fuzz: every parser in fuzz/ for 10 s, from the checked-in seeds; a crash fails the
# -- suite. Its own build (fuzz/target, the dependencies again with coverage instrumentation).
echo "== fuzz (scripts/fuzz.sh, 10 s per target)"
scripts/fuzz.sh 10

echo "== tests"
# The exit status of the test run, not of `tee`.
if cargo nextest --version >/dev/null 2>&1; then
  set +e
  cargo nextest run --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  set -e
  summary=$(grep -E '^ *Summary .* tests? run:' "$log" | tail -n 1 || true)
  passed=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$summary")
  failed=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$summary")
else
  set +e
  cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  set -e
  passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s+=$1} END {print s+0}' || true)
  failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}' || true)
fi
passed=${passed:-0}
failed=${failed:-0}
# A run that stopped before its summary (a build error, a crash) fails too.
if [ "$status" -ne 0 ] || [ "$failed" -ne 0 ]; then failures+=(tests); fi
# Each skipped test ran and returned, so the runner counted it as passed.
skipped=$(cut -f1 "$skips" | sort -u | grep -c . || true)
if [ "$skipped" -gt 0 ]; then
  echo "== skipped (cannot run here):"
  sort -u "$skips" | sed 's/^/   /'
fi
passed=$((passed > skipped ? passed - skipped : 0))

if [ "${DIALTONE_SKIP_CLIPPY:-0}" != 1 ]; then
  echo "== cargo clippy --all-targets -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings || failures+=(clippy)
fi
if [ ${#failures[@]} -eq 0 ]; then
  echo "== all checks passed"
else
  echo "== FAILED: ${failures[*]}"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ ${#failures[@]} -eq 0 ]
