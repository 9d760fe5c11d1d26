#!/usr/bin/env bash
# Dialtone side by side with Prosody (XMPP) and Kamailio (SIP) on loopback, plus the directory
# load-generator ladder (10k, 50k, 100k sessions). Installs what it needs (scripts/setup.sh),
# builds release binaries, runs bench/suite.py and prints the tables (also written to
# target/bench-suite/results.{json,md}). Needs root (Prosody runs as its own user; the load
# generator raises the open-file limit).
#   scripts/bench-suite.sh                  # 3 runs, medians; takes about 15 minutes
#   scripts/bench-suite.sh --runs 5 --load-sizes 10000
#   scripts/bench-suite.sh --smoke          # tiny counts, debug binaries: what the tests run
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2
profile=release
for a in "$@"; do [ "$a" = --smoke ] && profile=debug; done
if [ "$profile" = release ]; then
  cargo build --release --bins >&2
else
  cargo build --bins >&2
fi
exec .venv/bin/python bench/suite.py --bins "${CARGO_TARGET_DIR:-target}/$profile" "$@"
