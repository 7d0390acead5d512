#!/usr/bin/env bash
# Installs what `npm run build` needs on a fresh machine; does nothing for tools already there.
# The wasm-bindgen CLI must match the crate's pinned wasm-bindgen version exactly.
set -euo pipefail
WASM_BINDGEN_VERSION=0.2.130

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    . "$HOME/.cargo/env"
fi
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
if [ "$(wasm-bindgen --version 2>/dev/null || true)" != "wasm-bindgen $WASM_BINDGEN_VERSION" ]; then
    # No --locked: one locked dependency of this release is missing from the registry.
    cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi
