#!/usr/bin/env bash
# Runs a configuration sweep on a release build: conf/sweep.toml by default; extra
# arguments go to `crossenc sweep` (e.g. --config my-sweep.toml --output DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/crossenc/target}"

scripts/fetch-model.sh
cargo build --release --locked -p crossenc
exec "$CARGO_TARGET_DIR/release/crossenc" sweep "$@"
