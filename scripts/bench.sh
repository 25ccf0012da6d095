#!/usr/bin/env bash
# Benchmarks the scheduler on the shared workload: starts a release server on the default
# model, runs `crossenc bench` against it at 1 and 16 concurrent clients (pairs/s, Rerank
# p50/p99, padding from /metrics), measures the model alone on the same pairs and
# batches, then stops the server. Extra arguments go to `crossenc bench`.
# CROSSENC_BENCH_DTYPE=bf16 runs both in bf16 (AMX; see docs/performance.md on CPUs without it).
# CROSSENC_BENCH_MODEL names another model folder, and CROSSENC_BENCH_TEMPLATE a decoder's
# prompt template for both runs (e.g. qwen3-reranker).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/crossenc/target}"
GRPC_ADDR="${CROSSENC_BENCH_GRPC:-127.0.0.1:50151}"
HTTP_ADDR="${CROSSENC_BENCH_HTTP:-127.0.0.1:8100}"
WORKLOAD="${CROSSENC_BENCH_WORKLOAD:-bench/workload-public.jsonl}"
THREADS="${CROSSENC_BENCH_THREADS:-$(nproc)}"
DTYPE="${CROSSENC_BENCH_DTYPE:-f32}"
MODEL="${CROSSENC_BENCH_MODEL:-models/default}"
template=()
[ -n "${CROSSENC_BENCH_TEMPLATE:-}" ] && template=(--template "$CROSSENC_BENCH_TEMPLATE")
# oneDNN's OpenMP threads must not spin between products (the server sets it for its
# workers; the model-alone run reads it when the binary loads).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"

scripts/fetch-model.sh
cargo build --release --locked -p crossenc
crossenc="$CARGO_TARGET_DIR/release/crossenc"

"$crossenc" serve --model "$MODEL" --grpc-addr "$GRPC_ADDR" --http-addr "$HTTP_ADDR" \
  --model-threads "$THREADS" --dtype "$DTYPE" "${template[@]}" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
  if curl -fs "http://$HTTP_ADDR/ready" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then echo "the server exited" >&2; exit 1; fi
  sleep 0.5
done

# The model-alone run uses as many compute threads as the server's model worker.
RAYON_NUM_THREADS="$THREADS" "$crossenc" bench --workload "$WORKLOAD" \
  --grpc-addr "$GRPC_ADDR" --http-addr "$HTTP_ADDR" --model "$MODEL" --dtype "$DTYPE" \
  "${template[@]}" "$@"
