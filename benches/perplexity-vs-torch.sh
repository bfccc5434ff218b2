#!/usr/bin/env bash
# Perplexity throughput, whittle against PyTorch + transformers, side by side in one run on the
# same threads, windows and machine: whole processes (load + score), timed with GNU time.
#
#   benches/perplexity-vs-torch.sh [PYTHON] [THREADS] [SEQLEN] [LIMIT]
#
# PYTHON needs torch and transformers (a throwaway venv: `pip install torch transformers`).
# whittle is the release binary (`cargo build --release`). The cache is a fresh temporary
# directory, so whittle's side includes its `load` stage (hashing every tensor).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-python3}"
THREADS="${2:-2}"
SEQLEN="${3:-512}"
LIMIT="${4:-8}"
GGUF="$(realpath ../shared/models/smollm2-135m)"
TEXT="$(realpath ../shared/data/wikitext-2-raw/wiki.test.raw)"
BIN="${WHITTLE_BIN:-target/release/whittle}"
[ -x "$BIN" ] || cargo build --release
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# The shared SmolLM2 is GGUF, which transformers does not read as such: both sides read the same
# f32 safetensors folder, written by `whittle export` from the dequantized model.
cat > "$TMP/export.yaml" <<YAML
models:
  smol: $GGUF
stages:
  base: {kind: load, model: smol}
YAML
"$BIN" run "$TMP/export.yaml" --cache-dir "$TMP/export-cache" --quiet > /dev/null
"$BIN" export "$TMP/export.yaml" base --out "$TMP/smollm2-f32" --cache-dir "$TMP/export-cache" --quiet > /dev/null
MODEL="$TMP/smollm2-f32"
cat > "$TMP/ppl.yaml" <<YAML
models:
  smol: $MODEL
datasets:
  wiki: {path: $TEXT}
stages:
  base: {kind: load, model: smol, tokenizer_semantics: transformers}   # the ids transformers 5 gives
  ppl: {kind: evaluate, model: base, task: perplexity, dataset: wiki, seqlen: $SEQLEN, limit: $LIMIT, batch_size: 1}
YAML
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
measure() {
    local name="$1"
    shift
    /usr/bin/time -f "$name: %e s wall, %U s user, %S s system, %M KB peak RSS" -o "$TMP/$name.time" "$@" > "$TMP/$name.out" 2>&1
    cat "$TMP/$name.time"
}
measure whittle "$BIN" run "$TMP/ppl.yaml" --cache-dir "$TMP/cache" --quiet
"$BIN" show "$TMP/ppl.yaml" --cache-dir "$TMP/cache"
grep -h "done in" "$TMP"/cache/v1/logs/*/*-base.log "$TMP"/cache/v1/logs/*/*-ppl.log | sed 's/^[^ ]* /  /'
measure torch "$PY" benches/reference/perplexity.py "$MODEL" "$TEXT" "$SEQLEN" "$LIMIT" 1 "$THREADS"
cat "$TMP/torch.out"
