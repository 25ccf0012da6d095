#!/usr/bin/env bash
# Installs oneDNN's headers and library (Debian's `libdnnl-dev`), which the bf16 path
# (`model.dtype = "bf16"`, crates/crossenc-onednn) builds against; does nothing when
# they are there. Idempotent. Needs root (or sudo) and apt-get.
#
# `--optional`: where it cannot install, warn and exit 0; crossenc then builds without
# bf16 (a worker asked for bf16 says so and runs f32). scripts/serve.sh uses this;
# scripts/test.sh does not.
set -euo pipefail

optional=""
[ "${1:-}" = "--optional" ] && optional=1
header=/usr/include/oneapi/dnnl/dnnl.h
[ -f "$header" ] && exit 0

fail() {
    echo "install-onednn.sh: $1" >&2
    if [ -n "$optional" ]; then
        echo "install-onednn.sh: building without oneDNN: dtype = \"bf16\" will run f32" >&2
        exit 0
    fi
    exit 1
}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || fail "libdnnl-dev is not installed and we are not root (no sudo)"
    SUDO="sudo"
fi
command -v apt-get >/dev/null 2>&1 || fail "no apt-get here; install oneDNN 2.x (headers + libdnnl) by hand"

install_pkg() {
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libdnnl-dev
}
echo "install-onednn.sh: installing Debian's libdnnl-dev" >&2
if ! install_pkg; then
    # Package lists missing or stale: refresh once and retry.
    $SUDO apt-get update || true
    install_pkg || fail "apt-get could not install libdnnl-dev"
fi
[ -f "$header" ] || fail "$header still missing after the install"
