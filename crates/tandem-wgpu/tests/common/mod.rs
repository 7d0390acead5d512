//! Helpers shared by tandem-wgpu's integration tests.

#![allow(dead_code)] // each test file uses some of them

use tandem_core::{Backend, BufId, DType};

/// `n` deterministic values in [-1, 1) from `seed` (xorshift).
pub fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A buffer of `numel` elements of `dtype` holding `bytes`.
pub fn upload<B: Backend>(b: &mut B, dtype: DType, numel: usize, bytes: &[u8]) -> BufId {
    let id = b.alloc(dtype, numel).unwrap();
    b.write(id, bytes).unwrap();
    id
}
