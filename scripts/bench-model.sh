#!/usr/bin/env bash
# The model alone, crossenc against ONNX Runtime, in one run on this machine: crossenc's
# packed forward pass (`crossenc bench --no-server --model`, the public workload cut into
# batches by the scheduler) and ../shared/peers/bench_python.py's ONNX Runtime fp32
# (length-sorted batches of 32), both on 2 threads, alternating RUNS times (default 3);
# prints each run, the medians and their ratios. DTYPES (default "f32 bf16") are the
# crossenc runs, each a dtype or a kernel set: `f32` and `bf16` run on the kernels timed
# fastest at load (bf16 on AMX, or on AVX512-BF16 where it timed faster than f32; the
# "products" and "kernels" lines say what ran); `gemm-f32`, `onednn-f32` and
# `onednn-bf16` run on those kernels, untimed (`crossenc bench --kernels`), to compare
# them in one run. CROSSENC_BF16_WITHOUT_AMX=1 runs bf16 even where it timed slower.
# Each run also measures this machine's fp32 limit on the workload with the peers'
# roofline.py (torch's best fp32 matmul rate over the workload's FLOPs, no padding) and
# prints every figure's share of it; ROOFLINE=0 skips that (about a minute a run).
#
# ONNX Runtime needs the peers' Python venv (several GB; see ../shared/peers/README.md):
#   python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch transformers onnxruntime onnx onnxscript
# PEERS_PYTHON points at its python (default /tmp/refenv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/crossenc/target}"
PEERS_PYTHON="${PEERS_PYTHON:-/tmp/refenv/bin/python}"
PEERS="${PEERS:-../shared/peers}"
WORKLOAD="${WORKLOAD:-bench/workload-public.jsonl}"
RUNS="${RUNS:-3}"
ROOFLINE="${ROOFLINE:-1}"
THREADS="${THREADS:-2}"
DTYPES="${DTYPES:-f32 bf16}"
# oneDNN's OpenMP threads must not spin between products (read when the binary loads).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"

if [ ! -x "$PEERS_PYTHON" ]; then
  echo "bench-model.sh: no $PEERS_PYTHON; install the peers' venv (see the comment at the top)" >&2
  exit 1
fi
scripts/fetch-model.sh
cargo build --release --locked -p crossenc
crossenc="$CARGO_TARGET_DIR/release/crossenc"

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A ours; theirs=(); limits=()
share() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.0f%%", 100 * a / b}'; }
for run in $(seq "$RUNS"); do
  limit=""
  if [ "$ROOFLINE" = 1 ]; then
    limit=$("$PEERS_PYTHON" "$PEERS/roofline.py" models/default "$WORKLOAD" 2>/dev/null |
      "$PEERS_PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["limit_pairs_s"]["fp32"])')
    limits+=("$limit")
    echo "run $run fp32 limit (roofline.py, torch's best fp32 matmul rate): $limit pairs/s"
  fi
  for dtype in $DTYPES; do
    case "$dtype" in
      *-*) choice=(--kernels "$dtype") ;;
      *) choice=(--dtype "$dtype") ;;
    esac
    out=$(RAYON_NUM_THREADS="$THREADS" "$crossenc" bench --no-server --model models/default \
      --workload "$WORKLOAD" "${choice[@]}")
    line=$(grep '^model alone, scheduler' <<<"$out")
    ours[$dtype]+="$(sed -E 's/.*: ([0-9.]+) pairs\/s.*/\1/' <<<"$line") "
    echo "run $run crossenc $dtype: $line${limit:+ ($(share "$(sed -E 's/.*: ([0-9.]+) pairs\/s.*/\1/' <<<"$line")" "$limit") of the fp32 limit)}"
    grep -E '^model alone: (products|kernels)|^max score error' <<<"$out" | sed "s/^/run $run crossenc $dtype: /"
  done
  json=$("$PEERS_PYTHON" "$PEERS/bench_python.py" "$WORKLOAD" models/default ort 2>/dev/null | tail -n1)
  pairs=$("$PEERS_PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1])["pairs_s"])' "$json")
  theirs+=("$pairs")
  echo "run $run onnxruntime: $json${limit:+ ($(share "$pairs" "$limit") of the fp32 limit)}"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m_theirs=$(median "${theirs[@]}")
m_limit=""
if [ "${#limits[@]}" -gt 0 ]; then
  m_limit=$(median "${limits[@]}")
  echo "median fp32 limit: $m_limit pairs/s ($(grep -oE 'avx512[a-z_0-9]*|avx2|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '))"
fi
echo "median pairs/s: onnxruntime fp32 $m_theirs${m_limit:+, $(share "$m_theirs" "$m_limit") of the fp32 limit}"
for dtype in $DTYPES; do
  # shellcheck disable=SC2086 # the runs are a space-separated list
  m_ours=$(median ${ours[$dtype]})
  echo "median pairs/s: crossenc $dtype $m_ours, ratio to onnxruntime fp32 $(awk -v a="$m_ours" -v b="$m_theirs" 'BEGIN {printf "%.2f", a / b}')${m_limit:+, $(share "$m_ours" "$m_limit") of the fp32 limit}"
done
