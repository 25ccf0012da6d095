#!/usr/bin/env bash
# Builds `crossenc-cuda-worker`, crossenc's model worker on NVIDIA GPUs, on any Linux
# machine (no GPU needed): CUDA 13.0's compiler and libraries come from PyPI
# (scripts/install-cuda-build.sh), and candle's kernels are compiled for one compute
# capability (CUDA_COMPUTE_CAP, default 90: H100/H200), their PTX kept so that newer GPUs
# JIT it.
#
#   scripts/build-cuda.sh [--release]    # prints the binary's path
#
# Without --release it builds in the dev profile (dependencies optimized), sharing the
# test build's cache: what CI runs. `crossenc serve --device cuda:N` starts its model
# workers from the `crossenc-cuda-worker` beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/crossenc/target}"
profile=dev
dir=debug
if [ "${1:-}" = "--release" ]; then
    profile=release
    dir=release
fi

cuda_root="$(scripts/install-cuda-build.sh)"
export PATH="$cuda_root/bin:$PATH"
export CUDA_HOME="$cuda_root" CUDA_ROOT="$cuda_root" CUDA_PATH="$cuda_root"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# candle's kernels are ~30 nvcc runs of ~30 s each: on as many cores as there are.
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
# cudarc links against $CUDA_ROOT/lib, and lib/stubs for the driver's entry points (the
# real libcuda.so.1 is the driver's, found at run time).

cargo build --locked --profile "$profile" -p crossenc-cuda-worker --features cuda >&2
echo "$CARGO_TARGET_DIR/$dir/crossenc-cuda-worker"
