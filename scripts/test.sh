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
# The TLS, API-key and deployment tests use curl, kubectl, Python's grpcio and
# kubernetes-validate.
CROSSENC_TEST_PYTHON="$(scripts/install-test-clients.sh)"
export CROSSENC_TEST_PYTHON
cargo build --workspace --all-targets --locked

# Tests that need oneDNN's bf16 kernels end in `_on_avx512_bf16`: on a CPU without
# AVX512-BF16 they are filtered out, so that they show as skipped rather than pass.
nextest_filter=()
test_skip=()
if ! grep -qw avx512_bf16 /proc/cpuinfo; then
  echo "test.sh: this CPU has no AVX512-BF16: skipping the *_on_avx512_bf16 tests" >&2
  nextest_filter=(-E 'not test(/_on_avx512_bf16$/)')
  test_skip=(-- --skip _on_avx512_bf16)
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --failure-output final "${nextest_filter[@]}"
else
  cargo test --workspace --locked --no-fail-fast "${test_skip[@]}"
fi
