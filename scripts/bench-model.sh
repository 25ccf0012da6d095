#!/usr/bin/env bash
# The model alone, crossenc against ONNX Runtime, in one run on this machine: crossenc's
# packed forward pass (`crossenc bench --no-server --model`, the public workload cut into
# batches by the scheduler) and ../shared/peers/bench_python.py's ONNX Runtime fp32
# (length-sorted batches of 32), both on 2 threads, alternating RUNS times (default 3);
# prints each run, the medians and their ratios. DTYPES (default "f32 bf16") are the
# crossenc runs: bf16 runs on AMX where the CPU has it and f32 elsewhere (its
# "products" line says which); CROSSENC_BF16_WITHOUT_AMX=1 runs it on AVX512-BF16.
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
declare -A ours; theirs=()
for run in $(seq "$RUNS"); do
  for dtype in $DTYPES; do
    out=$(RAYON_NUM_THREADS="$THREADS" "$crossenc" bench --no-server --model models/default \
      --workload "$WORKLOAD" --dtype "$dtype")
    line=$(grep '^model alone, scheduler' <<<"$out")
    ours[$dtype]+="$(sed -E 's/.*: ([0-9.]+) pairs\/s.*/\1/' <<<"$line") "
    echo "run $run crossenc $dtype: $line"
    grep -E '^model alone: products|^max score error' <<<"$out" | sed "s/^/run $run crossenc $dtype: /"
  done
  json=$("$PEERS_PYTHON" "$PEERS/bench_python.py" "$WORKLOAD" models/default ort 2>/dev/null | tail -n1)
  pairs=$("$PEERS_PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1])["pairs_s"])' "$json")
  theirs+=("$pairs")
  echo "run $run onnxruntime: $json"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m_theirs=$(median "${theirs[@]}")
echo "median pairs/s: onnxruntime fp32 $m_theirs"
for dtype in $DTYPES; do
  # shellcheck disable=SC2086 # the runs are a space-separated list
  m_ours=$(median ${ours[$dtype]})
  echo "median pairs/s: crossenc $dtype $m_ours, ratio to onnxruntime fp32 $(awk -v a="$m_ours" -v b="$m_theirs" 'BEGIN {printf "%.2f", a / b}')"
done
