#!/usr/bin/env bash
# Prepares what the GPU check (scripts/gpu-check.sh) needs on a GPU machine that has no
# Rust and no network, in dist/gpu-check/ (under the 64 MiB that may travel there):
#   bin/  crossenc and crossenc-cuda-worker (release, stripped, xz);
#   lib/  the libraries that such a machine may lack: crossenc's (oneDNN, OpenCL's
#         loader, OpenMP), and cuRAND for the GPU worker (torch's CUDA 13 wheels bring
#         cuBLAS and the CUDA runtime but not cuRAND, which candle links), xz;
#   model/ the default model's config and tokenizer files, not its 90 MB weights (the
#         check makes same-shape ones there).
# The workload (bench/) and the scripts travel with the working tree.
#
#   scripts/prepare-gpu-check.sh     # then, there: scripts/gpu-check.sh dist/gpu-check
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/crossenc/target}"
bundle=dist/gpu-check
limit=$((64 * 1024 * 1024))
scripts/fetch-model.sh
scripts/install-onednn.sh --optional
cargo build --release --locked -p crossenc >&2
cpu="$CARGO_TARGET_DIR/release/crossenc"
gpu="$(scripts/build-cuda.sh --release)"

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/lib" "$bundle/model"
for file in config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt; do
    if [ -f "models/default/$file" ]; then cp "models/default/$file" "$bundle/model/"; fi
done
strip -o "$bundle/bin/crossenc" "$cpu"
strip -o "$bundle/bin/crossenc-cuda-worker" "$gpu"
for lib in $(ldd "$cpu" | awk '/libdnnl|libOpenCL|libgomp/ {print $3}'); do
    cp -L "$lib" "$bundle/lib/"
done
cp -L "$(scripts/install-cuda-build.sh)/lib/libcurand.so.10" "$bundle/lib/"
# -9: cuRAND alone is 133 MB, 41 MB compressed.
xz -T0 -9 "$bundle"/bin/* "$bundle"/lib/*
size="$(du -cb "$bundle" | tail -n 1 | cut -f1)"
echo "prepare-gpu-check.sh: $bundle is $((size / 1024 / 1024)) MiB" >&2
if [ "$size" -gt "$limit" ]; then
    echo "prepare-gpu-check.sh: over the 64 MiB that may travel" >&2
    exit 1
fi
