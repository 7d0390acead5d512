//! Quantizers to three GGUF block types, Q4_K, Q6_K and Q5_0, in tandem's padded layout
//! (see [`super::blocks`]); the inverse of the reference decoders in `kquants.rs` and `q5.rs`.
//!
//! Every type here writes `x ≈ dl * q - ml` with integer levels `q` and per-sub-block scales
//! that are themselves quantized (6-bit or i8 multiples of an f16, or a plain f16). The work
//! is in three steps, per block:
//!
//! 1. For each sub-block, fit real-valued scale (and min) by a small search: a handful of
//!    candidate scales around the one that maps the extreme element to the extreme level;
//!    for each, round the levels, refit the scale (and min) by least squares for those
//!    levels, and keep the fit of least squared error. Clipping the extreme element slightly
//!    often lowers the error of all the others, which is why the search looks both ways.
//! 2. Quantize those scales to the block's format (f16 super-scales, 6-bit / i8 multiples).
//!    Each sub-block then tries the integer scales next to the rounded ones, since rounding
//!    the scale and the levels separately is not jointly optimal.
//! 3. Round every level against the scales exactly as the decoder will compute them (f32
//!    products of the f16 and the integer), so the stored levels fit the stored scales.
//!
//! Everything is deterministic (no randomness, fixed candidate order, ties keep the first).
//! Inputs are assumed finite; no step divides by a scale that may be zero, so blocks of
//! zeros or of subnormals give zero scales and zero levels, never NaN.

use half::f16;

/// Largest finite f16: super-scales are clamped to it rather than becoming infinite.
const F16_MAX: f32 = 65504.0;

/// Candidate offsets of the divisor around the extreme level, in steps (see module docs).
const SEARCH: [f32; 11] = [0.0, -0.5, 0.5, -1.0, 1.0, -1.5, 1.5, -2.0, 2.0, -3.0, 3.0];

fn f16_bits(x: f32) -> [u8; 2] {
    f16::from_f32(x.clamp(-F16_MAX, F16_MAX)).to_le_bytes()
}

/// The f32 value an f16 field will decode to.
fn f16_round(x: f32) -> f32 {
    f16::from_f32(x.clamp(-F16_MAX, F16_MAX)).to_f32()
}

/// `1 / a`, or 0 when `a` is 0 (its levels are then all 0). A subnormal `a` gives infinity,
/// which [`level`] clamps.
#[inline]
fn recip(a: f32) -> f32 {
    if a == 0.0 {
        0.0
    } else {
        1.0 / a
    }
}

/// `x * inv` rounded to nearest (ties to even) and clamped to `lo..=hi` (`lo <= 0 <= hi`).
/// Adding and subtracting 1.5 * 2^23 rounds without a libm call, which in these inner loops
/// was most of the time; the clamp first keeps the trick's range (and maps NaN, from 0 times
/// an infinite reciprocal, to 0 through `as`).
#[inline(always)]
fn level(x: f32, inv: f32, lo: i32, hi: i32) -> i32 {
    const MAGIC: f32 = 12582912.0;
    let v = (x * inv).clamp(lo as f32, hi as f32);
    (((v + MAGIC) - MAGIC) as i32).clamp(lo, hi)
}

/// Best scale `a` for `x ≈ a * q` with `q` in `-n..=n-1` (Q6_K's sub-blocks, Q5_0's blocks).
fn fit_symmetric(x: &[f32], n: i32) -> f32 {
    // The element of largest magnitude, signed: it goes to the end of the range with the
    // most room (-n), or to n - 1 as the other candidates.
    let m = x.iter().fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
    if m == 0.0 {
        return 0.0;
    }
    // With a = <x, q> / <q, q> (least squares for the levels q) the squared error is
    // <x, x> - <x, q>^2 / <q, q>: the best candidate has the largest <x, q>^2 / <q, q>, and
    // no second pass over the elements is needed.
    let (mut best, mut best_score) = (0.0, 0.0);
    for (end, sign) in [(n as f32, -1.0), ((n - 1) as f32, 1.0)] {
        for &off in &SEARCH {
            let div = end + off;
            if div <= 0.0 {
                continue;
            }
            let inv = recip(sign * m / div);
            let (mut xq, mut qq) = (0f32, 0f32);
            for &v in x {
                let q = level(v, inv, -n, n - 1) as f32;
                xq += v * q;
                qq += q * q;
            }
            if qq > 0.0 && xq * xq / qq > best_score {
                (best, best_score) = (xq / qq, xq * xq / qq);
            }
        }
    }
    best
}

/// Best (scale, min) for `x ≈ a * q - b` with `q` in `0..=15`, `a >= 0`, `b >= 0` (Q4_K's
/// sub-blocks: the min is subtracted, so the lowest representable value is at most 0).
fn fit_affine(x: &[f32]) -> (f32, f32) {
    let lo = x.iter().fold(0f32, |a, &v| a.min(v));
    let hi = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    if hi <= lo {
        // Constant at or below zero: all of it is the min, levels 0.
        return (0.0, -lo);
    }
    let n = x.len() as f32;
    let (sx, sxx) = (x.iter().sum::<f32>(), x.iter().map(|v| v * v).sum::<f32>());
    let mut best = (0.0, -lo, f32::INFINITY);
    for &off in &SEARCH {
        let div = 15.0 + off;
        let a = (hi - lo) / div;
        if a.is_nan() || a <= 0.0 {
            continue;
        }
        let inv = recip(a);
        let (mut sq, mut sqq, mut sxq) = (0f32, 0f32, 0f32);
        for &v in x {
            let q = level(v - lo, inv, 0, 15) as f32;
            sq += q;
            sqq += q * q;
            sxq += v * q;
        }
        // Least squares of x on (q, 1): x ≈ a q + c with c = -b <= 0.
        let det = n * sqq - sq * sq;
        let (mut a, mut c) = if det > 0.0 {
            ((n * sxq - sq * sx) / det, (sqq * sx - sq * sxq) / det)
        } else {
            (a, lo)
        };
        if c > 0.0 {
            // The min cannot add: fit the scale alone through zero.
            c = 0.0;
            a = if sqq > 0.0 { sxq / sqq } else { 0.0 };
        }
        a = a.max(0.0);
        // sum((x - a q - c)^2), expanded over the sums already at hand.
        let err = sxx - 2.0 * a * sxq - 2.0 * c * sx + a * a * sqq + 2.0 * a * c * sq + n * c * c;
        if err < best.2 {
            best = (a, -c, err);
        }
    }
    (best.0, best.1)
}

/// Quantizes 16 or 32 elements against fixed decoded scales `(dl, ml)`, levels `lo..=hi`,
/// as the decoder computes `dl * q - ml`; returns the squared error.
fn levels_for(x: &[f32], dl: f32, ml: f32, lo: i32, hi: i32, q: &mut [i32]) -> f32 {
    let (mut err, inv) = (0.0, recip(dl));
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = level(v + ml, inv, lo, hi);
        err += (v - (dl * *qi as f32 - ml)).powi(2);
    }
    err
}

/// The integers next to `r` in `lo..=hi`, `r` first (so ties keep the plain rounding).
fn around(r: i32, lo: i32, hi: i32) -> impl Iterator<Item = i32> {
    [r, r - 1, r + 1].into_iter().filter(move |&v| (lo..=hi).contains(&v))
}

/// `a / d` rounded, or 0 when `d` is 0.
fn ratio(a: f32, d: f32) -> i32 {
    if d == 0.0 {
        0
    } else {
        (a / d).round() as i32
    }
}

/// One Q4_K block (256 elements) into `blk` (144 bytes: d, dmin, scales[12], qs[128]).
pub(crate) fn q4_k_block(x: &[f32; 256], blk: &mut [u8]) {
    let mut fits = [(0f32, 0f32); 8];
    for (f, xs) in fits.iter_mut().zip(x.chunks_exact(32)) {
        *f = fit_affine(xs);
    }
    let d = f16_round(fits.iter().fold(0f32, |m, f| m.max(f.0)) / 63.0);
    let dmin = f16_round(fits.iter().fold(0f32, |m, f| m.max(f.1)) / 63.0);
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    let mut q = [0i32; 256];
    for (s, (xs, &(a, b))) in x.chunks_exact(32).zip(&fits).enumerate() {
        let mut best = (f32::INFINITY, 0, 0);
        let mut qs = [0i32; 32];
        for si in around(ratio(a, d).clamp(0, 63), 0, 63) {
            for mi in around(ratio(b, dmin).clamp(0, 63), 0, 63) {
                let err = levels_for(xs, d * si as f32, dmin * mi as f32, 0, 15, &mut qs);
                if err < best.0 {
                    best = (err, si, mi);
                    q[s * 32..s * 32 + 32].copy_from_slice(&qs);
                }
            }
        }
        (sc[s], mn[s]) = (best.1 as u8, best.2 as u8);
    }
    blk[0..2].copy_from_slice(&f16_bits(d));
    blk[2..4].copy_from_slice(&f16_bits(dmin));
    // Scales: sub-blocks 0..4 in the low 6 bits of bytes s (scale) and s + 4 (min); 4..8 in
    // the nibbles of byte s + 4 with their top 2 bits above those of 0..4.
    let scales = &mut blk[4..16];
    for s in 0..4 {
        scales[s] = (sc[s] & 63) | ((sc[s + 4] >> 4) << 6);
        scales[s + 4] = (mn[s] & 63) | ((mn[s + 4] >> 4) << 6);
        scales[s + 8] = (sc[s + 4] & 0x0f) | ((mn[s + 4] & 0x0f) << 4);
    }
    // Levels: each 64 elements share 32 bytes, the first 32 in low nibbles.
    let qs = &mut blk[16..144];
    for (j, &v) in q.iter().enumerate() {
        let byte = &mut qs[(j / 64) * 32 + j % 32];
        if (j / 32) % 2 == 0 {
            *byte = (*byte & 0xf0) | v as u8;
        } else {
            *byte = (*byte & 0x0f) | ((v as u8) << 4);
        }
    }
}

/// One Q6_K block (256 elements) into `blk` (212 bytes: ql[128], qh[64], scales[16], d, pad).
pub(crate) fn q6_k_block(x: &[f32; 256], blk: &mut [u8]) {
    let mut fits = [0f32; 16];
    for (f, xs) in fits.iter_mut().zip(x.chunks_exact(16)) {
        *f = fit_symmetric(xs, 32);
    }
    let d = f16_round(fits.iter().fold(0f32, |m, a| m.max(a.abs())) / 127.0);
    let mut q = [0i32; 256];
    let mut sc = [0i8; 16];
    for (s, (xs, &a)) in x.chunks_exact(16).zip(&fits).enumerate() {
        let mut best = f32::INFINITY;
        let mut qs = [0i32; 16];
        for si in around(ratio(a, d).clamp(-127, 127), -127, 127) {
            let err = levels_for(xs, d * si as f32, 0.0, -32, 31, &mut qs);
            if err < best {
                best = err;
                sc[s] = si as i8;
                q[s * 16..s * 16 + 16].copy_from_slice(&qs);
            }
        }
    }
    blk[..212].fill(0);
    // Stored level q + 32 (0..64): low nibble in ql (per half of 128: bytes 0..64, elements
    // 0..64 low nibbles, 64..128 high nibbles), top 2 bits in qh (per half: 32 bytes, element
    // j % 128 in bit field (j % 128) / 32 of byte j % 32).
    for (j, &v) in q.iter().enumerate() {
        let u = (v + 32) as u8;
        let (h, r) = (j / 128, j % 128);
        blk[h * 64 + r % 64] |= (u & 0x0f) << (4 * (r / 64));
        blk[128 + h * 32 + r % 32] |= (u >> 4) << (2 * (r / 32));
    }
    for (o, &s) in blk[192..208].iter_mut().zip(&sc) {
        *o = s as u8;
    }
    blk[208..210].copy_from_slice(&f16_bits(d));
}

/// One Q5_0 block (32 elements) into `blk` (24 bytes: d, pad, qh u32, qs[16]).
pub(crate) fn q5_0_block(x: &[f32; 32], blk: &mut [u8]) {
    let d = f16_round(fit_symmetric(x, 16));
    let mut q = [0i32; 32];
    levels_for(x, d, 0.0, -16, 15, &mut q);
    blk[..24].fill(0);
    blk[0..2].copy_from_slice(&f16_bits(d));
    let mut qh = 0u32;
    for (j, &v) in q.iter().enumerate() {
        let u = (v + 16) as u8;
        qh |= ((u >> 4) as u32 & 1) << j;
        blk[8 + j % 16] |= (u & 0x0f) << (4 * (j / 16));
    }
    blk[4..8].copy_from_slice(&qh.to_le_bytes());
}

/// Encodes `src` (any length; a last partial block is padded with zeros) as `dtype`, one of
/// Q4_K, Q6_K, Q5_0, into `out` (`dtype.storage_bytes(src.len())` bytes). Natively the
/// blocks are split over the machine's threads: each block is quantized on its own, so the
/// bytes are the same whatever the split.
pub(crate) fn quantize_blocks(src: &[f32], dtype: crate::DType, out: &mut [u8]) {
    #[cfg_attr(target_arch = "wasm32", allow(unused_variables))]
    let l = dtype.block_layout().expect("a block type");
    #[cfg(not(target_arch = "wasm32"))]
    {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let blocks = src.len().div_ceil(l.elems);
        // At least 64 blocks a thread: below that, starting threads costs more than it saves.
        let per = blocks.div_ceil(threads).max(64);
        if blocks > per {
            std::thread::scope(|s| {
                for (x, o) in src.chunks(per * l.elems).zip(out.chunks_mut(per * l.stride)) {
                    s.spawn(move || quantize_serial(x, dtype, o));
                }
            });
            return;
        }
    }
    quantize_serial(src, dtype, out)
}

fn quantize_serial(src: &[f32], dtype: crate::DType, out: &mut [u8]) {
    use crate::DType;
    let l = dtype.block_layout().expect("a block type");
    for (chunk, blk) in src.chunks(l.elems).zip(out.chunks_exact_mut(l.stride)) {
        let mut x = [0f32; 256];
        x[..chunk.len()].copy_from_slice(chunk);
        match dtype {
            DType::Q4_K => q4_k_block(&x, blk),
            DType::Q6_K => q6_k_block(&x, blk),
            DType::Q5_0 => q5_0_block(x[..32].try_into().unwrap(), blk),
            d => panic!("encode: quantizing to {d} is not implemented"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode, encode};
    use crate::sampling::Rng;
    use crate::DType;

    const TYPES: [DType; 3] = [DType::Q4_K, DType::Q6_K, DType::Q5_0];

    /// Roughly normal values (sum of four uniforms), deterministic.
    fn normal(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| ((0..4).map(|_| rng.next_f32()).sum::<f32>() - 2.0) * 1.7 * scale).collect()
    }

    fn round_trip(x: &[f32], d: DType) -> Vec<f32> {
        let bytes = encode(x, d);
        assert_eq!(bytes.len(), d.storage_bytes(x.len()));
        decode(&bytes, d, x.len())
    }

    /// RMS of the error over RMS of the values.
    fn rel_rms(x: &[f32], y: &[f32]) -> f32 {
        let e: f32 = x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum();
        let s: f32 = x.iter().map(|a| a * a).sum();
        (e / s).sqrt()
    }

    /// Measured on these 64 blocks of near-normal values (printed with --nocapture): Q4_K
    /// 0.0687, Q6_K 0.0159, Q5_0 0.0384, against round-to-nearest Q4_0 0.0826, Q4_1 0.0764,
    /// Q8_0 0.0052. Bounds are the measured values plus about 10%.
    #[test]
    fn round_trip_error_is_bounded() {
        let mut rng = Rng::new(7);
        let x = normal(&mut rng, 256 * 64, 0.02);
        let errs: Vec<(DType, f32)> =
            [DType::Q4_K, DType::Q6_K, DType::Q5_0, DType::Q4_0, DType::Q4_1, DType::Q8_0]
                .map(|d| (d, rel_rms(&x, &round_trip(&x, d))))
                .into();
        eprintln!("relative RMS round-trip error: {errs:?}");
        let err = |d: DType| errs.iter().find(|e| e.0 == d).unwrap().1;
        for (d, bound) in [(DType::Q4_K, 0.0755), (DType::Q6_K, 0.0175), (DType::Q5_0, 0.0422)] {
            assert!(err(d) < bound, "{d}: {} >= {bound}", err(d));
        }
        // More bits, less error; Q4_K's searched scales beat plain 4-bit rounding.
        assert!(err(DType::Q6_K) * 3.0 < err(DType::Q4_K));
        assert!(err(DType::Q4_K) < err(DType::Q4_1) && err(DType::Q4_K) < err(DType::Q4_0));
        assert!(err(DType::Q8_0) < err(DType::Q6_K) && err(DType::Q6_K) < err(DType::Q5_0));
    }

    #[test]
    fn zero_constant_and_negative_blocks() {
        for d in TYPES {
            assert!(round_trip(&[0.0; 512], d).iter().all(|&v| v == 0.0), "{d}");
            for c in [0.37f32, -0.37, 1e4] {
                let y = round_trip(&[c; 256], d);
                assert!(
                    y.iter().all(|v| (v - c).abs() <= c.abs() * 2e-3),
                    "{d} constant {c}: {:?}",
                    &y[..4]
                );
            }
            // Negative only: Q4_K carries the offset in its min; the symmetric types spend
            // half their levels on the unused sign. Measured: Q4_K 0.0105, Q6_K 0.0097, Q5_0
            // 0.0214; bounds about 1.2x.
            let mut rng = Rng::new(3);
            let x: Vec<f32> = (0..512).map(|_| -1.0 - rng.next_f32()).collect();
            let e = rel_rms(&x, &round_trip(&x, d));
            eprintln!("{d} negative block: relative RMS error {e}");
            let bound = match d {
                DType::Q4_K => 0.0125,
                DType::Q6_K => 0.0116,
                _ => 0.026,
            };
            assert!(e < bound, "{d} negative block: {e}");
        }
    }

    #[test]
    fn an_outlier_is_kept_and_spoils_only_its_block() {
        let mut rng = Rng::new(11);
        for d in TYPES {
            let mut x = normal(&mut rng, 512, 1.0);
            x[37] = 1000.0;
            let y = round_trip(&x, d);
            assert!(y.iter().all(|v| v.is_finite()), "{d}");
            assert!((y[37] - 1000.0).abs() < 10.0, "{d}: outlier {}", y[37]);
            // The second 256-block is untouched by the outlier.
            let e = rel_rms(&x[256..], &y[256..]);
            assert!(e < 0.1, "{d}: clean block error {e}");
        }
    }

    #[test]
    fn subnormal_and_tiny_inputs_give_finite_values() {
        for d in TYPES {
            for scale in [1e-40f32, 1e-30, 1e-8, f32::MIN_POSITIVE] {
                let x: Vec<f32> = (0..300).map(|i| scale * ((i % 7) as f32 - 3.0)).collect();
                let y = round_trip(&x, d);
                // Tiny blocks may flush to zero (the f16 scales cannot reach them) but never
                // blow up.
                for (a, b) in x.iter().zip(&y) {
                    assert!(
                        b.is_finite() && b.abs() <= 4.0 * a.abs().max(scale) + 1e-6,
                        "{d} scale {scale}: {a} -> {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn partial_blocks_and_determinism() {
        let mut rng = Rng::new(5);
        let x = normal(&mut rng, 300, 1.0); // 1 block + 44 elements (K-quants), 9 + 12 (Q5_0)
        for d in TYPES {
            let a = encode(&x, d);
            assert_eq!(a, encode(&x, d), "{d}");
            // Split over threads or not, the same bytes.
            let big = normal(&mut rng, 256 * 300 + 7, 1.0);
            let mut serial = vec![0u8; d.storage_bytes(big.len())];
            super::quantize_serial(&big, d, &mut serial);
            assert_eq!(encode(&big, d), serial, "{d}");
            let e = rel_rms(&x, &decode(&a, d, x.len()));
            assert!(e < 0.1, "{d}: {e}");
        }
    }
}
