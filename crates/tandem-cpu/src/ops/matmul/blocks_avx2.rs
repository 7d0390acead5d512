//! AVX2 decode rows for the GGUF block types (Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL, IQ4_XS), in
//! integers: each block's levels are unpacked to 16-bit integers in registers (a few shifts,
//! masks and, for IQ4, a byte shuffle through the level table) and multiplied with
//! `madd_epi16` against the activation's 16-bit split (hi + lo / 2^15 per block of 32, see
//! [`BPrep`]), 16 elements at a time. Each 16-element chunk gives two exact integer sums, which
//! are joined and scaled in f32 by the chunk's sub-block scale times the activation's scale;
//! minimums (Q2_K, Q4_K, Q5_K, Q5_1) are subtracted once per row as sum(ml * sum x).
//!
//! Why: decoding each block to f32 with the reference formula and dotting that ran at
//! 0.1-1 GB/s (a Q5_0 576 x 1536 matvec took 17x the Q4_1 one), while these kernels do about the
//! work of the Q4 kernel per element. The integer sums are exact, so the result differs from
//! the reference only by f32 rounding of the per-chunk products (the conformance cases bound
//! it), and one or several tokens, one or two threads, give the same bits: a token's
//! arithmetic is fixed by its row alone.
//!
//! The unpacked levels follow the element order of each format (tandem_core::quant::blocks
//! documents the layouts; its scalar decoders are the reference these are tested against).

use std::arch::x86_64::*;

use tandem_core::quant::{BlockView, IQ4_LEVELS};
use tandem_core::DType;

/// Elements of a group: one 256-element block, or eight 32-element ones.
const GROUP: usize = 256;
/// 16-element chunks per group.
const CHUNKS: usize = GROUP / 16;

/// The activation of one token prepared for block rows, in element order.
pub(super) struct BPrep {
    /// Per block of 32: hi of its 32 elements, then lo (see `super::int_split`). [k * 2]
    ints: Vec<i16>,
    /// The split's scale for each 16-element chunk (its 32-block's, twice), zero padded to
    /// whole groups. [k / 16 padded]
    scale16: Vec<f32>,
    /// The sum of x over each 16-element chunk, zero padded as `scale16`.
    sum16: Vec<f32>,
}

impl BPrep {
    /// k = x.len() must be a multiple of 32.
    pub(super) fn new(x: &[f32]) -> Self {
        let (ints, scales) = super::int_split(x, true);
        let chunks = x.len() / 16;
        let padded = chunks.next_multiple_of(CHUNKS);
        let mut scale16 = vec![0f32; padded];
        let mut sum16 = vec![0f32; padded];
        for c in 0..chunks {
            scale16[c] = scales[c / 2];
            sum16[c] = x[c * 16..c * 16 + 16].iter().sum();
        }
        BPrep { ints, scale16, sum16 }
    }
}

/// Whether these kernels read `dtype`.
pub(super) fn supported(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q5_0 | DType::Q5_1 | DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::IQ4_NL | DType::IQ4_XS
    )
}

/// Tokens sharing each unpacked group (the accumulators of more would not stay in registers).
pub(super) const TOKENS: usize = 4;

/// out[t * rows + ri] = dot(row r0 + ri of w, token t), for up to [`TOKENS`] tokens whose
/// preparations are `ps`; rows are whole blocks, k = 32 * the split's blocks.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn rows(w: BlockView, ps: &[&BPrep], k: usize, r0: usize, out: &mut [f32]) {
    let nt = ps.len();
    assert!(nt > 0 && nt <= TOKENS && out.len() % nt == 0 && k % w.layout.elems == 0);
    let rows = out.len() / nt;
    let nb = k / w.layout.elems;
    // These bounds keep every raw load below inside its slice.
    assert!(w.bytes.len() >= (r0 + rows) * nb * w.layout.stride);
    assert!(ps.iter().all(|p| p.ints.len() >= k * 2 && p.scale16.len() >= (k / 16).next_multiple_of(CHUNKS) && p.sum16.len() == p.scale16.len()));
    macro_rules! run {
        ($u:ty) => {
            // SAFETY: bounds asserted above; the caller guarantees the CPU features.
            unsafe {
                match nt {
                    4 => group_rows::<$u, 4>(w, ps, nb, r0, rows, out),
                    3 => group_rows::<$u, 3>(w, ps, nb, r0, rows, out),
                    2 => group_rows::<$u, 2>(w, ps, nb, r0, rows, out),
                    _ => group_rows::<$u, 1>(w, ps, nb, r0, rows, out),
                }
            }
        };
    }
    by_type!(w.dtype, run)
}

/// Expands `$run!(U)` with the [`Unpack`] of `$dtype`.
macro_rules! by_type {
    ($dtype:expr, $run:ident) => {
        match $dtype {
            DType::Q5_0 => $run!(Q5_0),
            DType::Q5_1 => $run!(Q5_1),
            DType::Q2_K => $run!(Q2K),
            DType::Q3_K => $run!(Q3K),
            DType::Q4_K => $run!(Q4K),
            DType::Q5_K => $run!(Q5K),
            DType::Q6_K => $run!(Q6K),
            DType::IQ4_NL => $run!(IQ4NL),
            DType::IQ4_XS => $run!(IQ4XS),
            d => unreachable!("{d} has no AVX2 block kernel"),
        }
    };
}
use by_type;

/// dst = whole blocks b0.. of w (dst.len() / elems of them), bit for bit the reference's
/// values: dl * q, then minus ml, each rounded (no FMA). For the prompt kernel's panels.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequant(w: BlockView, b0: usize, dst: &mut [f32]) {
    let n = w.layout.elems;
    assert!(dst.len() % n == 0 && w.bytes.len() >= (b0 + dst.len() / n) * w.layout.stride);
    macro_rules! run {
        ($u:ty) => {
            // SAFETY: bounds asserted above; the caller guarantees the CPU features.
            unsafe { dequant_as::<$u>(w, b0, dst) }
        };
    }
    by_type!(w.dtype, run)
}

/// # Safety
/// As [`dequant`], whose assert covers every access.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequant_as<U: Unpack>(w: BlockView, b0: usize, dst: &mut [f32]) {
    let stride = w.layout.stride;
    // SAFETY (whole body): bounds asserted by `dequant`.
    unsafe {
        let mut q = [_mm256_setzero_si256(); CHUNKS];
        let (mut dl, mut ml) = ([0f32; CHUNKS], [0f32; CHUNKS]);
        for (i, out) in dst.chunks_exact_mut(U::ELEMS).enumerate() {
            U::unpack(w.bytes.as_ptr().add((b0 + i) * stride), &mut q, &mut dl, &mut ml);
            for (c, o) in out.chunks_exact_mut(16).enumerate() {
                let (d, m) = (_mm256_set1_ps(dl[c]), _mm256_set1_ps(ml[c]));
                let halves = [_mm256_castsi256_si128(q[c]), _mm256_extracti128_si256(q[c], 1)];
                for (h, v) in halves.into_iter().enumerate() {
                    let mut x = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(v)));
                    if U::MIN {
                        x = _mm256_sub_ps(x, m);
                    }
                    _mm256_storeu_ps(o.as_mut_ptr().add(8 * h), x);
                }
            }
        }
    }
}

/// One block type's unpacking: levels as 16-bit integers, 16 per vector in element order, and
/// per 16-element chunk the sub-block's (dl, ml), as the reference computes them.
trait Unpack {
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
    unsafe fn unpack2(blk: *const u8, stride: usize, q: &mut [__m256i], dl: &mut [f32], ml: &mut [f32]) {
        let c = Self::ELEMS / 16;
        // SAFETY: the caller's contract.
        unsafe {
            Self::unpack(blk, q, dl, ml);
            Self::unpack(blk.add(stride), &mut q[c..], &mut dl[c..], &mut ml[c..]);
        }
    }
}

/// T tokens' products over rows r0..r0 + rows: out[t * rows + ri].
///
/// # Safety
/// As [`rows`], whose asserts cover every access.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_rows<U: Unpack, const T: usize>(w: BlockView, ps: &[&BPrep], nb: usize, r0: usize, rows: usize, out: &mut [f32]) {
    let per = GROUP / U::ELEMS;
    let stride = w.layout.stride;
    let base = w.bytes.as_ptr();
    let lo_weight = _mm256_set1_ps(1.0 / 32768.0);
    // SAFETY (whole body): bounds asserted by `rows`.
    unsafe {
        let ints: [*const i16; T] = std::array::from_fn(|t| ps[t].ints.as_ptr());
        let mut q = [_mm256_setzero_si256(); CHUNKS];
        let (mut dl, mut ml) = ([0f32; CHUNKS], [0f32; CHUNKS]);
        let mut fac = [[0f32; CHUNKS]; T];
        for ri in 0..rows {
            let b0 = (r0 + ri) * nb;
            let (mut a0, mut a1, mut am) = ([_mm256_setzero_ps(); T], [_mm256_setzero_ps(); T], [_mm256_setzero_ps(); T]);
            let mut b = 0;
            while b < nb {
                let g = per.min(nb - b);
                let nc = g * U::ELEMS / 16;
                let mut i = 0;
                while i + 2 <= g {
                    let c = i * U::ELEMS / 16;
                    U::unpack2(base.add((b0 + b + i) * stride), stride, &mut q[c..], &mut dl[c..], &mut ml[c..]);
                    i += 2;
                }
                if i < g {
                    let c = i * U::ELEMS / 16;
                    U::unpack(base.add((b0 + b + i) * stride), &mut q[c..], &mut dl[c..], &mut ml[c..]);
                }
                if nc < CHUNKS {
                    // A row's last, partial group: chunks past it weigh nothing.
                    dl[nc..].fill(0.0);
                    ml[nc..].fill(0.0);
                }
                // The group's first chunk in the activation.
                let c0 = b * U::ELEMS / 16;
                for t in 0..T {
                    let (s, m) = (ps[t].scale16.as_ptr().add(c0), ps[t].sum16.as_ptr().add(c0));
                    for h in 0..2 {
                        let f = _mm256_mul_ps(_mm256_loadu_ps(dl.as_ptr().add(8 * h)), _mm256_loadu_ps(s.add(8 * h)));
                        _mm256_storeu_ps(fac[t].as_mut_ptr().add(8 * h), f);
                        if U::MIN {
                            am[t] = _mm256_fmadd_ps(_mm256_loadu_ps(ml.as_ptr().add(8 * h)), _mm256_loadu_ps(m.add(8 * h)), am[t]);
                        }
                    }
                }
                // A macro, not a closure: a closure would not inherit the target features.
                macro_rules! chunk {
                    ($c:expr) => {{
                        let c = $c;
                        let e = (c0 + c) * 16;
                        for t in 0..T {
                            // Element e's hi and lo in its block of 32 (hi[32], lo[32]).
                            let xp = ints[t].add((e / 32) * 64 + e % 32);
                            let hi = _mm256_madd_epi16(q[c], _mm256_loadu_si256(xp as *const __m256i));
                            let lo = _mm256_madd_epi16(q[c], _mm256_loadu_si256(xp.add(32) as *const __m256i));
                            let v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), lo_weight, _mm256_cvtepi32_ps(hi));
                            let f = _mm256_broadcast_ss(&fac[t][c]);
                            if c % 2 == 0 {
                                a0[t] = _mm256_fmadd_ps(f, v, a0[t]);
                            } else {
                                a1[t] = _mm256_fmadd_ps(f, v, a1[t]);
                            }
                        }
                    }};
                }
                // Two chunks of one 32-element sub-block share their factor: their integer
                // sums are added before the conversion (half the float work per element).
                macro_rules! pair {
                    ($p:expr) => {{
                        let c = 2 * $p;
                        let e = (c0 + c) * 16;
                        for t in 0..T {
                            let xp = ints[t].add((e / 32) * 64) as *const __m256i;
                            let hi = _mm256_add_epi32(_mm256_madd_epi16(q[c], _mm256_loadu_si256(xp)), _mm256_madd_epi16(q[c + 1], _mm256_loadu_si256(xp.add(1))));
                            let lo = _mm256_add_epi32(_mm256_madd_epi16(q[c], _mm256_loadu_si256(xp.add(2))), _mm256_madd_epi16(q[c + 1], _mm256_loadu_si256(xp.add(3))));
                            let v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), lo_weight, _mm256_cvtepi32_ps(hi));
                            let f = _mm256_broadcast_ss(&fac[t][c]);
                            if $p % 2 == 0 {
                                a0[t] = _mm256_fmadd_ps(f, v, a0[t]);
                            } else {
                                a1[t] = _mm256_fmadd_ps(f, v, a1[t]);
                            }
                        }
                    }};
                }
                // Constant trip counts for whole groups, so the loops unroll.
                match (U::SUB == 32, nc == CHUNKS) {
                    (true, true) => {
                        for p in 0..CHUNKS / 2 {
                            pair!(p);
                        }
                    }
                    (true, false) => {
                        for p in 0..nc / 2 {
                            pair!(p);
                        }
                    }
                    (false, true) => {
                        for c in 0..CHUNKS {
                            chunk!(c);
                        }
                    }
                    (false, false) => {
                        for c in 0..nc {
                            chunk!(c);
                        }
                    }
                }
                b += g;
            }
            for t in 0..T {
                out[t * rows + ri] = hsum(_mm256_add_ps(a0[t], a1[t])) - hsum(am[t]);
            }
        }
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: AVX is enabled in every caller.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }
}

/// The f16 at byte `off` of a block.
#[inline(always)]
unsafe fn f16_at(blk: *const u8, off: usize) -> f32 {
    // SAFETY: inside the block; F16C is enabled in every caller.
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(blk.add(off).cast::<u16>().read_unaligned() as i32))) }
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
    unsafe { _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(shift)), _mm256_set1_epi8(mask)) }
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
            _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
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
            _mm256_setr_epi8(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3)
        } else {
            _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)
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
        let (a, b) = (blk.add(4).cast::<i32>().read_unaligned(), blk.add(stride + 4).cast::<i32>().read_unaligned());
        _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_cvtsi32_si128(a)), _mm_cvtsi32_si128(b), 1)
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
        let (a, b) = (blk.add(off).cast::<u16>().read_unaligned() as i32, blk.add(stride + off).cast::<u16>().read_unaligned() as i32);
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(a | (b << 16)));
        _mm_unpacklo_ps(v, v)
    }
}

struct Q5_0;
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
    unsafe fn unpack2(blk: *const u8, stride: usize, q: &mut [__m256i], dl: &mut [f32], _ml: &mut [f32]) {
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

struct Q5_1;
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
    unsafe fn unpack2(blk: *const u8, stride: usize, q: &mut [__m256i], dl: &mut [f32], ml: &mut [f32]) {
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

struct IQ4NL;
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
    unsafe fn unpack2(blk: *const u8, stride: usize, q: &mut [__m256i], dl: &mut [f32], _ml: &mut [f32]) {
        // SAFETY: two whole 20-byte blocks.
        unsafe {
            let (lo, hi) = nibbles2(blk.add(4), blk.add(stride + 4));
            let table = iq4_table();
            widen2(_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi), true, q);
            _mm_storeu_ps(dl.as_mut_ptr(), halves2(blk, stride, 0));
        }
    }
}

struct IQ4XS;
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

struct Q4K;
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
                (q[4 * p], q[4 * p + 1]) = widen(_mm256_and_si256(v, _mm256_set1_epi8(0x0f)), false);
                (q[4 * p + 2], q[4 * p + 3]) = widen(bits(v, 4, 0x0f), false);
            }
            k_scales(blk, dl, ml);
        }
    }
}

struct Q5K;
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
                let lo = _mm256_or_si256(_mm256_and_si256(v, _mm256_set1_epi8(0x0f)), _mm256_slli_epi16(five_lo, 4));
                let hi = _mm256_or_si256(bits(v, 4, 0x0f), _mm256_slli_epi16(five_hi, 4));
                (q[4 * p], q[4 * p + 1]) = widen(lo, false);
                (q[4 * p + 2], q[4 * p + 3]) = widen(hi, false);
            }
            k_scales(blk, dl, ml);
        }
    }
}

struct Q6K;
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
                let (a, b, hb) = (load32(blk.add(64 * h)), load32(blk.add(64 * h + 32)), load32(blk.add(128 + 32 * h)));
                let m4 = _mm256_set1_epi8(0x0f);
                let lows = [_mm256_and_si256(a, m4), _mm256_and_si256(b, m4), bits(a, 4, 0x0f), bits(b, 4, 0x0f)];
                for (n, low) in lows.into_iter().enumerate() {
                    let level = _mm256_or_si256(low, _mm256_slli_epi16(bits(hb, 2 * n as i32, 3), 4));
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

struct Q2K;
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

struct Q3K;
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
                    let level = _mm256_sub_epi8(_mm256_or_si256(bits(v, 2 * n as i32, 3), m), _mm256_set1_epi8(4));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The prompt kernel's dequantization is the reference decoder's, bit for bit.
    #[test]
    fn dequant_is_the_reference_decoder() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")) {
            eprintln!("SKIP dequant_is_the_reference_decoder: no AVX2/FMA/F16C on this CPU");
            return;
        }
        for dtype in tandem_core::dtype::BLOCK_DTYPES {
            let k = 1024;
            let bytes = random_blocks(dtype, k, 7);
            let w = BlockView::new(dtype, k, &bytes);
            let mut want = vec![0f32; k];
            w.decode_range(0, &mut want);
            let mut got = vec![0f32; k - 256];
            // SAFETY: features detected above.
            unsafe { dequant(w, 256 / w.layout.elems, &mut got) };
            let same = got.iter().zip(&want[256..]).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{dtype}");
        }
    }

    /// `numel` elements of random blocks with f16 scales in [0.01, 0.11) (of either sign with
    /// `seed` odd).
    fn random_blocks(dtype: tandem_core::DType, numel: usize, seed: u64) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1du64 ^ seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut bytes: Vec<u8> = (0..dtype.storage_bytes(numel)).map(|_| next() as u8).collect();
        let stride = dtype.block_layout().unwrap().stride;
        for blk in bytes.chunks_exact_mut(stride) {
            for &f in tandem_core::quant::blocks::f16_fields(dtype) {
                let sign = if seed % 2 == 1 && next() % 2 == 0 { -1.0 } else { 1.0 };
                let v = sign * (0.01 + (next() % 100) as f32 / 1000.0);
                blk[f..f + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
        }
        bytes
    }

    /// Each type's kernel against the reference decoder on one row of random blocks, element
    /// by element (one-hot activations): every level lands where the format puts it. (The
    /// conformance cases check whole products.)
    #[test]
    fn rows_match_the_reference_decoder() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")) {
            eprintln!("SKIP rows_match_the_reference_decoder: no AVX2/FMA/F16C on this CPU");
            return;
        }
        for dtype in tandem_core::dtype::BLOCK_DTYPES {
            let k = 512;
            let bytes = random_blocks(dtype, k, 0);
            let w = BlockView::new(dtype, k, &bytes);
            for e in [0, 1, 15, 16, 17, 31, 32, 63, 64, 100, 127, 128, 200, 255, 256, 300, 511] {
                let mut x = vec![0f32; k];
                x[e] = 1.0;
                let p = BPrep::new(&x);
                let mut out = [0f32];
                // SAFETY: features detected above.
                unsafe { rows(w, &[&p], k, 0, &mut out) };
                // Not bit-equal: the kernel rounds dl * s_x and the product with the integer
                // sum, the reference dl * q and then subtracts ml.
                let want = w.get(e);
                assert!((out[0] - want).abs() <= 1e-5 * (1.0 + want.abs()), "{dtype} element {e}: {} against {want}", out[0]);
            }
        }
    }
}
