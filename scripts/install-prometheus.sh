#!/usr/bin/env bash
# Installs Prometheus (and promtool) from Debian's `prometheus` package when `prometheus`
# or `promtool` is not on PATH yet; does nothing when both are. Idempotent.
# Needs root (or sudo) and apt-get: scripts/observability.sh and the test script call it.
#
# Debian's package also ships a systemd unit and an init.d script, and its postinst starts
# the service (a Prometheus on :9090 of its own). We never use that service:
# scripts/observability.sh runs its own Prometheus in the foreground. So, where no
# /usr/sbin/policy-rc.d exists, the install runs with a temporary one that answers 101
# ("action forbidden"), and no daemon is left behind (an existing one, as container
# images ship, is kept as it is).
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-prometheus.sh: prometheus is not installed and we are not root (no sudo)" >&2
        exit 1
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-prometheus.sh: no apt-get here; install Prometheus (prometheus + promtool) by hand" >&2
    exit 1
fi

policy=/usr/sbin/policy-rc.d
own_policy=""
cleanup() {
    if [ -n "$own_policy" ]; then
        $SUDO rm -f "$policy"
    fi
}
trap cleanup EXIT
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# scripts/install-prometheus.sh: start no service while it installs\nexit 101\n' \
        | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    own_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
install_pkg() {
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold prometheus
}

echo "install-prometheus.sh: installing Debian's prometheus package" >&2
if ! install_pkg; then
    # Package lists missing or stale: refresh once and retry.
    $SUDO apt-get update
    if ! install_pkg; then
        # A failed postinst (service start refused, no systemd) can leave the package
        # unpacked but not configured; finish configuration and accept it when the
        # binaries are usable.
        $SUDO env DEBIAN_FRONTEND=noninteractive dpkg --configure -a || true
    fi
fi

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    echo "install-prometheus.sh: prometheus/promtool still not on PATH after install" >&2
    exit 1
fi
prometheus --version 2>&1 | head -n1 >&2
