#!/usr/bin/env bash
# One command for a newcomer: sets up, builds, starts a local directory and two agents
# (alice and bob) on loopback, makes them contacts, and alice sends bob a message that bob's
# `dialtone watch` prints. Then shows a refusal: bob goes offline and alice's next message is
# refused, not queued. Everything runs on 127.0.0.1 / [::1] and is stopped at the end
# (set KEEP=1 to leave it running and play with it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --bins
BIN="$PWD/target/debug"
RUN=$(mktemp -d "${TMPDIR:-/tmp}/dialtone-demo.XXXXXX")
DIR_PID=""
WATCH_PID=""

cleanup() {
  [ -n "$WATCH_PID" ] && kill "$WATCH_PID" 2>/dev/null || true
  for p in alice bob; do "$BIN/dialtone" --home "$RUN/$p" down >/dev/null 2>&1 || true; done
  [ -n "$DIR_PID" ] && kill "$DIR_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
if [ "${KEEP:-0}" != 1 ]; then trap cleanup EXIT; fi

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
dt() { local who=$1; shift; "$BIN/dialtone" --home "$RUN/$who" "$@"; }

say "1. a directory on loopback"
"$BIN/dialtone-directory" --listen 127.0.0.1:0 --data "$RUN/directory" --verify-outbox "$RUN/outbox" \
  >"$RUN/directory.out" 2>"$RUN/directory.log" &
DIR_PID=$!
for _ in $(seq 100); do grep -q '^listening on ' "$RUN/directory.out" 2>/dev/null && break; sleep 0.1; done
URL=$(sed -n 's/^listening on //p' "$RUN/directory.out")
[ -n "$URL" ] || { echo "the directory did not start; see $RUN/directory.log" >&2; exit 1; }
echo "directory at $URL (data in $RUN/directory)"

for who in alice bob; do
  say "2. $who: identity, registration, verification, agent"
  dt $who id new --no-passphrase --name "$who-laptop"
  dt $who register "$who@example.com" --directory "$URL"
  code=$(cat "$RUN/outbox/$who@example.com")
  echo "(the code arrived in the demo outbox: $code)"
  dt $who verify "$code"
  dt $who up --detach --bind 127.0.0.1:0 --bind '[::1]:0' --no-portmapper
done

say "3. bob watches; alice asks bob to be a contact; bob accepts"
dt bob watch >"$RUN/bob.watch" 2>/dev/null &
WATCH_PID=$!
sleep 0.5
dt alice contacts add bob@example.com
sleep 0.3
dt bob contacts accept alice@example.com
for _ in $(seq 100); do dt alice contacts list | grep -q 'bob@example.com.*online' && break; sleep 0.1; done
dt alice contacts list

say "4. alice sends bob a message (exits 0 only when bob's agent acknowledged it)"
dt alice send bob@example.com "Hello Bob! This went straight from my device to yours."
for _ in $(seq 50); do grep -q 'alice@example.com:' "$RUN/bob.watch" && break; sleep 0.1; done
echo "--- bob's screen (dialtone watch) ---"
cat "$RUN/bob.watch"

say "5. bob goes offline; alice's next message is refused at once, and never delivered later"
dt bob down
set +e
dt alice send bob@example.com "Are you there?"
rc=$?
set -e
echo "(exit code $rc: 10 means offline)"

if [ "${KEEP:-0}" = 1 ]; then
  echo; echo "left running: directory pid $DIR_PID, homes in $RUN (try: $BIN/dialtone --home $RUN/alice status)"
fi
say "demo finished"
