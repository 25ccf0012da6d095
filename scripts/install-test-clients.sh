#!/usr/bin/env bash
# Installs the clients the TLS and API-key tests talk to the server with, when missing:
# curl (Debian's package) and Python's grpcio in a virtual environment of its own
# (~/.cache/crossenc/grpc-venv, from PyPI). Prints the venv's python on stdout; the test
# script exports it as CROSSENC_TEST_PYTHON. Idempotent.
set -euo pipefail

if ! command -v curl >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "install-test-clients.sh: installing curl" >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl >&2 \
        || { $SUDO apt-get update >&2 && $SUDO env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends curl >&2; }
fi

venv="${CROSSENC_GRPC_VENV:-$HOME/.cache/crossenc/grpc-venv}"
if ! "$venv/bin/python" -c 'import grpc' >/dev/null 2>&1; then
    echo "install-test-clients.sh: installing grpcio into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'grpcio>=1.60' >&2
fi
echo "$venv/bin/python"
