#!/usr/bin/env bash
# Runs every test of crossenc: builds the default model folder if missing, builds the
# workspace once, then runs unit, property and end-to-end tests (nextest when installed).
# The end-to-end tests start the real binary, real worker processes and the real model;
# the observability test, a real Prometheus with the shipped config and rules.
set -euo pipefail
cd "$(dirname "$0")/.."

# One build cache shared by every checkout on this machine, so CI rebuilds little.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/crossenc/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

scripts/fetch-model.sh
# The observability test runs a real Prometheus and promtool (Debian's package).
scripts/install-prometheus.sh
# The bf16 path builds against oneDNN (its tests fail on a bf16-capable CPU without it).
scripts/install-onednn.sh
cargo build --workspace --all-targets --locked

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --failure-output final
else
  cargo test --workspace --locked --no-fail-fast
fi
