//! Q5_0 and Q5_1: blocks of 32 five-bit levels, one scale (and for Q5_1 a minimum).
//!
//! Element j (0..32): its low 4 bits are the low nibble of qs[j] for j < 16, the high nibble
//! of qs[j - 16] otherwise; its fifth bit is bit j of the u32 qh.
//! Q5_0: x = d * (q - 16).  Q5_1: x = d * q + m (written dl * q - ml with ml = -m: negating
//! is exact, so the rounding is d * q's, then the sum's).

use super::blocks::{f16_at, Format};

#[inline(always)]
fn level5(blk: &[u8], j: usize) -> i32 {
    let qh = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
    let qs = &blk[8..24];
    let low = if j < 16 { qs[j] & 0x0f } else { qs[j - 16] >> 4 };
    (low as i32) | ((((qh >> j) & 1) as i32) << 4)
}

/// Every level of a Q5 block, before Q5_0's offset.
#[inline(always)]
fn levels5(blk: &[u8], out: &mut [f32]) {
    let qh = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
    let (lo, hi) = out[..32].split_at_mut(16);
    for (i, &b) in blk[8..24].iter().enumerate() {
        lo[i] = ((b & 0x0f) as u32 | (((qh >> i) & 1) << 4)) as f32;
        hi[i] = ((b >> 4) as u32 | (((qh >> (i + 16)) & 1) << 4)) as f32;
    }
}

pub(crate) struct Q5_0;

impl Format for Q5_0 {
    const ELEMS: usize = 32;
    const SUB: usize = 32;
    #[inline(always)]
    fn scales(blk: &[u8], _s: usize) -> (f32, f32) {
        (f16_at(blk, 0), 0.0)
    }
    #[inline(always)]
    fn level(blk: &[u8], j: usize) -> i32 {
        level5(blk, j) - 16
    }
    #[inline(always)]
    fn levels(blk: &[u8], out: &mut [f32]) {
        levels5(blk, out);
        for q in &mut out[..32] {
            *q -= 16.0; // exact: small integers
        }
    }
}

pub(crate) struct Q5_1;

impl Format for Q5_1 {
    const ELEMS: usize = 32;
    const SUB: usize = 32;
    #[inline(always)]
    fn scales(blk: &[u8], _s: usize) -> (f32, f32) {
        (f16_at(blk, 0), -f16_at(blk, 2))
    }
    #[inline(always)]
    fn level(blk: &[u8], j: usize) -> i32 {
        level5(blk, j)
    }
    #[inline(always)]
    fn levels(blk: &[u8], out: &mut [f32]) {
        levels5(blk, out)
    }
}
