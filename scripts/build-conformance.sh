#!/usr/bin/env bash
# The engine with the shared conformance cases (`--features conformance`) and its JS bindings
# in pkg-conformance/ (gitignored), for tests/browser/conformance.test.mjs and
# cpu-fallback.test.mjs. Not part of the npm package; `npm run build` builds pkg/ without the
# feature.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-tools.sh
# The same target dir, profile and flags as `npm run build`: the dependencies are shared; only
# tandem-web relinks.
. scripts/wasm-env.sh
cargo build --profile "$wasm_profile" --target wasm32-unknown-unknown -p tandem-web --features conformance
rm -rf pkg-conformance
wasm-bindgen --target web --out-dir pkg-conformance "$wasm_out"
echo "pkg-conformance/tandem_web_bg.wasm: $(stat -c %s pkg-conformance/tandem_web_bg.wasm) bytes"
