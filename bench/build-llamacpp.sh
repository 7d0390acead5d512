#!/usr/bin/env bash
# Builds llama.cpp's CPU tools (llama-bench, llama-server, llama-quantize, llama-cli,
# llama-perplexity) for side-by-side benchmarks, from the llama.cpp sources vendored in PyPI's
# llama-cpp-python source package, into a cache outside the repository:
#
#     ${TANDEM_CACHE_DIR:-$HOME/.cache/tandem}/llamacpp/<version>/
#         llama_cpp_python-<version>.tar.gz   the sdist, as pip downloads it
#         src/                                the unpacked sdist (vendor/llama.cpp is built)
#         build/bin/                          the tools (printed on the last line)
#
# Idempotent: a finished build is detected and only its bin dir is printed. Nothing of
# llama.cpp is ever written into the repository.
#
#     bench/build-llamacpp.sh            # prints the bin dir on its last line
#     LLAMACPP_PY_VERSION=0.3.35 bench/build-llamacpp.sh
#     bench/build-llamacpp.sh --tools llama-quantize,llama-perplexity   # only these (CI)
#
# --tools (or LLAMACPP_TOOLS, comma or space separated) builds only the tools named, which
# saves CI the server's and the bench's own compile; the default is all five, for the
# benchmark scripts. Each tool has its own stamp, so a later call that asks for more tools
# builds only what is missing (the shared libraries are already built by then).
#
# Release, native CPU (GGML_NATIVE=ON), static, no GPU backends, no curl/OpenSSL, no web UI
# (the server's UI would be downloaded at build time). About 10-15 min with -j2.
set -euo pipefail

# The newest llama-cpp-python whose vendored llama.cpp builds here (`pip index versions
# llama-cpp-python` lists them).
VERSION="${LLAMACPP_PY_VERSION:-0.3.36}"
CACHE="${TANDEM_CACHE_DIR:-$HOME/.cache/tandem}/llamacpp/$VERSION"
JOBS="${JOBS:-2}"
ALL_TOOLS=(llama-bench llama-server llama-quantize llama-cli llama-perplexity)
TOOLS="${LLAMACPP_TOOLS:-}"
while (($#)); do
    case "$1" in
        --tools) TOOLS="${2:?--tools needs a list}"; shift 2 ;;
        --tools=*) TOOLS="${1#--tools=}"; shift ;;
        *) echo "build-llamacpp: unknown argument $1 (usage: $0 [--tools a,b])" >&2; exit 2 ;;
    esac
done
if [[ -n "$TOOLS" ]]; then
    read -r -a TARGETS <<<"${TOOLS//,/ }"
    for t in "${TARGETS[@]}"; do
        [[ " ${ALL_TOOLS[*]} " == *" $t "* ]] || { echo "build-llamacpp: unknown tool $t (one of: ${ALL_TOOLS[*]})" >&2; exit 2; }
    done
else
    TARGETS=("${ALL_TOOLS[@]}")
fi
BIN="$CACHE/build/bin"
# A tool counts as built when its binary exists and its stamp says this script finished
# building it (a binary alone may be left from an interrupted or differently configured
# build). The stamp of the older, all-tools-at-once script vouches for all five.
LEGACY_STAMP="$CACHE/build/.tandem-built"
stamp() { echo "$CACHE/build/.tandem-built-$1"; }

log() { echo "build-llamacpp: $*" >&2; }

built() {
    for t in "${TARGETS[@]}"; do
        [[ -x "$BIN/$t" ]] || return 1
        [[ -f "$(stamp "$t")" || -f "$LEGACY_STAMP" ]] || return 1
    done
}

if built; then
    log "llama.cpp from llama-cpp-python $VERSION already built (${TARGETS[*]})"
    echo "$BIN"
    exit 0
fi

# Tools: cmake and a C++ compiler (Debian packages; root on this project's machines).
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(build-essential)
if ((${#need[@]})); then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    log "installing ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >&2
fi

mkdir -p "$CACHE"
SDIST="$CACHE/llama_cpp_python-$VERSION.tar.gz"
if [[ ! -f "$SDIST" ]]; then
    log "downloading the llama-cpp-python $VERSION sdist"
    # --no-binary for this package only: its build dependencies (needed by pip to read the
    # sdist's metadata) may come as wheels, rather than being compiled from source too.
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -d "$CACHE/dl" >&2
    mv "$CACHE/dl/llama_cpp_python-$VERSION.tar.gz" "$SDIST"
    rm -rf "$CACHE/dl"
fi

SRC="$CACHE/src"
if [[ ! -f "$SRC/.unpacked" ]]; then
    rm -rf "$SRC"
    mkdir -p "$SRC"
    tar xzf "$SDIST" -C "$SRC" --strip-components=1
    touch "$SRC/.unpacked"
fi
# The vendored tree: the folder whose CMakeLists.txt declares project("llama.cpp").
LLAMA=$(grep -l 'project("llama.cpp"' "$SRC"/vendor/*/CMakeLists.txt 2>/dev/null | head -1 || true)
[[ -n "$LLAMA" ]] || { log "no vendored llama.cpp under $SRC/vendor"; exit 1; }
LLAMA=$(dirname "$LLAMA")
log "llama.cpp sources: $LLAMA"

# Unknown options (names change between llama.cpp versions) only warn.
cmake -S "$LLAMA" -B "$CACHE/build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_HIP=OFF -DGGML_SYCL=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    >&2
cmake --build "$CACHE/build" --config Release -j "$JOBS" --target "${TARGETS[@]}" >&2

built_ok=1
for t in "${TARGETS[@]}"; do [[ -x "$BIN/$t" ]] || { log "missing $BIN/$t"; built_ok=0; }; done
((built_ok)) || exit 1
for t in "${TARGETS[@]}"; do touch "$(stamp "$t")"; done
log "built ${TARGETS[*]}: $("$BIN/${TARGETS[0]}" --version 2>&1 | grep -m1 -i version || true)"
echo "$BIN"
