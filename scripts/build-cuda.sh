#!/usr/bin/env bash
# Build whittle with `--features cuda` on a machine that has no GPU and no
# CUDA installation.
#
# What it does:
#   1. Creates a throwaway Python venv in target/cuda-toolchain/venv and
#      pip-installs NVIDIA's CUDA 13 wheels: nvcc (+ crt headers and the
#      nvvm/cicc back end), the runtime headers and libcudart, CCCL
#      (cub/thrust, used by candle's kernels), and the libraries candle links
#      dynamically: cuBLAS/cuBLASLt, cuRAND, NVRTC.
#   2. Makes the link step work without a driver: adds the unversioned
#      `libfoo.so` names the linker looks for, and generates a link-time stub
#      `lib/stubs/libcuda.so` (SONAME libcuda.so.1) that only exports the
#      driver API's symbol names. The stub is never loaded at run time: the
#      binary asks for libcuda.so.1, which only the real driver provides.
#   3. Runs `cargo build --release --features cuda` into target/cuda (so the
#      CPU build in target/ is left alone), strips the binary and prints its
#      path and size.
#
# Settings (environment variables):
#   CUDA_COMPUTE_CAP    GPU architecture to compile for (default 90: H100/H200).
#                       No GPU is queried.
#   CARGO_TARGET_DIR    default: <repo>/target/cuda
#   CUDA_TOOLKIT_PIP    version of the `cuda-toolkit` meta-package whose pins
#                       are installed (default 13.0.2, i.e. CUDA 13.0; cudarc
#                       0.19 knows CUDA 11.4 to 13.4, and PTX from 13.0 loads on
#                       any CUDA 13 driver, >= 580).
#   CUDA_FATBIN_COMPRESS  nvcc --compress-mode for the kernels compiled to
#                       machine code (default size: the fatbins shrink from
#                       ~33 MB to ~6 MB, the stripped binary from 66 to 40 MiB;
#                       none/default/speed/balance also work).
#   BUILD_NICE          niceness for pip/cargo/nvcc (default 19; 0 = none).
#   CARGO_BUILD_JOBS    passed through to cargo; also caps the parallel nvcc
#                       jobs of candle-kernels' build script (CUDAFORGE_THREADS).
#   PIP_ARGS            extra arguments for `pip install`.
#
# Running the result needs an NVIDIA driver with CUDA >= 13.0 (R580+) and the
# CUDA 13 libraries on the loader path, e.g.
#   pip install "cuda-toolkit[cudart,cublas,curand]==13.0.2"
#   LD_LIBRARY_PATH=<site-packages>/nvidia/cu13/lib ./whittle ...
set -euo pipefail

step() { printf '\n==> %s\n' "$*" >&2; }
die() {
    printf '\nbuild-cuda.sh: error: %s\n' "$*" >&2
    exit 1
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/cuda}"
CUDA_TOOLKIT_PIP="${CUDA_TOOLKIT_PIP:-13.0.2}"
BUILD_NICE="${BUILD_NICE:-19}"
TOOLCHAIN_DIR="$ROOT/target/cuda-toolchain"
VENV="$TOOLCHAIN_DIR/venv"
BIN_NAME=whittle
MAX_BYTES=$((64 * 1024 * 1024))

[[ "$CUDA_COMPUTE_CAP" =~ ^[0-9]+[a-z]?$ ]] ||
    die "CUDA_COMPUTE_CAP must look like 90, 90a, 80 or 120 (got '$CUDA_COMPUTE_CAP')"

heavy() {
    if [[ "$BUILD_NICE" != 0 ]]; then
        nice -n "$BUILD_NICE" "$@"
    else
        "$@"
    fi
}

# --- 0. prerequisites ---------------------------------------------------------
step "checking prerequisites"
for tool in python3 cargo gcc g++ strip readelf; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "'$tool' not found. On Debian: apt-get install python3 python3-venv build-essential binutils (and Rust via rustup)"
done
python3 -c 'import venv, ensurepip' 2>/dev/null ||
    die "python3 cannot create a venv with pip. On Debian: apt-get install python3-venv"

# --- 1. CUDA toolchain from PyPI ----------------------------------------------
# nvcc: compiler driver, cudafe++, ptxas, fatbinary, nvlink; crt: the compiler's
# headers; nvvm: cicc and libdevice; cudart: cuda_runtime.h, cuda.h, libcudart;
# cccl: cub/thrust/libcu++; cublas, curand, nvrtc: linked by cudarc.
EXTRAS="nvcc,crt,nvvm,cudart,cccl,cublas,curand,nvrtc"
REQ="cuda-toolkit[$EXTRAS]==$CUDA_TOOLKIT_PIP"
STAMP="$VENV/.whittle-installed"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$REQ" ]]; then
    step "CUDA wheels already installed in $VENV ($REQ)"
else
    step "installing CUDA wheels into $VENV: $REQ (about 680 MB to download, 1.2 GB unpacked)"
    rm -rf "$VENV"
    mkdir -p "$TOOLCHAIN_DIR"
    python3 -m venv "$VENV" || die "could not create the venv at $VENV"
    # shellcheck disable=SC2086
    heavy "$VENV/bin/python" -m pip install --disable-pip-version-check \
        --progress-bar off ${PIP_ARGS:-} "$REQ" ||
        die "pip install '$REQ' failed (see pip's output above)"
    printf '%s' "$REQ" >"$STAMP"
fi

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
CUDA_MAJOR="${CUDA_TOOLKIT_PIP%%.*}"
CUDA_DIR="$SITE/nvidia/cu$CUDA_MAJOR"
[[ -x "$CUDA_DIR/bin/nvcc" ]] ||
    die "no nvcc at $CUDA_DIR/bin/nvcc. The wheels lay out one tree per CUDA major version (nvidia/cu13); note that CUDA 12's nvcc wheel ships only ptxas, so CUDA 12 cannot be used this way"
[[ -f "$CUDA_DIR/include/cuda.h" ]] || die "cuda.h missing from $CUDA_DIR/include"
NVCC_RELEASE="$("$CUDA_DIR/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')"
[[ -n "$NVCC_RELEASE" ]] || die "'$CUDA_DIR/bin/nvcc --version' did not run or print a release"
echo "nvcc release $NVCC_RELEASE at $CUDA_DIR/bin/nvcc" >&2

# --- 2. make the libraries linkable ---------------------------------------------
step "preparing link-time libraries in $CUDA_DIR/lib"
LIB="$CUDA_DIR/lib"
# The wheels ship only the versioned names (libcublas.so.13); `-lcublas` needs
# libcublas.so. Link each to the library's SONAME file.
for name in cudart cublas cublasLt curand nvrtc; do
    real=""
    for f in "$LIB"/lib"$name".so.*; do
        [[ "$f" =~ /lib${name}\.so\.[0-9]+$ ]] && real="$(basename "$f")" && break
    done
    [[ -n "$real" ]] || die "lib$name.so.<N> not found in $LIB (is the wheel for $name installed?)"
    ln -sfn "$real" "$LIB/lib$name.so"
done

# libcuda.so belongs to the GPU driver, which no wheel ships. For linking we
# only need a shared object that has SONAME libcuda.so.1 and defines every
# driver function the Rust code may reference, so generate one: the function
# names are taken from this toolkit's cuda.h (after its version macros) and,
# where cargo has it unpacked, from cudarc's bindings (which also name the
# older _v2/_v3 entry points). The stub lives only in lib/stubs under the name
# libcuda.so, so the loader, which looks for libcuda.so.1, never picks it up.
STUBS="$LIB/stubs"
mkdir -p "$STUBS"
NAMES="$TOOLCHAIN_DIR/libcuda-symbols.txt"
printf '#include <cuda.h>\n' | gcc -E -P -I"$CUDA_DIR/include" -x c - |
    grep -oE '\bcu[A-Za-z0-9_]+[[:space:]]*\(' | tr -d ' \t(' >"$NAMES.tmp" ||
    die "could not preprocess $CUDA_DIR/include/cuda.h"
CUDARC_SYS="$(cargo metadata --format-version 1 --features cuda 2>/dev/null | python3 -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc":
        print(os.path.join(os.path.dirname(p["manifest_path"]), "src", "driver", "sys", "mod.rs"))
        break
' || true)"
if [[ -n "$CUDARC_SYS" && -f "$CUDARC_SYS" ]]; then
    grep -oE '\bfn cu[A-Za-z0-9_]+\(' "$CUDARC_SYS" | sed 's/^fn //; s/($//' >>"$NAMES.tmp"
else
    echo "warning: cudarc's sources not found; the libcuda stub has only cuda.h's names" >&2
fi
sort -u "$NAMES.tmp" >"$NAMES" && rm -f "$NAMES.tmp"
[[ $(wc -l <"$NAMES") -gt 100 ]] || die "found too few driver API names for the libcuda stub ($NAMES)"
{
    echo '/* Link-time stand-in for the NVIDIA driver library; generated by scripts/build-cuda.sh. */'
    # 34 = CUDA_ERROR_STUB_LIBRARY, should it ever be called.
    while read -r sym; do echo "int $sym(void) { return 34; }"; done <"$NAMES"
} >"$TOOLCHAIN_DIR/libcuda-stub.c"
gcc -shared -fPIC -O0 -w -Wl,-soname,libcuda.so.1 \
    -o "$STUBS/libcuda.so" "$TOOLCHAIN_DIR/libcuda-stub.c" ||
    die "could not compile the libcuda link stub"
echo "libcuda stub: $STUBS/libcuda.so ($(wc -l <"$NAMES") symbols)" >&2

# --- 3. environment for candle-kernels (cudaforge -> nvcc) and cudarc ----------
export PATH="$CUDA_DIR/bin:$PATH"
export NVCC="$CUDA_DIR/bin/nvcc"
# cudarc searches <root>/lib and <root>/lib/stubs of these; cudaforge finds nvcc
# on PATH and takes include/ next to it.
export CUDA_ROOT="$CUDA_DIR" CUDA_PATH="$CUDA_DIR" CUDA_HOME="$CUDA_DIR"
export LIBRARY_PATH="$LIB:$STUBS${LIBRARY_PATH:+:$LIBRARY_PATH}"
if [[ -n "${CARGO_BUILD_JOBS:-}" && -z "${CUDAFORGE_THREADS:-}" ]]; then
    export CUDAFORGE_THREADS="$CARGO_BUILD_JOBS"
fi
# candle-kernels compiles its quantized-matmul/MoE kernels to SASS and links
# them in as fatbins, which nvcc 13.0 leaves uncompressed by default: ~33 MB
# of the binary. nvcc reads extra options from NVCC_APPEND_FLAGS; the driver
# decompresses when the module is loaded.
CUDA_FATBIN_COMPRESS="${CUDA_FATBIN_COMPRESS:-size}"
case "$CUDA_FATBIN_COMPRESS" in
size | speed | balance | default | none) ;;
*) die "CUDA_FATBIN_COMPRESS must be one of size, speed, balance, default, none (got '$CUDA_FATBIN_COMPRESS')" ;;
esac
export NVCC_APPEND_FLAGS="--compress-mode=$CUDA_FATBIN_COMPRESS${NVCC_APPEND_FLAGS:+ $NVCC_APPEND_FLAGS}"

# candle-kernels' build script does not watch NVCC_APPEND_FLAGS or the nvcc
# in use, so when either changed since the last build, rebuild it from scratch.
KERNEL_STAMP="$CARGO_TARGET_DIR/.whittle-cuda-kernels"
KERNEL_KEY="nvcc $NVCC_RELEASE at $CUDA_DIR; NVCC_APPEND_FLAGS=$NVCC_APPEND_FLAGS"
if [[ "$(cat "$KERNEL_STAMP" 2>/dev/null)" != "$KERNEL_KEY" ]] &&
    compgen -G "$CARGO_TARGET_DIR/release/build/candle-kernels-*" >/dev/null; then
    step "nvcc or its flags changed since the last build: cleaning candle-kernels"
    cargo clean --release -p candle-kernels ||
        die "cargo clean --release -p candle-kernels failed"
fi

# --- 4. build ---------------------------------------------------------------------
step "cargo build --release --features cuda (CUDA $NVCC_RELEASE, CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
start=$(date +%s)
heavy cargo build --release --features cuda ||
    die "cargo build --release --features cuda failed (see the compiler output above)"
elapsed=$(($(date +%s) - start))
mkdir -p "$CARGO_TARGET_DIR" && printf '%s' "$KERNEL_KEY" >"$KERNEL_STAMP"
echo "build took $((elapsed / 60)) min $((elapsed % 60)) s" >&2

# --- 5. strip and report ---------------------------------------------------------
BIN="$CARGO_TARGET_DIR/release/$BIN_NAME"
[[ -x "$BIN" ]] || die "cargo reported success but $BIN is missing"
OUT="$CARGO_TARGET_DIR/$BIN_NAME-cuda"
step "stripping $BIN"
strip --strip-all -o "$OUT" "$BIN" || die "strip failed on $BIN"

needed="$(readelf -d "$OUT" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
grep -q 'libcuda\.so\.1' <<<"$needed" ||
    die "$OUT does not ask for libcuda.so.1 (NEEDED: $needed)"
size=$(stat -c %s "$OUT")
echo
echo "stripped binary: $OUT"
echo "size: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }') MiB)"
echo "needs at run time: $needed"
echo "run it with an NVIDIA driver >= R580 and the CUDA $CUDA_MAJOR libraries on LD_LIBRARY_PATH (e.g. $LIB)"
if ((size > MAX_BYTES)); then
    echo "warning: the stripped binary is over 64 MiB" >&2
fi
