//! Prefill matmul (n > 1): a register-tiled micro-kernel over f32.
//!
//! Weight work is shared by all tokens: each panel of `NR` weight rows is dequantized to f32
//! once (row-major, so dequantizing needs no transpose) and then multiplied against every token.
//! The activations are packed once per call, transposed into groups of `WIDE` (or, for a short
//! last group, `NARROW`) tokens: `[k][width]`, zero padded. The micro-kernel then keeps an
//! `NR x width` tile of outputs in registers and runs k innermost: per k it loads the
//! `width` packed x values as vectors, broadcasts each row's weight and does one FMA per
//! (row, vector). With NR = 6 and two vectors that is 12 accumulators + 2 x + 1 broadcast =
//! 15 of AVX2's 16 registers, 8 loads per 12 FMAs, so the FMA ports are the limit.
//!
//! Each output is accumulated over k in index order with one accumulator, like the reference
//! (only FMA rounding differs), and k needs no alignment: rows may start mid-block.
//!
//! Parallel over chunks of output rows (multiples of `NR`).

#[cfg(target_arch = "x86_64")]
use tandem_core::QBLOCK;

use super::{dequant_into, scatter_strips, Operands};
use crate::ops::chunk_rows;
use crate::table::Weight;
use crate::Exec;

/// Weight rows per micro-tile.
const NR: usize = 6;
/// Tokens per micro-tile: two AVX2 vectors, or one for a short last group.
const WIDE: usize = 16;
const NARROW: usize = 8;

/// x transposed into token groups: group g covers tokens `t0..t0 + live` and its data is
/// `[k][width]` at `off`, padding tokens zero.
struct Packed {
    groups: Vec<Group>,
    data: Vec<f32>,
}

#[derive(Clone, Copy)]
struct Group {
    t0: usize,
    live: usize,
    width: usize,
    off: usize,
}

fn pack(x: &[f32], n: usize, k: usize) -> Packed {
    let mut groups = vec![];
    let mut data = vec![];
    let mut t0 = 0;
    while t0 < n {
        // A narrow group only when it holds every remaining token: padding 16 to 8 tokens'
        // worth of work would waste as much as the narrow kernel's shorter FMA chains cost.
        let width = if n - t0 > NARROW { WIDE } else { NARROW };
        let live = width.min(n - t0);
        let off = data.len();
        data.resize(off + k * width, 0.0);
        for t in 0..live {
            let xt = &x[(t0 + t) * k..(t0 + t + 1) * k];
            for (j, &v) in xt.iter().enumerate() {
                data[off + j * width + t] = v;
            }
        }
        groups.push(Group { t0, live, width, off });
        t0 += live;
    }
    Packed { groups, data }
}

/// The micro-kernel and row dequantization of one instruction set.
pub(super) trait Micro {
    /// tile[r][t] = sum_j panel[r][j] * xg[j * width + t], j in order; width is WIDE or
    /// NARROW.
    fn tile(panel: &[&[f32]; NR], xg: &[f32], k: usize, width: usize) -> [[f32; WIDE]; NR];
    /// dst[j] = w[start + j], as [`dequant_into`].
    fn dequant_row(w: Weight, start: usize, dst: &mut [f32]);
}

/// The loops the compiler vectorizes for the target's baseline.
pub(super) struct Portable;

impl Micro for Portable {
    fn tile(panel: &[&[f32]; NR], xg: &[f32], k: usize, width: usize) -> [[f32; WIDE]; NR] {
        if width == WIDE {
            tile_portable::<WIDE>(panel, xg, k)
        } else {
            tile_portable::<NARROW>(panel, xg, k)
        }
    }

    fn dequant_row(w: Weight, start: usize, dst: &mut [f32]) {
        dequant_into(w, start, dst)
    }
}

/// AVX2 and FMA: reached only through the AVX2 and AVX-512 kernel tables, which
/// `Kernels::of` hands out only where AVX2, FMA and F16C were detected (the SAFETY of every
/// call below).
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Micro for Avx2 {
    fn tile(panel: &[&[f32]; NR], xg: &[f32], k: usize, width: usize) -> [[f32; WIDE]; NR] {
        // SAFETY: see [`Avx2`].
        unsafe {
            if width == WIDE {
                avx2::tile::<2>(panel, xg, k)
            } else {
                avx2::tile::<1>(panel, xg, k)
            }
        }
    }

    /// Whole quantized blocks (and whole blocks of the block types AVX2 unpacks) in AVX2.
    fn dequant_row(w: Weight, start: usize, dst: &mut [f32]) {
        if let Weight::Q(q) = w {
            // Scalar up to the first block boundary and after the last one; whole blocks
            // between.
            let end = start + dst.len();
            let first = start.next_multiple_of(QBLOCK).min(end);
            let last = (end / QBLOCK * QBLOCK).max(first);
            let (head, rest) = dst.split_at_mut(first - start);
            let (mid, tail) = rest.split_at_mut(last - first);
            dequant_into(w, start, head);
            // SAFETY: see [`Avx2`].
            unsafe { avx2::dequant_blocks(q, first / QBLOCK, mid) };
            dequant_into(w, last, tail);
            return;
        }
        if let Weight::Blocks(b) = w {
            let n = b.layout.elems;
            if super::blocks_avx2::supported(b.dtype)
                && start.is_multiple_of(n)
                && dst.len().is_multiple_of(n)
            {
                // SAFETY: see [`Avx2`].
                return unsafe { super::blocks_avx2::dequant(b, start / n, dst) };
            }
        }
        dequant_into(w, start, dst)
    }
}

/// a.x: [n, k]; a.w: [m, k]; a.bias: [m]; out: [n, m]; n > 0, m > 0.
pub(super) fn prompt<M: Micro>(ex: Exec, a: &Operands, out: &mut [f32]) {
    let Operands { x, n, k, m, .. } = *a;
    let ex = ex.sized(n * k * m);
    let packed = pack(x, n, k);
    let c = chunk_rows(m, ex.threads(), NR).next_multiple_of(NR);
    // Row chunks of out: [n, m] are column strips; compute each into a local [n, rows] block
    // and scatter afterwards (n * m copies against n * m * k multiply-adds).
    let parts: Vec<(usize, Vec<f32>)> = ex.map_range(m.div_ceil(c), |ci| {
        let r0 = ci * c;
        let rows = c.min(m - r0);
        let mut local = vec![0f32; n * rows];
        chunk::<M>(&packed, a, r0, &mut local);
        (r0, local)
    });
    scatter_strips(parts, out, n, m);
}

/// out: [n, rows] for weight rows r0..r0 + rows (rows = out.len() / n).
fn chunk<M: Micro>(packed: &Packed, a: &Operands, r0: usize, out: &mut [f32]) {
    let Operands { w, bias, n, k, .. } = *a;
    let rows = out.len() / n;
    // f32 weights are used in place; the others are dequantized into `scratch`.
    let mut scratch = match w {
        Weight::F32(_) => vec![],
        _ => vec![0f32; NR * k],
    };
    // Stands in for the rows past the end of a short last panel.
    let zeros = vec![0f32; k];
    for p0 in (0..rows).step_by(NR) {
        let live = NR.min(rows - p0);
        if !matches!(w, Weight::F32(_)) {
            for (r, dst) in scratch.chunks_exact_mut(k).take(live).enumerate() {
                M::dequant_row(w, (r0 + p0 + r) * k, dst);
            }
        }
        let panel: [&[f32]; NR] = std::array::from_fn(|r| {
            if r >= live {
                &zeros[..]
            } else if let Weight::F32(v) = w {
                &v[(r0 + p0 + r) * k..(r0 + p0 + r + 1) * k]
            } else {
                &scratch[r * k..(r + 1) * k]
            }
        });
        for g in &packed.groups {
            let xg = &packed.data[g.off..g.off + k * g.width];
            let tile = M::tile(&panel, xg, k, g.width);
            for (r, tr) in tile.iter().enumerate().take(live) {
                let b = bias.map_or(0.0, |b| b[r0 + p0 + r]);
                for t in 0..g.live {
                    out[(g.t0 + t) * rows + p0 + r] = tr[t] + b;
                }
            }
        }
    }
}

/// The portable micro-kernel: the same loop nest with `W` lanes the compiler vectorizes.
fn tile_portable<const W: usize>(panel: &[&[f32]; NR], xg: &[f32], k: usize) -> [[f32; WIDE]; NR] {
    let mut acc = [[0f32; W]; NR];
    for (j, xs) in xg.chunks_exact(W).take(k).enumerate() {
        let xs: &[f32; W] = xs.try_into().unwrap();
        for r in 0..NR {
            let b = panel[r][j];
            for l in 0..W {
                acc[r][l] += b * xs[l];
            }
        }
    }
    let mut out = [[0f32; WIDE]; NR];
    for r in 0..NR {
        out[r][..W].copy_from_slice(&acc[r]);
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{NR, WIDE};
    use std::arch::x86_64::*;
    use tandem_core::{DType, QuantView, QBLOCK};

    /// As [`super::tile_portable`] with W = 8 * V, in FMAs.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const V: usize>(
        panel: &[&[f32]; NR],
        xg: &[f32],
        k: usize,
    ) -> [[f32; WIDE]; NR] {
        assert!(xg.len() >= k * V * 8 && panel.iter().all(|r| r.len() >= k) && V * 8 <= WIDE);
        let p: [*const f32; NR] = panel.map(|r| r.as_ptr());
        let xp = xg.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); V]; NR];
        for j in 0..k {
            // SAFETY: the assert above keeps every load inside `xg` and the panel rows.
            unsafe {
                let mut xv = [_mm256_setzero_ps(); V];
                for (v, xv) in xv.iter_mut().enumerate() {
                    *xv = _mm256_loadu_ps(xp.add((j * V + v) * 8));
                }
                for r in 0..NR {
                    let b = _mm256_broadcast_ss(&*p[r].add(j));
                    for v in 0..V {
                        acc[r][v] = _mm256_fmadd_ps(b, xv[v], acc[r][v]);
                    }
                }
            }
        }
        let mut out = [[0f32; WIDE]; NR];
        for r in 0..NR {
            for v in 0..V {
                // SAFETY: V * 8 <= WIDE, asserted above.
                unsafe { _mm256_storeu_ps(out[r].as_mut_ptr().add(v * 8), acc[r][v]) };
            }
        }
        out
    }

    /// dst = the whole blocks b0.. of `q` (dst.len() / 32 of them), with the formulas of
    /// `QuantView::get`: multiply and add stay separate (no FMA) so values match exactly.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dequant_blocks(q: QuantView, b0: usize, dst: &mut [f32]) {
        let nb = dst.len() / QBLOCK;
        let q8 = q.dtype == DType::Q8_0;
        let q41 = q.dtype == DType::Q4_1;
        assert!(
            q.d.len() >= b0 + nb
                && (!q41 || q.m.len() >= b0 + nb)
                && q.qs.len() >= (b0 + nb) * if q8 { QBLOCK } else { QBLOCK / 2 }
        );
        let mask = _mm_set1_epi8(0x0f);
        let eight = _mm256_set1_epi32(8);
        for (i, o) in dst.chunks_exact_mut(QBLOCK).enumerate() {
            let b = b0 + i;
            let d = _mm256_set1_ps(q.d[b].to_f32());
            let o = o.as_mut_ptr();
            // SAFETY: the assert above keeps the loads inside `qs`; `o` has 32 floats.
            unsafe {
                if q8 {
                    let qp = q.qs.as_ptr().add(b * QBLOCK);
                    for j in 0..4 {
                        let v = _mm_loadl_epi64(qp.add(j * 8) as *const __m128i);
                        let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
                        _mm256_storeu_ps(o.add(j * 8), _mm256_mul_ps(d, v));
                    }
                    continue;
                }
                let bytes = _mm_loadu_si128(q.qs.as_ptr().add(b * 16) as *const __m128i);
                let lo = _mm_and_si128(bytes, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
                // Element 2i is the low nibble of byte i, 2i + 1 the high one.
                let halves = [_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi)];
                let mn = _mm256_set1_ps(if q41 { q.m[b].to_f32() } else { 0.0 });
                for (h, v) in halves.into_iter().enumerate() {
                    for (j, v) in [v, _mm_srli_si128(v, 8)].into_iter().enumerate() {
                        let v = _mm256_cvtepu8_epi32(v);
                        let f = if q41 {
                            _mm256_add_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(v)), mn)
                        } else {
                            _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(v, eight)))
                        };
                        _mm256_storeu_ps(o.add(h * 16 + j * 8), f);
                    }
                }
            }
        }
    }
}
