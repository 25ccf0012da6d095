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
# The GPU model worker (crossenc-cuda-worker), compiled on every run so that the GPU path
# cannot rot unseen; tests/gpu.rs runs it as far as a machine without a GPU allows.
CROSSENC_TEST_CUDA_WORKER="$(scripts/build-cuda.sh)"
CROSSENC_TEST_CUDA_ROOT="$(scripts/install-cuda-build.sh)"
export CROSSENC_TEST_CUDA_WORKER CROSSENC_TEST_CUDA_ROOT

# Tests that cannot run here are filtered out by the suffix of their names, so that they
# show as skipped rather than pass: `_on_avx512_bf16` (oneDNN's bf16 kernels) on a CPU
# without AVX512-BF16, `_without_a_gpu` (they assume no NVIDIA driver) where there is one.
skipped=()
if ! grep -qw avx512_bf16 /proc/cpuinfo; then
  echo "test.sh: this CPU has no AVX512-BF16: skipping the *_on_avx512_bf16 tests" >&2
  skipped+=(_on_avx512_bf16)
fi
if [ -e /proc/driver/nvidia/version ]; then
  echo "test.sh: this machine has an NVIDIA driver: skipping the *_without_a_gpu tests" >&2
  skipped+=(_without_a_gpu)
fi
nextest_filter=()
test_skip=()
if [ "${#skipped[@]}" -gt 0 ]; then
  expression="all()"
  test_skip=(--)
  for suffix in "${skipped[@]}"; do
    expression+=" and not test(/${suffix}\$/)"
    test_skip+=(--skip "$suffix")
  done
  nextest_filter=(-E "$expression")
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --failure-output final "${nextest_filter[@]}"
else
  cargo test --workspace --locked --no-fail-fast "${test_skip[@]}"
fi
