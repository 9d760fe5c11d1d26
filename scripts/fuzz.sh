#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a few seconds each (default 10; `scripts/fuzz.sh 60`
# for longer), starting from the checked-in seeds in fuzz/corpus/<target>/. Fails on the
# first crash, leak, timeout or failed assertion; libFuzzer leaves the input that did it in
# fuzz/artifacts/<target>/ (reproduce: `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>`).
# Prints each target's inputs per second.
#
# cargo-fuzz needs nightly flags: RUSTC_BOOTSTRAP=1 lets this stable toolchain take them.
# No sanitizer by default: the code under test is safe Rust, so AddressSanitizer would find
# nothing more while doubling the build and halving the speed; debug assertions are on, so
# an integer overflow is a crash. DIALTONE_FUZZ_SANITIZER=address turns ASan on.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-10}
export RUSTC_BOOTSTRAP=1
opts=(-s "${DIALTONE_FUZZ_SANITIZER:-none}" --debug-assertions)
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is missing (scripts/setup.sh installs it)" >&2
  exit 1
fi
cargo fuzz build "${opts[@]}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in $(cargo fuzz list); do
  mkdir -p "$work/$target" "corpus/$target"
  # New inputs go to the scratch directory; the checked-in seeds are only read.
  if ! cargo fuzz run "${opts[@]}" "$target" "$work/$target" "corpus/$target" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 >"$work/$target.log" 2>&1; then
    tail -n 40 "$work/$target.log" >&2
    echo "fuzz: $target FAILED (input in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  runs=$(sed -nE 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\1 \2/p' "$work/$target.log")
  read -r n s <<<"${runs:-0 1}"
  echo "fuzz: $target ok: $n inputs in ${s} s ($((n / (s > 0 ? s : 1))) inputs/s)"
done
