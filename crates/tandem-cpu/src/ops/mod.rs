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

/// Runs `work(i, chunk)` over `out.chunks_mut(c)` on the calling thread plus `threads - 1`
/// pool workers, which claim chunks from a shared counter.
///
/// Why not `pool.install` + `par_chunks_mut`: install parks the caller while the workers
/// run, so every call costs a wake-up each way; a decode step makes ~200 matvecs of tens of
/// microseconds each, and on a busy machine those hand-offs were a good part of the step.
/// Here the caller starts at once, a worker joins as soon as it wakes, and whoever is running
/// takes the next chunk, so a descheduled thread cannot strand a fixed share of the rows. With
/// one thread the pool is not touched at all.
pub(crate) fn par_chunks_caller<F>(
    pool: &rayon::ThreadPool,
    threads: usize,
    out: &mut [f32],
    c: usize,
    work: F,
) where
    F: Fn(usize, &mut [f32]) + Sync,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (len, c) = (out.len(), c.max(1));
    let chunks = len.div_ceil(c);
    let next = AtomicUsize::new(0);
    let base = OutPtr(out.as_mut_ptr());
    let run = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= chunks {
            break;
        }
        let (start, end) = (i * c, ((i + 1) * c).min(len));
        // SAFETY: each index is claimed by exactly one thread, so the chunks are disjoint
        // ranges of `out`, which stays mutably borrowed until every thread is done.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        work(i, chunk);
    };
    let helpers = threads.saturating_sub(1).min(chunks.saturating_sub(1));
    if helpers == 0 {
        return run();
    }
    pool.in_place_scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| run());
        }
        run();
    });
}

/// The output's base pointer, shared by the threads of [`par_chunks_caller`]; a method, not
/// the field, so closures capture the whole (Sync) wrapper.
struct OutPtr(*mut f32);
// SAFETY: only used to build disjoint chunks, see `par_chunks_caller`.
unsafe impl Sync for OutPtr {}
impl OutPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}
