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
. benches/common/smollm2-f32.sh
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
measure whittle "$BIN" run "$TMP/ppl.yaml" --cache-dir "$TMP/cache" --quiet
"$BIN" show "$TMP/ppl.yaml" --cache-dir "$TMP/cache"
grep -h "done in" "$TMP"/cache/v1/logs/*/*-base.log "$TMP"/cache/v1/logs/*/*-ppl.log | sed 's/^[^ ]* /  /'
measure torch "$PY" benches/reference/perplexity.py "$MODEL" "$TEXT" "$SEQLEN" "$LIMIT" 1 "$THREADS"
cat "$TMP/torch.out"
