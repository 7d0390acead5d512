//! IQ4_NL and IQ4_XS: 4-bit indices into a fixed non-linear table of 16 levels.

use super::blocks::{f16_at, Format};

/// The 16 levels a 4-bit index selects (ggml's `kvalues_iq4nl`).
pub const IQ4_LEVELS: [i8; 16] =
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// Index of element j (0..32) in 16 bytes: low nibbles hold 0..16, high nibbles 16..32.
#[inline(always)]
fn index32(qs: &[u8], j: usize) -> usize {
    (if j < 16 { qs[j] & 0x0f } else { qs[j - 16] >> 4 }) as usize
}

/// IQ4_NL: blocks of 32; x = d * level.
pub(crate) struct IQ4NL;

impl Format for IQ4NL {
    const ELEMS: usize = 32;
    const SUB: usize = 32;
    #[inline(always)]
    fn scales(blk: &[u8], _s: usize) -> (f32, f32) {
        (f16_at(blk, 0), 0.0)
    }
    #[inline(always)]
    fn level(blk: &[u8], j: usize) -> i32 {
        IQ4_LEVELS[index32(&blk[4..20], j)] as i32
    }
}

/// IQ4_XS: 8 sub-blocks of 32, each laid out as an IQ4_NL block's quants (16 bytes), with a
/// 6-bit scale (stored + 32): low 4 bits in nibble s % 2 of scales_l[s / 2], high 2 bits in
/// field s of the u16 scales_h. x = (d * (ls - 32)) * level.
pub(crate) struct IQ4XS;

impl Format for IQ4XS {
    const ELEMS: usize = 256;
    const SUB: usize = 32;
    #[inline(always)]
    fn scales(blk: &[u8], s: usize) -> (f32, f32) {
        let high = u16::from_le_bytes([blk[2], blk[3]]);
        let low = (blk[4 + s / 2] >> (4 * (s % 2))) & 0x0f;
        let ls = low as i32 | ((((high >> (2 * s)) & 3) as i32) << 4);
        (f16_at(blk, 0) * (ls - 32) as f32, 0.0)
    }
    #[inline(always)]
    fn level(blk: &[u8], j: usize) -> i32 {
        let s = j / 32;
        IQ4_LEVELS[index32(&blk[8 + 16 * s..24 + 16 * s], j % 32)] as i32
    }
}
