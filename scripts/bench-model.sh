#!/usr/bin/env bash
# The model alone, crossenc against ONNX Runtime, in one run on this machine: crossenc's
# packed forward pass (`crossenc bench --no-server --model`, the public workload cut into
# batches by the scheduler) and ../shared/peers/bench_python.py's ONNX Runtime fp32
# (length-sorted batches of 32), both on 2 threads, alternating RUNS times (default 3);
# prints each run, the medians and their ratio.
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

if [ ! -x "$PEERS_PYTHON" ]; then
  echo "bench-model.sh: no $PEERS_PYTHON; install the peers' venv (see the comment at the top)" >&2
  exit 1
fi
scripts/fetch-model.sh
cargo build --release --locked -p crossenc
crossenc="$CARGO_TARGET_DIR/release/crossenc"

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
ours=(); theirs=()
for run in $(seq "$RUNS"); do
  line=$(RAYON_NUM_THREADS="$THREADS" "$crossenc" bench --no-server --model models/default \
    --workload "$WORKLOAD" | grep '^model alone')
  pairs=$(sed -E 's/.*: ([0-9.]+) pairs\/s.*/\1/' <<<"$line")
  ours+=("$pairs")
  echo "run $run crossenc: $line"
  json=$("$PEERS_PYTHON" "$PEERS/bench_python.py" "$WORKLOAD" models/default ort 2>/dev/null | tail -n1)
  pairs=$("$PEERS_PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1])["pairs_s"])' "$json")
  theirs+=("$pairs")
  echo "run $run onnxruntime: $json"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m_ours=$(median "${ours[@]}"); m_theirs=$(median "${theirs[@]}")
echo "median pairs/s: crossenc $m_ours, onnxruntime fp32 $m_theirs, ratio $(awk -v a="$m_ours" -v b="$m_theirs" 'BEGIN {printf "%.2f", a / b}')"
