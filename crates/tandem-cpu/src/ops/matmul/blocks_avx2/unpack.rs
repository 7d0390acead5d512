//! Each GGUF block type's unpacking for the AVX2 block kernels (see the parent module): its
//! levels as 16-bit integers in element order, 16 per vector, and per 16-element chunk the
//! sub-block's (dl, ml) as the reference decoders (tandem_core::quant) compute them.

use std::arch::x86_64::*;

use tandem_core::quant::IQ4_LEVELS;

/// One block type's unpacking: levels as 16-bit integers, 16 per vector in element order, and
/// per 16-element chunk the sub-block's (dl, ml), as the reference computes them.
pub(super) trait Unpack {
    const ELEMS: usize;
    /// Elements sharing one (dl, ml): 16 or 32.
    const SUB: usize;
    /// Whether values have a minimum (x = dl * q - ml with ml != 0).
    const MIN: bool;
    /// Block at `blk` into q[..ELEMS / 16], dl[..ELEMS / 16], ml[..ELEMS / 16].
    ///
    /// # Safety
    /// `blk` points at a whole block; AVX2, FMA and F16C are enabled in every caller.
    unsafe fn unpack(blk: *const u8, q: &mut [__m256i], dl: &mut [f32], ml: &mut [f32]);
    /// Two consecutive blocks (32-element types override it to unpack both in 256-bit
    /// operations: one 16-byte block leaves half of every vector instruction idle).
    ///
    /// # Safety
    /// As [`Unpack::unpack`], for blocks at `blk` and `blk + stride`.
    #[inline(always)]
    unsafe fn unpack2(
        blk: *const u8,
        stride: usize,
        q: &mut [__m256i],
        dl: &mut [f32],
        ml: &mut [f32],
    ) {
        let c = Self::ELEMS / 16;
        // SAFETY: the caller's contract.
        unsafe {
            Self::unpack(blk, q, dl, ml);
            Self::unpack(blk.add(stride), &mut q[c..], &mut dl[c..], &mut ml[c..]);
        }
    }
}

/// The f16 at byte `off` of a block.
#[inline(always)]
unsafe fn f16_at(blk: *const u8, off: usize) -> f32 {
    // SAFETY: inside the block; F16C is enabled in every caller.
    unsafe {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            blk.add(off).cast::<u16>().read_unaligned() as i32
        )))
    }
}

#[inline(always)]
unsafe fn load32(p: *const u8) -> __m256i {
    // SAFETY: the caller's block holds 32 bytes at p.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// 32 bytes of levels (unsigned or, with `signed`, i8) as two vectors of 16 i16.
#[inline(always)]
unsafe fn widen(v: __m256i, signed: bool) -> (__m256i, __m256i) {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe {
        let (l, h) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        if signed {
            (_mm256_cvtepi8_epi16(l), _mm256_cvtepi8_epi16(h))
        } else {
            (_mm256_cvtepu8_epi16(l), _mm256_cvtepu8_epi16(h))
        }
    }
}

/// Bits `shift..shift + width` of every byte of v, in the byte's low bits.
#[inline(always)]
unsafe fn bits(v: __m256i, shift: i32, mask: i8) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller. The 16-bit shift moves bits across bytes;
    // the mask keeps only those that came from the same byte.
    unsafe {
        _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(shift)), _mm256_set1_epi8(mask))
    }
}

/// The 32 levels of a 32-element block's 5-bit quants (Q5_0, Q5_1), unsigned (0..31):
/// nibbles of 16 bytes at `qs` (elements 0..16 low, 16..32 high), fifth bit j of `qh`.
#[inline(always)]
unsafe fn levels5(qs: *const u8, qh: u32) -> __m256i {
    // SAFETY: 16 bytes at qs; AVX2 is enabled in every caller.
    unsafe {
        let v = _mm_loadu_si128(qs as *const __m128i);
        let m = _mm_set1_epi8(0x0f);
        let nib = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
        // Byte j takes qh's byte j / 8 and tests its bit j % 8.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(qh as i32),
            _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                3, 3, 3, 3,
            ),
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
        _mm256_or_si256(nib, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
    }
}

/// Two 32-element blocks' 16 bytes of nibbles at `qs0` and `qs1`, as (low nibbles, high
/// nibbles), each [block 0's 16 | block 1's 16]: elements 0..16 and 16..32 of each block.
#[inline(always)]
unsafe fn nibbles2(qs0: *const u8, qs1: *const u8) -> (__m256i, __m256i) {
    // SAFETY: 16 bytes at each; AVX2 is enabled in every caller.
    unsafe {
        let v = _mm256_loadu2_m128i(qs1 as *const __m128i, qs0 as *const __m128i);
        (_mm256_and_si256(v, _mm256_set1_epi8(0x0f)), bits(v, 4, 0x0f))
    }
}

/// Two blocks' fifth bits (Q5_0, Q5_1): all ones in byte j of lane L where bit j (`upper`:
/// bit 16 + j) of qh_L is set; lanes as [`nibbles2`].
#[inline(always)]
unsafe fn fifth2(qh: __m256i, upper: bool) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe {
        let idx = if upper {
            _mm256_setr_epi8(
                2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                3, 3, 3, 3,
            )
        } else {
            _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1,
                1, 1, 1, 1,
            )
        };
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(qh, idx), bit), bit)
    }
}

/// The u32 at byte 4 of two blocks, in the low dword of each 128-bit lane.
#[inline(always)]
unsafe fn qh2(blk: *const u8, stride: usize) -> __m256i {
    // SAFETY: both blocks hold 8 bytes; AVX2 is enabled in every caller.
    unsafe {
        let (a, b) = (
            blk.add(4).cast::<i32>().read_unaligned(),
            blk.add(stride + 4).cast::<i32>().read_unaligned(),
        );
        _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_cvtsi32_si128(a)),
            _mm_cvtsi32_si128(b),
            1,
        )
    }
}

/// Chunks 0..4 of two 32-element blocks from their levels laid out as [`nibbles2`]'s, i8
/// (`signed`) or u8.
#[inline(always)]
unsafe fn widen2(lo: __m256i, hi: __m256i, signed: bool, q: &mut [__m256i]) {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe {
        (q[0], q[2]) = widen(lo, signed);
        (q[1], q[3]) = widen(hi, signed);
    }
}

/// The f16 at byte `off` of two blocks, each twice: [a, a, b, b].
#[inline(always)]
unsafe fn halves2(blk: *const u8, stride: usize, off: usize) -> __m128 {
    // SAFETY: inside both blocks; F16C is enabled in every caller.
    unsafe {
        let (a, b) = (
            blk.add(off).cast::<u16>().read_unaligned() as i32,
            blk.add(stride + off).cast::<u16>().read_unaligned() as i32,
        );
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(a | (b << 16)));
        _mm_unpacklo_ps(v, v)
    }
}

pub(super) struct Q5_0;
impl Unpack for Q5_0 {
    const ELEMS: usize = 32;
    const SUB: usize = 32;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(blk: *const u8, q: &mut [__m256i], dl: &mut [f32], _ml: &mut [f32]) {
        // SAFETY: a whole 24-byte block at blk.
        unsafe {
            let qh = blk.add(4).cast::<u32>().read_unaligned();
            let l = _mm256_sub_epi8(levels5(blk.add(8), qh), _mm256_set1_epi8(16));
            (q[0], q[1]) = widen(l, true);
            let d = f16_at(blk, 0);
            dl[..2].fill(d);
        }
    }
    #[inline(always)]
    unsafe fn unpack2(
        blk: *const u8,
        stride: usize,
        q: &mut [__m256i],
        dl: &mut [f32],
        _ml: &mut [f32],
    ) {
        // SAFETY: two whole 24-byte blocks.
        unsafe {
            let (lo, hi) = nibbles2(blk.add(8), blk.add(stride + 8));
            let qh = qh2(blk, stride);
            // level - 16 = nibble - 16 unless the fifth bit is set.
            let sixteen = _mm256_set1_epi8(16);
            let lo = _mm256_sub_epi8(lo, _mm256_andnot_si256(fifth2(qh, false), sixteen));
            let hi = _mm256_sub_epi8(hi, _mm256_andnot_si256(fifth2(qh, true), sixteen));
            widen2(lo, hi, true, q);
            _mm_storeu_ps(dl.as_mut_ptr(), halves2(blk, stride, 0));
        }
    }
}

pub(super) struct Q5_1;
impl Unpack for Q5_1 {
    const ELEMS: usize = 32;
    const SUB: usize = 32;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(blk: *const u8, q: &mut [__m256i], dl: &mut [f32], ml: &mut [f32]) {
        // SAFETY: a whole 24-byte block at blk.
        unsafe {
            let qh = blk.add(4).cast::<u32>().read_unaligned();
            (q[0], q[1]) = widen(levels5(blk.add(8), qh), false);
            dl[..2].fill(f16_at(blk, 0));
            ml[..2].fill(-f16_at(blk, 2));
        }
    }
    #[inline(always)]
    unsafe fn unpack2(
        blk: *const u8,
        stride: usize,
        q: &mut [__m256i],
        dl: &mut [f32],
        ml: &mut [f32],
    ) {
        // SAFETY: two whole 24-byte blocks.
        unsafe {
            let (lo, hi) = nibbles2(blk.add(8), blk.add(stride + 8));
            let qh = qh2(blk, stride);
            let sixteen = _mm256_set1_epi8(16);
            let lo = _mm256_or_si256(lo, _mm256_and_si256(fifth2(qh, false), sixteen));
            let hi = _mm256_or_si256(hi, _mm256_and_si256(fifth2(qh, true), sixteen));
            widen2(lo, hi, false, q);
            _mm_storeu_ps(dl.as_mut_ptr(), halves2(blk, stride, 0));
            // -m: flip the sign bits.
            _mm_storeu_ps(ml.as_mut_ptr(), _mm_xor_ps(halves2(blk, stride, 2), _mm_set1_ps(-0.0)));
        }
    }
}

/// IQ4's level table, in both lanes, for byte shuffles.
#[inline(always)]
unsafe fn iq4_table() -> __m256i {
    // SAFETY: AVX is enabled in every caller; the table is 16 bytes.
    unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(IQ4_LEVELS.as_ptr() as *const __m128i)) }
}

pub(super) struct IQ4NL;
impl Unpack for IQ4NL {
    const ELEMS: usize = 32;
    const SUB: usize = 32;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(blk: *const u8, q: &mut [__m256i], dl: &mut [f32], _ml: &mut [f32]) {
        // SAFETY: a whole 20-byte block at blk.
        unsafe {
            let v = _mm_loadu_si128(blk.add(4) as *const __m128i);
            let m = _mm_set1_epi8(0x0f);
            let idx = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
            (q[0], q[1]) = widen(_mm256_shuffle_epi8(iq4_table(), idx), true);
            dl[..2].fill(f16_at(blk, 0));
        }
    }
    #[inline(always)]
    unsafe fn unpack2(
        blk: *const u8,
        stride: usize,
        q: &mut [__m256i],
        dl: &mut [f32],
        _ml: &mut [f32],
    ) {
        // SAFETY: two whole 20-byte blocks.
        unsafe {
            let (lo, hi) = nibbles2(blk.add(4), blk.add(stride + 4));
            let table = iq4_table();
            widen2(_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi), true, q);
            _mm_storeu_ps(dl.as_mut_ptr(), halves2(blk, stride, 0));
        }
    }
}

pub(super) struct IQ4XS;
impl Unpack for IQ4XS {
    const ELEMS: usize = 256;
    const SUB: usize = 32;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(blk: *const u8, q: &mut [__m256i], dl: &mut [f32], _ml: &mut [f32]) {
        // SAFETY: a whole 136-byte block at blk.
        unsafe {
            let table = iq4_table();
            for p in 0..4 {
                // Sub-blocks 2p (low lane) and 2p + 1 (high lane): nibbles low then high.
                let v = load32(blk.add(8 + 32 * p));
                let lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, _mm256_set1_epi8(0x0f)));
                let hi = _mm256_shuffle_epi8(table, bits(v, 4, 0x0f));
                q[4 * p] = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(lo));
                q[4 * p + 1] = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(hi));
                q[4 * p + 2] = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(lo, 1));
                q[4 * p + 3] = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(hi, 1));
            }
            let d = f16_at(blk, 0);
            let high = blk.add(2).cast::<u16>().read_unaligned();
            for s in 0..8 {
                let low = (*blk.add(4 + s / 2) >> (4 * (s % 2))) & 0x0f;
                let ls = low as i32 | ((((high >> (2 * s)) & 3) as i32) << 4);
                dl[2 * s..2 * s + 2].fill(d * (ls - 32) as f32);
            }
        }
    }
}

/// The 6-bit (scale, min) pair of sub-block s of Q4_K / Q5_K from their 12 bytes.
#[inline(always)]
fn scale_min_k(sc: &[u8; 12], s: usize) -> (u8, u8) {
    if s < 4 {
        (sc[s] & 63, sc[s + 4] & 63)
    } else {
        ((sc[s + 4] & 0x0f) | ((sc[s - 4] >> 6) << 4), (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4))
    }
}

/// Q4_K / Q5_K scales: d and dmin f16 at 0 and 2, the pairs at 4..16; sub-blocks of 32.
#[inline(always)]
unsafe fn k_scales(blk: *const u8, dl: &mut [f32], ml: &mut [f32]) {
    // SAFETY: inside the block.
    unsafe {
        let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
        let sc: &[u8; 12] = &*(blk.add(4) as *const [u8; 12]);
        for s in 0..8 {
            let (a, m) = scale_min_k(sc, s);
            dl[2 * s..2 * s + 2].fill(d * a as f32);
            ml[2 * s..2 * s + 2].fill(dmin * m as f32);
        }
    }
}

pub(super) struct Q4K;
impl Unpack for Q4K {
    const ELEMS: usize = 256;
    const SUB: usize = 32;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(blk: *const u8, q: &mut [__m256i], dl: &mut [f32], ml: &mut [f32]) {
        // SAFETY: a whole 144-byte block at blk.
        unsafe {
            for p in 0..4 {
                // 64 elements: low nibbles of 32 bytes, then their high nibbles.
                let v = load32(blk.add(16 + 32 * p));
                (q[4 * p], q[4 * p + 1]) =
                    widen(_mm256_and_si256(v, _mm256_set1_epi8(0x0f)), false);
                (q[4 * p + 2], q[4 * p + 3]) = widen(bits(v, 4, 0x0f), false);
            }
            k_scales(blk, dl, ml);
        }
    }
}

pub(super) struct Q5K;
impl Unpack for Q5K {
    const ELEMS: usize = 256;
    const SUB: usize = 32;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(blk: *const u8, q: &mut [__m256i], dl: &mut [f32], ml: &mut [f32]) {
        // SAFETY: a whole 176-byte block at blk.
        unsafe {
            let qh = load32(blk.add(16));
            for p in 0..4 {
                // As Q4_K, with element 64p + 32h + l's fifth bit in bit 2p + h of qh[l].
                let v = load32(blk.add(48 + 32 * p));
                let (five_lo, five_hi) = (bits(qh, 2 * p as i32, 1), bits(qh, 2 * p as i32 + 1, 1));
                let lo = _mm256_or_si256(
                    _mm256_and_si256(v, _mm256_set1_epi8(0x0f)),
                    _mm256_slli_epi16(five_lo, 4),
                );
                let hi = _mm256_or_si256(bits(v, 4, 0x0f), _mm256_slli_epi16(five_hi, 4));
                (q[4 * p], q[4 * p + 1]) = widen(lo, false);
                (q[4 * p + 2], q[4 * p + 3]) = widen(hi, false);
            }
            k_scales(blk, dl, ml);
        }
    }
}

pub(super) struct Q6K;
impl Unpack for Q6K {
    const ELEMS: usize = 256;
    const SUB: usize = 16;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(blk: *const u8, q: &mut [__m256i], dl: &mut [f32], _ml: &mut [f32]) {
        // SAFETY: a whole 212-byte block at blk.
        unsafe {
            for h in 0..2 {
                // 128 elements: ql bytes a (64h + l) and b (64h + 32 + l), high crumbs in
                // qh[32h + l]; element 128h + 32n + l is (a, b, a >> 4, b >> 4)[n] with crumb n.
                let (a, b, hb) = (
                    load32(blk.add(64 * h)),
                    load32(blk.add(64 * h + 32)),
                    load32(blk.add(128 + 32 * h)),
                );
                let m4 = _mm256_set1_epi8(0x0f);
                let lows = [
                    _mm256_and_si256(a, m4),
                    _mm256_and_si256(b, m4),
                    bits(a, 4, 0x0f),
                    bits(b, 4, 0x0f),
                ];
                for (n, low) in lows.into_iter().enumerate() {
                    let level =
                        _mm256_or_si256(low, _mm256_slli_epi16(bits(hb, 2 * n as i32, 3), 4));
                    let c = 8 * h + 2 * n;
                    (q[c], q[c + 1]) = widen(_mm256_sub_epi8(level, _mm256_set1_epi8(32)), true);
                }
            }
            let d = f16_at(blk, 208);
            for (s, v) in dl[..16].iter_mut().enumerate() {
                *v = d * (*blk.add(192 + s) as i8) as f32;
            }
        }
    }
}

pub(super) struct Q2K;
impl Unpack for Q2K {
    const ELEMS: usize = 256;
    const SUB: usize = 16;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(blk: *const u8, q: &mut [__m256i], dl: &mut [f32], ml: &mut [f32]) {
        // SAFETY: a whole 84-byte block at blk.
        unsafe {
            for h in 0..2 {
                // Element 128h + 32n + l is crumb n of qs[32h + l].
                let v = load32(blk.add(16 + 32 * h));
                for n in 0..4 {
                    let c = 8 * h + 2 * n;
                    (q[c], q[c + 1]) = widen(bits(v, 2 * n as i32, 3), false);
                }
            }
            let (d, dmin) = (f16_at(blk, 80), f16_at(blk, 82));
            for s in 0..16 {
                let sc = *blk.add(s);
                dl[s] = d * (sc & 0x0f) as f32;
                ml[s] = dmin * (sc >> 4) as f32;
            }
        }
    }
}

pub(super) struct Q3K;
impl Unpack for Q3K {
    const ELEMS: usize = 256;
    const SUB: usize = 16;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(blk: *const u8, q: &mut [__m256i], dl: &mut [f32], _ml: &mut [f32]) {
        // SAFETY: a whole 112-byte block at blk.
        unsafe {
            let mask = load32(blk);
            for h in 0..2 {
                // Element j = 128h + 32n + l: crumb n of qs[32h + l], minus 4 unless bit j / 32
                // of hmask[l] is set.
                let v = load32(blk.add(32 + 32 * h));
                for n in 0..4 {
                    let m = _mm256_slli_epi16(bits(mask, (4 * h + n) as i32, 1), 2);
                    let level = _mm256_sub_epi8(
                        _mm256_or_si256(bits(v, 2 * n as i32, 3), m),
                        _mm256_set1_epi8(4),
                    );
                    let c = 8 * h + 2 * n;
                    (q[c], q[c + 1]) = widen(level, true);
                }
            }
            let d = f16_at(blk, 108);
            let sc: &[u8; 12] = &*(blk.add(96) as *const [u8; 12]);
            for (s, v) in dl[..16].iter_mut().enumerate() {
                let low = (sc[s % 8] >> (4 * (s / 8))) & 0x0f;
                let high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
                *v = d * ((low | (high << 4)) as i32 - 32) as f32;
            }
        }
    }
}
