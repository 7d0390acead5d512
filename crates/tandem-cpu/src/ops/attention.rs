//! Causal grouped-query attention for a ragged batch of queries, each over its own
//! sequence's paged KV cache.
//!
//! Query i sits at position p = positions[i] and attends to positions 0..=p; position t lives
//! in cache row table[t / block_size] * block_size + t % block_size of the query's own table
//! (tables[table_starts[i]..]). Only rows of the context are ever read, so poison elsewhere in
//! the cache cannot leak.
//!
//! Fast mode: decode rows score their whole context per head (a row of p + 1 floats), parallel
//! over (row, head). Prompt rows are FlashAttention-style: per (head, tile of a sequence's
//! queries), K and V are converted to f32 one tile of positions at a time, and each query keeps
//! a running max, a running sum and an accumulator that is rescaled whenever the max grows. A
//! row's arithmetic depends on its position only (the position tiles start at 0 in steps of
//! `BT` whatever the query tile), so it does not depend on the batch.

use half::f16;
use half::slice::HalfFloatSliceExt;
use tandem_core::ops::Attention;
use tandem_core::{DType, Result};

use super::dot;
use crate::table::{numel, Table};
use crate::Exec;

const OP: &str = "attention";

/// Queries per prefill work unit: they share each converted K/V tile.
const BQ: usize = 8;
/// Positions per K/V tile.
const BT: usize = 32;

pub(crate) fn run(t: &mut Table, ex: Exec, op: &Attention) -> Result<()> {
    op.check_shape()?;
    let len = numel(OP, &[op.n, op.heads, op.head_dim])?;
    let block_elems = numel(OP, &[op.block_size, op.kv_heads, op.head_dim])?;
    t.with_output(OP, "out", op.out, DType::F32, len, |t, out| {
        let q = &t.input(OP, "q", op.q, DType::F32, len)?.f32()[..len];
        let ck = t.input(OP, "cache_k", op.cache_k, op.kv_dtype, 0)?;
        let cv = t.input(OP, "cache_v", op.cache_v, op.kv_dtype, 0)?;
        let positions = &t.input(OP, "positions", op.positions, DType::U32, op.n)?.u32()[..op.n];
        let starts = &t.input(OP, "table_starts", op.table_starts, DType::U32, op.n)?.u32()[..op.n];
        let tables = &t.input(OP, "tables", op.tables, DType::U32, op.tables_len)?.u32()[..op.tables_len];
        if len == 0 {
            return Ok(());
        }
        let num_blocks = ck.numel.min(cv.numel) / block_elems;
        op.check_rows(positions, starts, tables, num_blocks)?;
        let g = Geom::new(op);
        let rows = Rows { positions, starts, tables, decode: op.decode_rows };
        let out = &mut out.f32_mut()[..len];
        match (op.kv_dtype, ex.fast) {
            (DType::F32, false) => reference(q, ck.f32(), cv.f32(), &rows, out, g),
            (_, false) => reference(q, ck.f16(), cv.f16(), &rows, out, g),
            (DType::F32, true) => fast(ex, q, ck.f32(), cv.f32(), &rows, out, g),
            (_, true) => fast(ex, q, ck.f16(), cv.f16(), &rows, out, g),
        }
        Ok(())
    })
}

/// The queries' positions and block tables.
pub(crate) struct Rows<'a> {
    positions: &'a [u32],
    starts: &'a [u32],
    tables: &'a [u32],
    /// Rows 0..decode are decodes.
    decode: usize,
}

impl Rows<'_> {
    #[inline(always)]
    fn pos(&self, i: usize) -> usize {
        self.positions[i] as usize
    }
    /// Query i's block table (from its start; entries past its context are never read).
    #[inline(always)]
    fn table(&self, i: usize) -> &[u32] {
        &self.tables[self.starts[i] as usize..]
    }
}

/// A cache element type: f32, or f16 widened to f32 on load.
pub(crate) trait KvElem: Copy + Sync {
    fn to_f32(self) -> f32;
    fn load(src: &[Self], dst: &mut [f32]);
}

impl KvElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn load(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl KvElem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn load(src: &[f16], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Geom {
    heads: usize,
    kv_heads: usize,
    hd: usize,
    bs: usize,
    scale: f32,
}

impl Geom {
    fn new(op: &Attention) -> Self {
        Geom { heads: op.heads, kv_heads: op.kv_heads, hd: op.head_dim, bs: op.block_size, scale: op.scale }
    }
    /// Offset of position t's vector for kv head `kvh` in a cache.
    #[inline(always)]
    fn kv_at(&self, table: &[u32], t: usize, kvh: usize) -> usize {
        let row = table[t / self.bs] as usize * self.bs + t % self.bs;
        (row * self.kv_heads + kvh) * self.hd
    }
    /// The kv head read by query head h (never a materialized copy per query head).
    #[inline(always)]
    fn kv_head(&self, h: usize) -> usize {
        h / (self.heads / self.kv_heads)
    }
}

/// q, out: [n, heads, head_dim]; ck, cv: [num_blocks, block_size, kv_heads, head_dim].
pub(crate) fn reference<T: KvElem>(q: &[f32], ck: &[T], cv: &[T], rows: &Rows, out: &mut [f32], g: Geom) {
    let hd = g.hd;
    for i in 0..rows.positions.len() {
        let (pos, table) = (rows.pos(i), rows.table(i));
        let mut scores = vec![0f32; pos + 1];
        for h in 0..g.heads {
            let kvh = g.kv_head(h);
            let qv = &q[(i * g.heads + h) * hd..(i * g.heads + h + 1) * hd];
            for t in 0..=pos {
                let off = g.kv_at(table, t, kvh);
                let mut s = 0f32;
                for d in 0..hd {
                    s += qv[d] * ck[off + d].to_f32();
                }
                scores[t] = s * g.scale;
            }
            let max = scores.iter().fold(f32::NEG_INFINITY, |a, &s| a.max(s));
            let mut sum = 0f32;
            for s in &mut scores {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut out[(i * g.heads + h) * hd..(i * g.heads + h + 1) * hd];
            o.fill(0.0);
            for t in 0..=pos {
                let p = scores[t] / sum;
                let off = g.kv_at(table, t, kvh);
                for d in 0..hd {
                    o[d] += p * cv[off + d].to_f32();
                }
            }
        }
    }
}

pub(crate) fn fast<T: KvElem>(ex: Exec, q: &[f32], ck: &[T], cv: &[T], rows: &Rows, out: &mut [f32], g: Geom) {
    let (hd, n, d) = (g.hd, rows.positions.len(), rows.decode);
    let (dec_out, pre_out) = out.split_at_mut(d * g.heads * hd);
    if d > 0 {
        let work: usize = (0..d).map(|i| rows.pos(i) + 1).sum::<usize>() * g.heads * hd;
        let unit = |u: usize, o: &mut [f32]| {
            let (i, h) = (u / g.heads, u % g.heads);
            let qv = &q[u * hd..(u + 1) * hd];
            with_avx2(ex.avx2, || decode_head(qv, ck, cv, rows.table(i), rows.pos(i) + 1, g, g.kv_head(h), o));
        };
        // A short context's decode step is over before a worker would wake: run it inline.
        if ex.pool_for(work).is_none() {
            for (u, o) in dec_out.chunks_mut(hd).enumerate() {
                unit(u, o);
            }
        } else {
            ex.sized(work).for_chunks(dec_out, hd, unit);
        }
    }
    if n == d {
        return;
    }
    // Prompt rows: runs of one sequence's queries (same table start), cut into tiles of BQ.
    let mut tiles = vec![];
    let mut i = d;
    while i < n {
        let mut j = i + 1;
        while j < n && j - i < BQ && rows.starts[j] == rows.starts[i] && rows.positions[j] > rows.positions[j - 1] {
            j += 1;
        }
        tiles.push((i, j));
        i = j;
    }
    let work: usize = (d..n).map(|i| rows.pos(i) + 1).sum::<usize>() * g.heads * hd;
    let ex = ex.sized(work);
    let parts: Vec<Vec<f32>> = ex.map_range(g.heads * tiles.len(), |u| {
        let (h, (i0, i1)) = (u / tiles.len(), tiles[u % tiles.len()]);
        let mut acc = vec![0f32; (i1 - i0) * hd];
        with_avx2(ex.avx2, || prefill_unit(q, ck, cv, rows, g, h, i0, &mut acc));
        acc
    });
    for (u, acc) in parts.iter().enumerate() {
        let (h, (i0, _)) = (u / tiles.len(), tiles[u % tiles.len()]);
        for (r, row) in acc.chunks_exact(hd).enumerate() {
            let i = i0 + r - d;
            pre_out[(i * g.heads + h) * hd..(i * g.heads + h + 1) * hd].copy_from_slice(row);
        }
    }
}

/// Runs `f` compiled with AVX2 enabled when the CPU has it, so its inlined lane loops widen.
#[inline(always)]
fn with_avx2<R>(avx2: bool, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn call<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: `avx2` is true only when AVX2 and FMA were detected at run time.
        return unsafe { call(f) };
    }
    let _ = avx2;
    f()
}

/// One query head of a decode: out = softmax(q . k_t * scale) v over t in 0..ctx_len.
/// qv, out: [head_dim].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn decode_head<T: KvElem>(qv: &[f32], ck: &[T], cv: &[T], table: &[u32], ctx_len: usize, g: Geom, kvh: usize, out: &mut [f32]) {
    let hd = g.hd;
    let mut buf = vec![0f32; hd];
    let mut scores = vec![0f32; ctx_len];
    let mut max = f32::NEG_INFINITY;
    for (t, s) in scores.iter_mut().enumerate() {
        let off = g.kv_at(table, t, kvh);
        T::load(&ck[off..off + hd], &mut buf);
        *s = dot(qv, &buf) * g.scale;
        max = max.max(*s);
    }
    let mut sum = 0f32;
    for s in &mut scores {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    for (t, &e) in scores.iter().enumerate() {
        let off = g.kv_at(table, t, kvh);
        T::load(&cv[off..off + hd], &mut buf);
        axpy(out, e, &buf);
    }
    let inv = 1.0 / sum;
    for o in out {
        *o *= inv;
    }
}

/// Queries i0.. (acc.len() / head_dim of them, one sequence's, in increasing positions) of
/// head h, online softmax over K/V tiles. acc: [rows, head_dim], the output on return.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn prefill_unit<T: KvElem>(q: &[f32], ck: &[T], cv: &[T], qrows: &Rows, g: Geom, h: usize, i0: usize, acc: &mut [f32]) {
    let hd = g.hd;
    let rows = acc.len() / hd;
    let kvh = g.kv_head(h);
    let table = qrows.table(i0);
    let last = qrows.pos(i0 + rows - 1);
    let mut run_max = vec![f32::NEG_INFINITY; rows];
    let mut run_sum = vec![0f32; rows];
    let mut kt = vec![0f32; BT * hd];
    let mut vt = vec![0f32; BT * hd];
    let mut s = [0f32; BT];
    acc.fill(0.0);
    for t0 in (0..=last).step_by(BT) {
        let t1 = (t0 + BT).min(last + 1);
        for t in t0..t1 {
            let off = g.kv_at(table, t, kvh);
            T::load(
                &ck[off..off + hd],
                &mut kt[(t - t0) * hd..(t - t0 + 1) * hd],
            );
            T::load(
                &cv[off..off + hd],
                &mut vt[(t - t0) * hd..(t - t0 + 1) * hd],
            );
        }
        for r in 0..rows {
            let pos = qrows.pos(i0 + r);
            if pos < t0 {
                continue; // the whole tile is in this query's future
            }
            let cnt = (pos + 1).min(t1) - t0;
            let qv = &q[((i0 + r) * g.heads + h) * hd..((i0 + r) * g.heads + h + 1) * hd];
            let mut tile_max = f32::NEG_INFINITY;
            for j in 0..cnt {
                s[j] = dot(qv, &kt[j * hd..(j + 1) * hd]) * g.scale;
                tile_max = tile_max.max(s[j]);
            }
            let new_max = run_max[r].max(tile_max);
            let a = &mut acc[r * hd..(r + 1) * hd];
            if new_max > run_max[r] && run_max[r] != f32::NEG_INFINITY {
                let corr = (run_max[r] - new_max).exp();
                run_sum[r] *= corr;
                for v in a.iter_mut() {
                    *v *= corr;
                }
            }
            run_max[r] = new_max;
            for j in 0..cnt {
                let e = (s[j] - new_max).exp();
                run_sum[r] += e;
                axpy(a, e, &vt[j * hd..(j + 1) * hd]);
            }
        }
    }
    for r in 0..rows {
        let inv = 1.0 / run_sum[r];
        for v in &mut acc[r * hd..(r + 1) * hd] {
            *v *= inv;
        }
    }
}

/// y += a * x.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}
