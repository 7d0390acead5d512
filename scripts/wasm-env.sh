# Sourced by build-wasm.sh and build-conformance.sh: how the engine is compiled for wasm32, the
# same for both so that they share the dependencies' build.
#
# - simd128 (WebAssembly SIMD): the CPU fallback's kernels are written for it
#   (crates/tandem-cpu/src/ops/matmul/*_simd128.rs) and the lane loops of the other ops
#   vectorize with it. Every browser with WebAssembly since 2021 has it (Chrome/Edge 91,
#   Firefox 89, Safari 16.4); js/load.js says so where it is missing.
# - The `wasm` profile (Cargo.toml): optimized for size except the CPU backend, which is
#   optimized for speed; the reasons and measurements are there.
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+simd128"
wasm_profile=wasm
wasm_out="${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/$wasm_profile/tandem_web.wasm"
