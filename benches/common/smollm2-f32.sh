# Sourced by the *-vs-torch.sh benchmarks from the repository root: sets BIN (the release
# binary, or $WHITTLE_BIN), TEXT (WikiText-2 test), TMP (removed on exit) and MODEL, an f32
# safetensors folder of the shared SmolLM2-135M. The shared model is GGUF, which transformers does
# not read as such: both sides read this folder, written by `whittle export` from the dequantized
# model.
GGUF="$(realpath ../shared/models/smollm2-135m)"
TEXT="$(realpath ../shared/data/wikitext-2-raw/wiki.test.raw)"
BIN="${WHITTLE_BIN:-target/release/whittle}"
[ -x "$BIN" ] || cargo build --release
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
cat > "$TMP/export.yaml" <<YAML
models:
  smol: $GGUF
stages:
  base: {kind: load, model: smol}
YAML
"$BIN" run "$TMP/export.yaml" --cache-dir "$TMP/export-cache" --quiet > /dev/null
"$BIN" export "$TMP/export.yaml" base --out "$TMP/smollm2-f32" --cache-dir "$TMP/export-cache" --quiet > /dev/null
MODEL="$TMP/smollm2-f32"

# Runs a command under GNU time, its output in $TMP/NAME.out, and prints the times.
measure() {
    local name="$1"
    shift
    /usr/bin/time -f "$name: %e s wall, %U s user, %S s system, %M KB peak RSS" -o "$TMP/$name.time" "$@" > "$TMP/$name.out" 2>&1
    cat "$TMP/$name.time"
}
