//! Decode rows: one query per sequence, over its whole context (or its window).
//!
//! A work unit is (row, KV head, partition of `PART` positions). It scores its positions for
//! every query head of the KV head's group, so each K and V vector is read once for the group,
//! exponentiates against its own maximum and sums V weighted by those. A row's units are then
//! merged in partition order, each rescaled to the row's maximum (flash-decoding). The
//! partitions are fixed cuts of the positions (k * PART..(k + 1) * PART), cut once more where
//! a window starts: a row has units only for the partitions its window reaches, the first of
//! them from the window's start. So a row's arithmetic depends on its position and the window
//! only, never on the batch or the thread count, and one long context still spreads over
//! every thread.
//!
//! The rows of one sequence in a step (a speculative verification: its last token and the
//! drafts after it) share their context: one task takes a partition for all of them, row
//! after row, so the rows after the first read its K and V from the core's cache, not from
//! memory (rows taken apart would each read the whole context from memory). Each row's unit
//! is still the same call with the same arguments.

use std::cell::RefCell;

use super::{axpy, Geom, KvSrc, Rows};
use crate::ops::{dot, exp_sub, max, sum};
use crate::Exec;

/// Positions per work unit.
pub(super) const PART: usize = 256;

thread_local! {
    /// A unit's scores ([group][PART]) and, for an f16 cache, one widened vector.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's tasks, each row's first unit and the units' partial results, kept
    /// between calls (a decode step allocated them for every layer).
    static UNITS: RefCell<(Vec<Task>, Vec<usize>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// A task: (first row, rows, KV head, first position): that partition of a run of rows that
/// share their block table (one sequence's), each row's unit in turn.
type Task = (usize, usize, usize, usize);

/// q: [decode rows, heads, head_dim]; out: the same.
pub(super) fn run<K: KvSrc, V: KvSrc>(
    ex: Exec,
    q: &[f32],
    ck: K,
    cv: V,
    rows: &Rows,
    out: &mut [f32],
    g: Geom,
) {
    UNITS.with_borrow_mut(|(tasks, first, partials)| {
        let (hd, group) = (g.hd, g.heads / g.kv_heads);
        // Row i's partitions: the first its window reaches, and how many.
        let first_part = |i: usize| g.first(rows.pos(i)) / PART;
        let parts = |i: usize| rows.pos(i) / PART + 1 - first_part(i);
        // Units in (row, KV head, partition) order: row i's start at first[i].
        first.clear();
        let mut n_units = 0;
        for i in 0..rows.decode {
            first.push(n_units);
            n_units += g.kv_heads * parts(i);
        }
        tasks.clear();
        let mut i = 0;
        while i < rows.decode {
            let run = (i..rows.decode).take_while(|&j| rows.same_table(i, j)).count();
            let lo = (i..i + run).map(first_part).min().unwrap_or(0);
            let hi = (i..i + run).map(|j| rows.pos(j) / PART + 1).max().unwrap_or(0);
            for kvh in 0..g.kv_heads {
                tasks.extend((lo..hi).map(|p| (i, run, kvh, p * PART)));
            }
            i += run;
        }
        // Per unit and query head of its group: [max, sum, acc[head_dim]].
        let stride = group * (hd + 2);
        partials.clear();
        partials.resize(n_units * stride, 0.0);
        let (tasks, first) = (&tasks[..], &first[..]);
        let base = PartialsPtr(partials.as_mut_ptr());
        let task = |ti: usize| {
            let (i0, run, kvh, t0) = tasks[ti];
            // Rows whose context (window) reaches this partition, and the positions of it they
            // read.
            for i in i0..i0 + run {
                let (pos, from) = (rows.pos(i), g.first(rows.pos(i)));
                if t0 > pos || t0 + PART <= from {
                    continue;
                }
                let ts = t0.max(from)..(t0 + PART).min(pos + 1);
                let u = first[i] + kvh * parts(i) + t0 / PART - first_part(i);
                // SAFETY: unit u (row i, KV head kvh, partition t0 / PART) belongs to this task
                // alone, so the slices the tasks write are disjoint, inside `partials`, which
                // stays borrowed until every task is done.
                let part =
                    unsafe { std::slice::from_raw_parts_mut(base.get().add(u * stride), stride) };
                let qs =
                    &q[(i * g.heads + kvh * group) * hd..(i * g.heads + (kvh + 1) * group) * hd];
                SCRATCH.with_borrow_mut(|scratch| {
                    scratch.resize(group * PART + hd, 0.0);
                    let args = (qs, ck, cv, rows.table(i), ts, kvh, g);
                    #[cfg(target_arch = "x86_64")]
                    if ex.avx2() && hd % 8 == 0 {
                        // SAFETY: `ex.avx2()` is true only for the AVX2 and AVX-512 ISAs, whose
                        // features (AVX2, FMA and F16C among them; AVX-512 VNNI for the
                        // latter) were detected when the backend was made.
                        return unsafe {
                            let vnni = ex.kernels.isa == crate::Isa::Avx512;
                            super::decode_avx2::score_part(args, scratch, part, vnni)
                        };
                    }
                    score_part(args, scratch, part)
                });
            }
        };
        let work = (0..rows.decode).map(|i| rows.pos(i) + 1 - g.first(rows.pos(i)));
        let work = work.sum::<usize>() * g.heads * hd;
        match ex.pool_for(work) {
            Some(pool) => pool.run(tasks.len(), &task),
            // A short context's decode step is over before a worker would wake.
            None => (0..tasks.len()).for_each(task),
        }
        let mut u = 0;
        for i in 0..rows.decode {
            let n = parts(i);
            for kvh in 0..g.kv_heads {
                for gi in 0..group {
                    let o = &mut out[(i * g.heads + kvh * group + gi) * hd..][..hd];
                    let at = |k: usize| &partials[(u + k) * stride + gi * (hd + 2)..][..hd + 2];
                    merge((0..n).map(at), o);
                }
                u += n;
            }
        }
    })
}

/// The partial results' base pointer, shared by the tasks of [`run`]; a method, not the
/// field, so closures capture the whole (Sync) wrapper.
struct PartialsPtr(*mut f32);
// SAFETY: only used to build the disjoint unit slices of `run`.
unsafe impl Sync for PartialsPtr {}
impl PartialsPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// out = sum_k acc_k e^(max_k - M) / sum_k sum_k e^(max_k - M), M the largest max_k. With one
/// partition that is acc / sum exactly (e^0 = 1).
fn merge<'a>(parts: impl Iterator<Item = &'a [f32]> + Clone, out: &mut [f32]) {
    let m = parts.clone().fold(f32::NEG_INFINITY, |m, p| m.max(p[0]));
    let mut total = 0f32;
    out.fill(0.0);
    for p in parts {
        let c = (p[0] - m).exp();
        total += p[1] * c;
        axpy(out, c, &p[2..]);
    }
    let inv = 1.0 / total;
    for o in out {
        *o *= inv;
    }
}

/// Each query head's scores (`scores`: [group][PART], the first `len` of each, scaled) are
/// soft-capped, then become exp(score - max) in place, and its part's first two entries [max,
/// sum of those]. Inlined, so the AVX2 kernel's call is compiled with AVX2 too.
#[inline(always)]
pub(super) fn softmax_parts(scores: &mut [f32], part: &mut [f32], g: Geom, len: usize) {
    for (gi, p) in part.chunks_exact_mut(g.hd + 2).enumerate() {
        let s = &mut scores[gi * PART..gi * PART + len];
        g.cap_all(s);
        let m = max(s);
        exp_sub(s, m);
        p[0] = m;
        p[1] = sum(s);
    }
}

/// The arguments of [`score_part`] that say what to score.
pub(super) type Part<'a, K, V> = (&'a [f32], K, V, &'a [u32], std::ops::Range<usize>, usize, Geom);

/// Positions `ts` of KV head `kvh` for the query heads `qs` ([group][head_dim]); writes each
/// head's [max, sum, unnormalized output] into `part`. scratch: [group * PART + head_dim].
#[inline(always)]
fn score_part<K: KvSrc, V: KvSrc>(args: Part<K, V>, scratch: &mut [f32], part: &mut [f32]) {
    let (qs, ck, cv, table, ts, kvh, g) = args;
    let (hd, len) = (g.hd, ts.len());
    let group = qs.len() / hd;
    let (scores, buf) = scratch.split_at_mut(group * PART);
    for (j, t) in ts.clone().enumerate() {
        let off = g.kv_at(table, t, kvh);
        let k = ck.row(off, hd, buf);
        for (gi, qv) in qs.chunks_exact(hd).enumerate() {
            scores[gi * PART + j] = dot(qv, k) * g.scale;
        }
    }
    softmax_parts(scores, part, g, len);
    for p in part.chunks_exact_mut(hd + 2) {
        p[2..].fill(0.0);
    }
    for (j, t) in ts.enumerate() {
        let off = g.kv_at(table, t, kvh);
        let v = cv.row(off, hd, buf);
        for (gi, p) in part.chunks_exact_mut(hd + 2).enumerate() {
            axpy(&mut p[2..], scores[gi * PART + j], v);
        }
    }
}
