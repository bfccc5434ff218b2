#!/usr/bin/env bash
# Sequential Wanda or SparseGPT on SmolLM2-135M, whittle against PyTorch + transformers
# (benches/reference/sequential.py, the reference scripts' flow), side by side in one run on the
# same threads, calibration windows and machine: whole processes, timed with GNU time.
#
#   benches/sequential-vs-torch.sh [PYTHON] [METHOD] [PATTERN] [THREADS] [SAMPLES] [SEQLEN]
#
# METHOD is wanda or sparsegpt, PATTERN 2:4 or a fraction (0.5). PYTHON needs torch,
# transformers and safetensors (a throwaway venv). Both sides read the same f32 safetensors
# folder and the same windows: whittle's calibrate entry, handed to the script as token ids.
# whittle's side includes its load stage (hashing every tensor) and one perplexity window.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-python3}"
METHOD="${2:-wanda}"
PATTERN="${3:-2:4}"
THREADS="${4:-2}"
SAMPLES="${5:-32}"
SEQLEN="${6:-256}"
. benches/common/smollm2-f32.sh
case "$PATTERN" in
    *:*) SPARSITY="pattern: \"$PATTERN\", sparsity: 0.5" ;;
    *) SPARSITY="sparsity: $PATTERN" ;;
esac
cat > "$TMP/prune.yaml" <<YAML
models:
  smol: $MODEL
datasets:
  wiki: {path: $TEXT}
stages:
  base: {kind: load, model: smol, tokenizer_semantics: transformers}
  calib: {kind: calibrate, model: base, dataset: wiki, samples: $SAMPLES, seqlen: $SEQLEN, sampling: contiguous, statistics: []}
  pruned: {kind: prune, model: base, method: $METHOD, $SPARSITY, calibration: calib}
  ppl: {kind: evaluate, model: pruned, task: perplexity, dataset: wiki, seqlen: $SEQLEN, limit: 1}
YAML
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
measure whittle "$BIN" run "$TMP/prune.yaml" --cache-dir "$TMP/cache" --quiet
"$BIN" show "$TMP/prune.yaml" --cache-dir "$TMP/cache"
TOKENS="$(find "$TMP/cache" -name tokens.safetensors | head -1)"
"$PY" - "$TOKENS" "$TMP/ids.json" <<'PYEOF'
import json, sys
from safetensors.numpy import load_file
t = load_file(sys.argv[1])["tokens"].tolist()
json.dump({"calibration": t, "evaluation": t[:1]}, open(sys.argv[2], "w"))
PYEOF
measure torch "$PY" benches/reference/sequential.py "$MODEL" "$TMP/ids.json" "$METHOD" "$PATTERN"
cat "$TMP/torch.out"
