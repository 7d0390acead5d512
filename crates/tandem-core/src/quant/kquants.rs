//! The K-quants: super-blocks of 256 elements in sub-blocks of 16 or 32, whose scales (and
//! minimums) are small integers times one or two f16 super-block scales. Offsets are in
//! tandem's padded block (see [`super::blocks`]).
//!
//! Several types spread 256 levels over their bytes the same way: within each half of the
//! block (128 elements), element `j` takes bit field `(j % 128) / 32` (2 bits each) of byte
//! `j % 32` of that half's 32 bytes ([`crumb`]); the K-quants' extra high bits take bit
//! `j / 32` of byte `j % 32` of a 32-byte mask ([`mask_bit`]).

use super::blocks::{f16_at, Format};

/// 2-bit field of element j (0..256) from 64 bytes packed four fields a byte.
#[inline(always)]
fn crumb(qs: &[u8], j: usize) -> i32 {
    ((qs[(j / 128) * 32 + j % 32] >> (2 * ((j % 128) / 32))) & 3) as i32
}

/// Bit j / 32 of byte j % 32 of a 32-byte mask.
#[inline(always)]
fn mask_bit(mask: &[u8], j: usize) -> i32 {
    ((mask[j % 32] >> (j / 32)) & 1) as i32
}

/// Q4_K / Q5_K low nibble of element j (0..256) from 128 bytes: each 64 elements take 32
/// bytes, the first 32 elements the low nibbles, the next 32 the high ones.
#[inline(always)]
fn nibble_k(qs: &[u8], j: usize) -> i32 {
    ((qs[(j / 64) * 32 + j % 32] >> (4 * ((j / 32) % 2))) & 0x0f) as i32
}

/// Q4_K / Q5_K 6-bit (scale, min) of sub-block s (0..8), packed in 12 bytes: for s < 4 the
/// low 6 bits of bytes s and s + 4; for s >= 4 the nibbles of byte s + 4 below the top 2 bits
/// of bytes s - 4 and s.
#[inline(always)]
fn scale_min_k(sc: &[u8], s: usize) -> (u8, u8) {
    if s < 4 {
        (sc[s] & 63, sc[s + 4] & 63)
    } else {
        ((sc[s + 4] & 0x0f) | ((sc[s - 4] >> 6) << 4), (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4))
    }
}

/// Q2_K: 16 sub-blocks of 16; scales[s] holds the scale (low nibble) and min (high nibble);
/// x = (d * sc) * q - (dmin * m), q a 2-bit level.
pub(crate) struct Q2K;

impl Format for Q2K {
    const ELEMS: usize = 256;
    const SUB: usize = 16;
    #[inline(always)]
    fn scales(blk: &[u8], s: usize) -> (f32, f32) {
        let sc = blk[s];
        (f16_at(blk, 80) * (sc & 0x0f) as f32, f16_at(blk, 82) * (sc >> 4) as f32)
    }
    #[inline(always)]
    fn level(blk: &[u8], j: usize) -> i32 {
        crumb(&blk[16..80], j)
    }
}

/// Q3_K: 16 sub-blocks of 16 with signed 6-bit scales (stored + 32): low 4 bits in nibble
/// s / 8 of byte s % 8, high 2 bits in field s / 4 of byte 8 + s % 4. A level is its 2-bit
/// field minus 4 where its hmask bit is clear: x = (d * (sc - 32)) * q, q in -4..=3.
pub(crate) struct Q3K;

impl Format for Q3K {
    const ELEMS: usize = 256;
    const SUB: usize = 16;
    #[inline(always)]
    fn scales(blk: &[u8], s: usize) -> (f32, f32) {
        let sc = &blk[96..108];
        let low = (sc[s % 8] >> (4 * (s / 8))) & 0x0f;
        let high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
        (f16_at(blk, 108) * ((low | (high << 4)) as i32 - 32) as f32, 0.0)
    }
    #[inline(always)]
    fn level(blk: &[u8], j: usize) -> i32 {
        crumb(&blk[32..96], j) - 4 * (1 - mask_bit(&blk[0..32], j))
    }
}

/// Q4_K: 8 sub-blocks of 32; x = (d * sc) * q - (dmin * m), q a nibble.
pub(crate) struct Q4K;

impl Format for Q4K {
    const ELEMS: usize = 256;
    const SUB: usize = 32;
    #[inline(always)]
    fn scales(blk: &[u8], s: usize) -> (f32, f32) {
        let (sc, m) = scale_min_k(&blk[4..16], s);
        (f16_at(blk, 0) * sc as f32, f16_at(blk, 2) * m as f32)
    }
    #[inline(always)]
    fn level(blk: &[u8], j: usize) -> i32 {
        nibble_k(&blk[16..144], j)
    }
    #[inline(always)]
    fn levels(blk: &[u8], out: &mut [f32]) {
        // Each 32 bytes: 32 low nibbles, then the 32 high ones.
        for (o, qs) in out[..256].chunks_exact_mut(64).zip(blk[16..144].chunks_exact(32)) {
            let (lo, hi) = o.split_at_mut(32);
            for ((l, h), &b) in lo.iter_mut().zip(hi).zip(qs) {
                *l = (b & 0x0f) as f32;
                *h = (b >> 4) as f32;
            }
        }
    }
}

/// Q5_K: Q4_K with a fifth bit per level from the 32-byte qh mask.
pub(crate) struct Q5K;

impl Format for Q5K {
    const ELEMS: usize = 256;
    const SUB: usize = 32;
    #[inline(always)]
    fn scales(blk: &[u8], s: usize) -> (f32, f32) {
        Q4K::scales(blk, s)
    }
    #[inline(always)]
    fn level(blk: &[u8], j: usize) -> i32 {
        nibble_k(&blk[48..176], j) | (mask_bit(&blk[16..48], j) << 4)
    }
    #[inline(always)]
    fn levels(blk: &[u8], out: &mut [f32]) {
        let mask = &blk[16..48];
        for (c, (o, qs)) in
            out[..256].chunks_exact_mut(64).zip(blk[48..176].chunks_exact(32)).enumerate()
        {
            let (lo, hi) = o.split_at_mut(32);
            for (l, ((lv, hv), &b)) in lo.iter_mut().zip(hi).zip(qs).enumerate() {
                *lv = ((b & 0x0f) | (((mask[l] >> (2 * c)) & 1) << 4)) as f32;
                *hv = ((b >> 4) | (((mask[l] >> (2 * c + 1)) & 1) << 4)) as f32;
            }
        }
    }
}

/// Q6_K: 16 sub-blocks of 16 with i8 scales; a 6-bit level (stored + 32) has its low nibble
/// in ql (each half of the block: 64 bytes, elements 0..64 low nibbles, 64..128 high
/// nibbles) and its top 2 bits in qh (as [`crumb`]); x = (d * sc) * (q - 32).
pub(crate) struct Q6K;

impl Format for Q6K {
    const ELEMS: usize = 256;
    const SUB: usize = 16;
    #[inline(always)]
    fn scales(blk: &[u8], s: usize) -> (f32, f32) {
        (f16_at(blk, 208) * (blk[192 + s] as i8) as f32, 0.0)
    }
    #[inline(always)]
    fn level(blk: &[u8], j: usize) -> i32 {
        let ql = &blk[0..128];
        let low = (ql[(j / 128) * 64 + j % 64] >> (4 * ((j % 128) / 64))) & 0x0f;
        (low as i32 | (crumb(&blk[128..192], j) << 4)) - 32
    }
    #[inline(always)]
    fn levels(blk: &[u8], out: &mut [f32]) {
        // Per half: byte l of ql feeds elements l and 64 + l, byte 32 + l elements 32 + l and
        // 96 + l; byte l of qh gives all four their top 2 bits.
        for (h, o) in out[..256].chunks_exact_mut(128).enumerate() {
            let (ql, qh) = (&blk[h * 64..h * 64 + 64], &blk[128 + h * 32..128 + h * 32 + 32]);
            for l in 0..32 {
                let (a, b, hb) = (ql[l], ql[32 + l], qh[l]);
                o[l] = (((a & 0x0f) | ((hb & 3) << 4)) as i32 - 32) as f32;
                o[32 + l] = (((b & 0x0f) | (((hb >> 2) & 3) << 4)) as i32 - 32) as f32;
                o[64 + l] = (((a >> 4) | (((hb >> 4) & 3) << 4)) as i32 - 32) as f32;
                o[96 + l] = (((b >> 4) | (((hb >> 6) & 3) << 4)) as i32 - 32) as f32;
            }
        }
    }
}
