#!/usr/bin/env bash
# Compiles every kernels/*.cu with NVRTC exactly as the CUDA backend does at run time (through
# tandem-kernels, so with the backend's own options), for Ampere (sm_80) and Hopper (sm_90),
# assembles each PTX with ptxas, and prints registers, spills and shared memory per kernel.
# Fails on any compile or assembly error. Then runs tandem-cuda's tests with NVRTC present, so
# the launch-ABI test checks every launch against the PTX. No GPU is needed: NVRTC and ptxas
# come from NVIDIA's PyPI wheels, installed once into a cache directory.
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_TOOLS_VERSION=12.8.93
cache="${TANDEM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem}"
tools="${TANDEM_CUDA_TOOLS:-$cache/cuda-tools-$CUDA_TOOLS_VERSION}"
nvrtc_lib="$tools/nvidia/cuda_nvrtc/lib"
ptxas="$tools/nvidia/cuda_nvcc/bin/ptxas"
if ! [ -x "$ptxas" ] || ! [ -e "$nvrtc_lib/libnvrtc.so.12" ]; then
    echo "installing NVRTC and ptxas $CUDA_TOOLS_VERSION (PyPI) into $tools" >&2
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --target "$tools" "nvidia-cuda-nvrtc-cu12==$CUDA_TOOLS_VERSION" "nvidia-cuda-nvcc-cu12==$CUDA_TOOLS_VERSION"
fi
export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

cargo build --release --quiet -p tandem-cuda --bin tandem-kernels
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

failed=0
printf '%-34s %-6s %5s %12s %11s %10s\n' kernel arch regs spill-stores spill-loads smem-bytes
for arch in sm_80 sm_90; do
    ./target/release/tandem-kernels --arch "$arch" --out "$out/$arch" 2>"$out/$arch.log" || {
        cat "$out/$arch.log" >&2
        failed=1
        continue
    }
    for ptx in "$out/$arch"/*.ptx; do
        log="$ptx.ptxas"
        if ! "$ptxas" -arch="$arch" -v "$ptx" -o "${ptx%.ptx}.cubin" >"$log" 2>&1; then
            echo "ptxas failed on $(basename "$ptx") for $arch:" >&2
            cat "$log" >&2
            failed=1
            continue
        fi
        grep -i 'warning' "$log" >&2 || true
        # ptxas -v prints, per entry: "Compiling entry function 'NAME'", then "F bytes stack
        # frame, N bytes spill stores, M bytes spill loads", then "Used R registers, ...,
        # S bytes smem[, ...]" (no smem part when there is none).
        awk -v arch="$arch" '
            /Compiling entry function/ { split($0, q, "'"'"'"); name = q[2]; st = 0; ld = 0 }
            /spill stores/ { for (i = 1; i <= NF; i++) { if ($i == "stores,") st = $(i - 3); if ($i == "loads") ld = $(i - 3) } }
            /Used [0-9]+ registers/ {
                regs = 0; smem = 0
                for (i = 1; i <= NF; i++) { if ($i == "registers,") regs = $(i - 1); if ($i ~ /^smem,?$/) smem = $(i - 2) }
                printf "%-34s %-6s %5s %12s %11s %10s\n", name, arch, regs, st, ld, smem
            }' "$log"
    done
done
if [ "$failed" != 0 ]; then
    echo "check-kernels: FAILED" >&2
    exit 1
fi
echo "check-kernels: every kernels/*.cu compiles with NVRTC and assembles with ptxas for sm_80 and sm_90"

# With NVRTC loadable these tests compile the kernels and check every launch against the PTX
# instead of printing SKIP.
cargo test --release -p tandem-cuda
