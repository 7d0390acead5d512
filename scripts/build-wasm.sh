#!/usr/bin/env bash
# `npm run build`: the engine for wasm32 (with SIMD, see wasm-env.sh), its JS bindings (pkg/),
# then wasm-opt.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-tools.sh
. scripts/wasm-env.sh
cargo build --profile "$wasm_profile" --target wasm32-unknown-unknown -p tandem-web
rm -rf pkg
wasm-bindgen --target web --out-dir pkg "$wasm_out"
# binaryen from npm (Debian's wasm-opt 108 writes modules Chrome rejects). The features are
# the ones the module uses: rustc's defaults for wasm32 plus SIMD. -Oz: it leaves the kernels'
# loops as rustc wrote them (-O3 measured no faster) and makes the module smaller.
wasm_opt=node_modules/.bin/wasm-opt
[ -x "$wasm_opt" ] || { echo "wasm-opt missing: run npm install first" >&2; exit 1; }
"$wasm_opt" -Oz --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
    --enable-mutable-globals --enable-reference-types --enable-multivalue \
    pkg/tandem_web_bg.wasm -o pkg/tandem_web_bg.wasm
raw=$(stat -c %s pkg/tandem_web_bg.wasm)
gz=$(gzip -9 -c pkg/tandem_web_bg.wasm | wc -c)
echo "pkg/tandem_web_bg.wasm: $raw bytes, $gz gzipped"
