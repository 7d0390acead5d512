//! One file per op, each with its scalar `reference` and its multithreaded `fast` function
//! side by side, plus `run`, which checks the op against its buffers and picks one.

pub(crate) mod add;
pub(crate) mod argmax;
pub(crate) mod attention;
pub(crate) mod copy_rows;
pub(crate) mod embed;
pub(crate) mod kv_write;
pub(crate) mod matmul;
pub(crate) mod rms_norm;
pub(crate) mod rope;
pub(crate) mod sample;
pub(crate) mod swiglu;

/// Lanes of the vectorizable loops: independent accumulators the compiler maps onto SIMD
/// registers (f32 addition is not associative, so it never reorders a single accumulator).
pub(crate) const LANES: usize = 16;

/// Dot product with `LANES` independent partial sums. Both slices have the same length.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    hsum(&acc) + tail
}

/// Pairwise sum of the lanes, a fixed order so results do not depend on the thread count.
#[inline(always)]
pub(crate) fn hsum(acc: &[f32; LANES]) -> f32 {
    let mut v = *acc;
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            v[l] += v[l + w];
        }
    }
    v[0]
}

/// Rows per parallel task: enough tasks to balance `threads` workers, not so few rows that
/// scheduling dominates.
pub(crate) fn chunk_rows(rows: usize, threads: usize, min: usize) -> usize {
    rows.div_ceil(threads.max(1) * 4).max(min).max(1)
}
