#!/usr/bin/env bash
# Builds crossenc's image (Containerfile) and checks that it serves the default model:
# /ready on the admin port, a rerank on the HTTP port, /metrics. Needs podman or docker
# able to build and run containers (CONTAINER_ENGINE picks one); not part of CI, whose
# machines cannot run containers.
set -euo pipefail
cd "$(dirname "$0")/.."

engine="${CONTAINER_ENGINE:-$(command -v podman || command -v docker || true)}"
if [ -z "$engine" ]; then
  echo "container-smoke.sh: neither podman nor docker is installed (apt: podman or docker.io)" >&2
  exit 1
fi
scripts/fetch-model.sh
"$engine" build -t crossenc:smoke -f Containerfile .
name="crossenc-smoke-$$"
"$engine" run -d --rm --name "$name" -p 127.0.0.1::8000 -p 127.0.0.1::9000 \
  -v "$PWD/models/default:/models/default:ro" crossenc:smoke >/dev/null
trap '"$engine" rm -f "$name" >/dev/null 2>&1 || true' EXIT
http="$("$engine" port "$name" 8000 | head -n1)"
admin="$("$engine" port "$name" 9000 | head -n1)"
for _ in $(seq 1 240); do
  if curl -fs "http://$admin/ready" >/dev/null 2>&1; then break; fi
  sleep 0.5
done
curl -fs "http://$admin/ready"
curl -fs -H 'content-type: application/json' \
  -d '{"query":"what is a cat","texts":["a small feline","stock prices fell"]}' \
  "http://$http/rerank" | grep -q '"index"'
curl -fs "http://$admin/metrics" | grep -q '^build_info'
# Non-root, as built.
[ "$("$engine" exec "$name" id -u)" = 10001 ]
echo "container-smoke.sh: the image serves (ready, rerank, metrics, uid 10001)"
