#!/usr/bin/env bash
# The GPU check: one run, on a machine with an NVIDIA GPU, its driver, and Python with
# torch and transformers, but no Rust and no network. It proves the CUDA path of a
# `crossenc` and `crossenc-cuda-worker` built elsewhere (scripts/prepare-gpu-check.sh) in
# under 5 minutes:
#
#   1. makes same-shape weights for the bundled model config (transformers, fixed seed);
#   2. scores 256 pairs of the public workload with transformers on cuda:0 (f32, no TF32);
#   3. serves on cuda:0 in f32: the largest score difference, `crossenc bench` at 1 and
#      32 clients, the NVML gauges from /metrics, and a model worker killed (SIGKILL)
#      under load, timed until it is back on the GPU;
#   4. serves in bf16: its largest score difference and the same bench.
#
#   scripts/gpu-check.sh [BUNDLE]     # BUNDLE: dist/gpu-check (what prepare-gpu-check.sh made)
#
# It writes $OUT/gpu-check.md (and gpu-check.json with every figure; $OUT defaults to
# BUNDLE/out) and exits non-zero when a step fails, the report saying which.
set -euo pipefail
cd "$(dirname "$0")/.."

bundle="${1:-dist/gpu-check}"
out="${OUT:-$bundle/out}"
python="${PYTHON:-python3}"
seconds="${GPU_CHECK_BENCH_SECONDS:-15}"
mkdir -p "$out"
work="$(mktemp -d)"
figures="$work/figures.json"
echo '{"problems": []}' >"$figures"
server=""

log() { echo "gpu-check: $*" >&2; }
# Sets one figure (a JSON value) at a dotted path of the figures file.
put() {
    "$python" - "$figures" "$1" "$2" <<'EOF'
import json, sys
path, key, value = sys.argv[1], sys.argv[2].split("."), json.loads(sys.argv[3])
figures = json.load(open(path))
node = figures
for part in key[:-1]:
    node = node.setdefault(part, {})
node[key[-1]] = value
json.dump(figures, open(path, "w"))
EOF
}
finish() {
    local status=$?
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ]; then
        put "problems" "[$(printf '%s' "${failed_step:-unknown step}" | "$python" -c 'import json,sys; print(json.dumps(sys.stdin.read()))')]"
    fi
    cp "$figures" "$out/gpu-check.json"
    "$python" scripts/gpu_check.py report "$figures" "$out/gpu-check.md" || true
    if [ -f "$work/server.log" ]; then tail -n 40 "$work/server.log" >"$out/server-tail.log"; fi
    exit "$status"
}
trap finish EXIT

step() {
    failed_step="$1"
    log "$1"
}

step "unpacking the binaries"
bin="$work/bin"
mkdir -p "$bin"
# Each file of the bundle's bin/ and lib/ as it was (xz-compressed or not).
unpack() { # from-dir to-dir
    local file
    for file in "$1"/*; do
        [ -e "$file" ] || continue
        local name
        name="$(basename "$file" .xz)"
        "$python" -c 'import lzma, shutil, sys
src = lzma.open(sys.argv[1]) if sys.argv[1].endswith(".xz") else open(sys.argv[1], "rb")
shutil.copyfileobj(src, open(sys.argv[2], "wb"))' "$file" "$2/$name"
    done
}
unpack "$bundle/bin" "$bin"
chmod +x "$bin"/* 2>/dev/null || true
for program in crossenc crossenc-cuda-worker; do
    [ -x "$bin/$program" ] || { failed_step="$program is not in $bundle/bin"; exit 1; }
done
binary="$bin/crossenc"
mkdir -p "$work/lib"
unpack "$bundle/lib" "$work/lib"
put binary "\"crossenc-cuda-worker $(sha256sum "$bin/crossenc-cuda-worker" | cut -c1-16)\""

step "finding CUDA's libraries in torch's environment"
LD_LIBRARY_PATH="$work/lib:$("$python" scripts/gpu_check.py cuda-libs):${LD_LIBRARY_PATH:-}"
export LD_LIBRARY_PATH
for program in "$bin"/*; do
    if ldd "$program" | grep -q 'not found'; then
        failed_step="libraries missing for $(basename "$program") (the GPU worker links CUDA 13): $(ldd "$program" | grep 'not found' | tr -s ' \n' ' ')"
        exit 1
    fi
done
gpu="$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader -i 0 || echo unknown)"
driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader -i 0 || echo unknown)"
put gpu "\"$gpu\""
put driver "\"$driver\""

step "making same-shape weights (transformers, seed 0)"
"$python" scripts/gpu_check.py weights "$bundle/model" "$work/model"

step "scoring the reference pairs with transformers on cuda:0"
"$python" scripts/gpu_check.py reference "$work/model" bench/workload-public.jsonl "$work/reference.json"

grpc=127.0.0.1:50071
http=127.0.0.1:8071
serve() {
    "$binary" serve --model "$work/model" --device cuda:0 --dtype "$1" \
        --grpc-addr "$grpc" --http-addr "$http" --max-batch-tokens 32768 --max-batch-size 128 \
        --collection-interval 1s >>"$work/server.log" 2>&1 &
    server=$!
    for _ in $(seq 1 600); do
        curl -sf "http://$http/ready" >/dev/null 2>&1 && return 0
        kill -0 "$server" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
stop() {
    kill "$server" && wait "$server" || true
    server=""
}
bench() { # dtype
    "$binary" bench --workload bench/workload-public.jsonl --grpc-addr "$grpc" --http-addr "$http" \
        --concurrency 1,32 --duration "${seconds}s" --json "$work/bench-$1.json" >&2
    put "$1.bench" "$("$python" scripts/gpu_check.py bench-figures "$work/bench-$1.json")"
}
model_worker() { pgrep -f "crossenc-cuda-worker worker model" | head -n 1; }

for dtype in f32 bf16; do
    step "serving on cuda:0 in $dtype"
    serve "$dtype"
    step "$dtype: scores against transformers"
    put "$dtype.accuracy" "$("$python" scripts/gpu_check.py compare "http://$http" "$work/reference.json")"
    step "$dtype: bench at 1 and 32 clients"
    bench "$dtype"
    if [ "$dtype" = f32 ]; then
        step "reading the NVML gauges"
        put gauges "$("$python" scripts/gpu_check.py gauges "http://$http")"
        step "killing the model worker under load"
        old="$(model_worker)"
        "$binary" bench --workload bench/workload-public.jsonl --grpc-addr "$grpc" --http-addr "$http" \
            --concurrency 32 --duration 10s --json "$work/bench-crash.json" >&2 &
        load=$!
        sleep 3
        killed="$(date +%s.%N)"
        kill -9 "$old"
        new=""
        for _ in $(seq 1 600); do
            new="$(model_worker || true)"
            [ -n "$new" ] && [ "$new" != "$old" ] && curl -sf "http://$http/ready" >/dev/null 2>&1 && break
            sleep 0.05
        done
        back="$(date +%s.%N)"
        wait "$load"
        [ -n "$new" ] && [ "$new" != "$old" ] || { failed_step="the model worker did not come back"; exit 1; }
        crash="$("$python" - "$work/bench-crash.json" "$old" "$new" "$killed" "$back" <<'EOF'
import json, sys
run = json.load(open(sys.argv[1]))[0]["client"]
print(json.dumps({"old_pid": int(sys.argv[2]), "new_pid": int(sys.argv[3]),
                  "restart_seconds": float(sys.argv[5]) - float(sys.argv[4]),
                  "answered": run["answered"], "errors": run["errors"]}))
EOF
)"
        put crash "$crash"
    fi
    stop
done
failed_step=""
log "done: $out/gpu-check.md"
