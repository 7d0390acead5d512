//! AVX2 decode rows for the GGUF block types (Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL, IQ4_XS), in
//! integers: each block's levels are unpacked to 16-bit integers in registers (a few shifts,
//! masks and, for IQ4, a byte shuffle through the level table) and multiplied with
//! `madd_epi16` against the activation's 16-bit split (hi + lo / 2^15 per block of 32, see
//! [`BPrep`]), 16 elements at a time. Each 16-element chunk gives two exact integer sums, which
//! are joined and scaled in f32 by the chunk's sub-block scale times the activation's scale;
//! minimums (Q2_K, Q4_K, Q5_K, Q5_1) are subtracted once per row as sum(ml * sum x).
//!
//! Why: decoding each block to f32 with the reference formula and dotting that spends many
//! scalar operations per element (an order of magnitude behind the Q4 kernel; see NOTES.md),
//! while these kernels do about the work of the Q4 kernel per element. The integer sums are
//! exact, so the result differs from the reference only by f32 rounding of the per-chunk
//! products (the conformance cases bound it), and one or several tokens, one or two threads,
//! give the same bits: a token's arithmetic is fixed by its row alone.
//!
//! The unpacked levels follow the element order of each format (tandem_core::quant::blocks
//! documents the layouts; its scalar decoders are the reference these are tested against).

use std::arch::x86_64::*;

use tandem_core::quant::BlockView;
use tandem_core::DType;

mod unpack;
use unpack::{Unpack, IQ4NL, IQ4XS, Q2K, Q3K, Q4K, Q5K, Q5_0, Q5_1, Q6K};

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
        let (ints, scales) = super::int_split(x, super::Order::Natural, false, true);
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
        DType::Q5_0
            | DType::Q5_1
            | DType::Q2_K
            | DType::Q3_K
            | DType::Q4_K
            | DType::Q5_K
            | DType::Q6_K
            | DType::IQ4_NL
            | DType::IQ4_XS
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
    assert!(
        nt > 0 && nt <= TOKENS && out.len().is_multiple_of(nt) && k.is_multiple_of(w.layout.elems)
    );
    let rows = out.len() / nt;
    let nb = k / w.layout.elems;
    // These bounds keep every raw load below inside its slice.
    assert!(w.bytes.len() >= (r0 + rows) * nb * w.layout.stride);
    assert!(ps.iter().all(|p| p.ints.len() >= k * 2
        && p.scale16.len() >= (k / 16).next_multiple_of(CHUNKS)
        && p.sum16.len() == p.scale16.len()));
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
    assert!(dst.len().is_multiple_of(n) && w.bytes.len() >= (b0 + dst.len() / n) * w.layout.stride);
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

/// T tokens' products over rows r0..r0 + rows: out[t * rows + ri].
///
/// # Safety
/// As [`rows`], whose asserts cover every access.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_rows<U: Unpack, const T: usize>(
    w: BlockView,
    ps: &[&BPrep],
    nb: usize,
    r0: usize,
    rows: usize,
    out: &mut [f32],
) {
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
            let (mut a0, mut a1, mut am) =
                ([_mm256_setzero_ps(); T], [_mm256_setzero_ps(); T], [_mm256_setzero_ps(); T]);
            let mut b = 0;
            while b < nb {
                let g = per.min(nb - b);
                let nc = g * U::ELEMS / 16;
                let mut i = 0;
                while i + 2 <= g {
                    let c = i * U::ELEMS / 16;
                    U::unpack2(
                        base.add((b0 + b + i) * stride),
                        stride,
                        &mut q[c..],
                        &mut dl[c..],
                        &mut ml[c..],
                    );
                    i += 2;
                }
                if i < g {
                    let c = i * U::ELEMS / 16;
                    U::unpack(
                        base.add((b0 + b + i) * stride),
                        &mut q[c..],
                        &mut dl[c..],
                        &mut ml[c..],
                    );
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
                        let f = _mm256_mul_ps(
                            _mm256_loadu_ps(dl.as_ptr().add(8 * h)),
                            _mm256_loadu_ps(s.add(8 * h)),
                        );
                        _mm256_storeu_ps(fac[t].as_mut_ptr().add(8 * h), f);
                        if U::MIN {
                            am[t] = _mm256_fmadd_ps(
                                _mm256_loadu_ps(ml.as_ptr().add(8 * h)),
                                _mm256_loadu_ps(m.add(8 * h)),
                                am[t],
                            );
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
                            let hi =
                                _mm256_madd_epi16(q[c], _mm256_loadu_si256(xp as *const __m256i));
                            let lo = _mm256_madd_epi16(
                                q[c],
                                _mm256_loadu_si256(xp.add(32) as *const __m256i),
                            );
                            let v = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(lo),
                                lo_weight,
                                _mm256_cvtepi32_ps(hi),
                            );
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
                            let hi = _mm256_add_epi32(
                                _mm256_madd_epi16(q[c], _mm256_loadu_si256(xp)),
                                _mm256_madd_epi16(q[c + 1], _mm256_loadu_si256(xp.add(1))),
                            );
                            let lo = _mm256_add_epi32(
                                _mm256_madd_epi16(q[c], _mm256_loadu_si256(xp.add(2))),
                                _mm256_madd_epi16(q[c + 1], _mm256_loadu_si256(xp.add(3))),
                            );
                            let v = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(lo),
                                lo_weight,
                                _mm256_cvtepi32_ps(hi),
                            );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The prompt kernel's dequantization is the reference decoder's, bit for bit.
    #[test]
    fn dequant_is_the_reference_decoder() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
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
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
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
                assert!(
                    (out[0] - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{dtype} element {e}: {} against {want}",
                    out[0]
                );
            }
        }
    }
}
