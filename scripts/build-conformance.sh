#!/usr/bin/env bash
# The engine with the shared conformance cases (`--features conformance`) and its JS bindings
# in pkg-conformance/ (gitignored), for tests/browser/conformance.test.mjs. Not part of the
# npm package; `npm run build` builds pkg/ without the feature.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-tools.sh
# The same target dir as `npm run build`: the dependencies are shared; only tandem-web relinks.
target_dir="${CARGO_TARGET_DIR:-target}"
cargo build --release --target wasm32-unknown-unknown -p tandem-web --features conformance
rm -rf pkg-conformance
wasm-bindgen --target web --out-dir pkg-conformance "$target_dir/wasm32-unknown-unknown/release/tandem_web.wasm"
echo "pkg-conformance/tandem_web_bg.wasm: $(stat -c %s pkg-conformance/tandem_web_bg.wasm) bytes"
