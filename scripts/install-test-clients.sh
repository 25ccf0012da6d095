#!/usr/bin/env bash
# Installs the clients the TLS, API-key and deployment tests use, when missing: curl and
# kubectl (apt), and in a virtual environment of its own (~/.cache/crossenc/grpc-venv,
# from PyPI) Python's grpcio and kubernetes-validate (with PyYAML). Prints the venv's
# python on stdout; the test script exports it as CROSSENC_TEST_PYTHON. Idempotent.
set -euo pipefail

apt_install() {
    local SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "install-test-clients.sh: installing $*" >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2 \
        || { $SUDO apt-get update >&2 && $SUDO env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends "$@" >&2; }
}
command -v curl >/dev/null 2>&1 || apt_install curl
command -v kubectl >/dev/null 2>&1 || apt_install kubectl

venv="${CROSSENC_GRPC_VENV:-$HOME/.cache/crossenc/grpc-venv}"
if ! "$venv/bin/python" -c 'import grpc, yaml, kubernetes_validate' >/dev/null 2>&1; then
    echo "install-test-clients.sh: installing grpcio and kubernetes-validate into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'grpcio>=1.60' \
        'kubernetes-validate>=1.30' >&2
fi
echo "$venv/bin/python"
