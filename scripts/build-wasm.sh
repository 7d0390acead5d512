#!/usr/bin/env bash
# `npm run build`: the engine for wasm32, its JS bindings (pkg/), then wasm-opt -Oz.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-tools.sh
cargo build --release --target wasm32-unknown-unknown -p tandem-web
target_dir="${CARGO_TARGET_DIR:-target}"
rm -rf pkg
wasm-bindgen --target web --out-dir pkg "$target_dir/wasm32-unknown-unknown/release/tandem_web.wasm"
# binaryen from npm (Debian's wasm-opt 108 writes modules Chrome rejects). The features are
# the ones rustc enables for wasm32 by default.
wasm_opt=node_modules/.bin/wasm-opt
[ -x "$wasm_opt" ] || { echo "wasm-opt missing: run npm install first" >&2; exit 1; }
"$wasm_opt" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
    --enable-mutable-globals --enable-reference-types --enable-multivalue \
    pkg/tandem_web_bg.wasm -o pkg/tandem_web_bg.wasm
raw=$(stat -c %s pkg/tandem_web_bg.wasm)
gz=$(gzip -9 -c pkg/tandem_web_bg.wasm | wc -c)
echo "pkg/tandem_web_bg.wasm: $raw bytes, $gz gzipped"
