#!/usr/bin/env bash
# Installs what Dialtone's build, demo and tests need on a fresh Debian/Ubuntu machine.
# Idempotent: installs only what is missing. Run as root, or with sudo available.
set -euo pipefail

need_pkgs=()
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
command -v cc >/dev/null 2>&1 || need_pkgs+=(build-essential)
# zbarimg decodes the safety-number QR code in the tests.
command -v zbarimg >/dev/null 2>&1 || need_pkgs+=(zbar-tools)
# The network-namespace lab (NAT matrix tests, `dialtone-bench netns`): ip, nft.
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v nft >/dev/null 2>&1 || need_pkgs+=(nftables)
# LAN mode interop test: avahi-browse must see an agent's mDNS service (avahi-daemon needs D-Bus).
command -v avahi-daemon >/dev/null 2>&1 || need_pkgs+=(avahi-daemon)
command -v avahi-browse >/dev/null 2>&1 || need_pkgs+=(avahi-utils)
command -v dbus-daemon >/dev/null 2>&1 || need_pkgs+=(dbus)

# ss reads per-socket byte counters for the idle-cost benchmark.
command -v ss >/dev/null 2>&1 || need_pkgs+=(iproute2)
# The comparison benchmark's anchors (bench/anchors): Prosody (XMPP), Kamailio (SIP) and sipp.
# Their smoke run is part of the tests, so the comparison cannot rot.
command -v prosody >/dev/null 2>&1 || need_pkgs+=(prosody)
command -v kamailio >/dev/null 2>&1 || need_pkgs+=(kamailio)
command -v sipp >/dev/null 2>&1 || need_pkgs+=(sip-tester)
command -v bc >/dev/null 2>&1 || need_pkgs+=(bc)

if ((${#need_pkgs[@]})); then
  echo "setup: installing Debian packages: ${need_pkgs[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  # Packages must not start their system services (Prosody, Kamailio): the benchmarks run
  # their own instances on loopback. policy-rc.d is Debian's switch for that.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
  if [ -n "$policy" ]; then $SUDO rm -f "$policy"; fi
fi

# Python for the test peers (a real SMTP server: aiosmtpd) and the XMPP benchmark client
# (slixmpp), in the repository's own .venv.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if ! "$ROOT/.venv/bin/python" -c 'import aiosmtpd, slixmpp' >/dev/null 2>&1; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    SUDO=""; if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3 python3-venv
  fi
  echo "setup: creating $ROOT/.venv with aiosmtpd (SMTP tests) and slixmpp (XMPP benchmark client)"
  python3 -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/pip" install -q 'aiosmtpd==1.4.6' 'slixmpp==1.17.0'
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: Rust is missing. Install it from your distribution (apt-get install cargo) or with rustup, then rerun." >&2
  exit 1
fi
# The fuzz step of the tests (scripts/fuzz.sh): cargo-fuzz, built from crates.io (a minute).
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
echo "setup: ok ($(cargo --version))"
