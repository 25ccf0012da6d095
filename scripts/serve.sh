#!/usr/bin/env bash
# Quick start: builds the default model folder if missing, builds crossenc in release
# mode and serves the model on gRPC 127.0.0.1:50051 and HTTP 127.0.0.1:8000.
# Extra arguments go to `crossenc serve` (see `crossenc serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/crossenc/target}"

scripts/fetch-model.sh
# For `--dtype bf16` (AMX); without it crossenc builds and serves f32 all the same.
scripts/install-onednn.sh --optional
cargo build --release --locked -p crossenc
exec "$CARGO_TARGET_DIR/release/crossenc" serve "$@"
