//! Causal grouped-query attention for a ragged batch of queries, each over its own
//! sequence's paged KV cache.
//!
//! Query i sits at position p = positions[i] and attends to positions 0..=p (or, with a sliding
//! window w, to p + 1 - w..=p); position t lives
//! in cache row table[t / block_size] * block_size + t % block_size of the query's own table
//! (tables[table_starts[i]..]). Only rows of the context are ever read, so poison elsewhere in
//! the cache cannot leak.
//!
//! Fast mode (decode.rs, prefill.rs) works per KV head: the query heads that share a KV head
//! (grouped-query attention) are scored together, so each K and V vector is read once per
//! step, not once per query head. A windowed query costs its window, not its context: blocks
//! and tiles before the window are skipped, never read. A row's arithmetic depends on its own
//! position (and the op's window and soft-cap) only, never on what else is in the batch (see
//! each file).

use tandem_core::ops::Attention;
use tandem_core::{DType, QuantView, Result};

use crate::ops::tanh;
use crate::table::Table;
use crate::Exec;

mod decode;
#[cfg(target_arch = "x86_64")]
mod decode_avx2;
#[cfg(target_arch = "x86_64")]
mod decode_q8;
mod kv;
mod prefill;

pub(crate) use kv::KvSrc;
use kv::{Fp8, Q4, Q8};

const OP: &str = "attention";

pub(crate) fn run(t: &mut Table, ex: Exec, op: &Attention) -> Result<()> {
    let len = op.n * op.heads * op.head_dim;
    t.with_out(OP, "out", op.out, |t, out| {
        let q = &t.arg(OP, "q", op.q)?.f32()[..len];
        let ck = t.arg(OP, "cache_k", op.cache_k)?;
        let cv = t.arg(OP, "cache_v", op.cache_v)?;
        let positions = &t.arg(OP, "positions", op.positions)?.u32()[..op.n];
        let starts = &t.arg(OP, "table_starts", op.table_starts)?.u32()[..op.n];
        let tables = &t.arg(OP, "tables", op.tables)?.u32()[..op.tables_len];
        if len == 0 {
            return Ok(());
        }
        let (kvh, hd) = (op.kv_heads, op.head_dim);
        let rows = |d, numel| tandem_core::quant::kv::cache_rows(d, numel, kvh, hd);
        let num_blocks =
            rows(op.kv_dtypes.k, ck.numel).min(rows(op.kv_dtypes.v, cv.numel)) / op.block_size;
        op.check_rows(positions, starts, tables, num_blocks)?;
        let g = Geom::new(op);
        let rows = Rows { positions, starts, tables, decode: op.decode_rows };
        let out = &mut out.f32_mut()[..len];
        let (k, v) = (op.kv_dtypes.k, op.kv_dtypes.v);
        // Each supported pair (KV_PAIRS) as its own monomorphized kernels.
        macro_rules! pairs {
            ($(($kd:ident, $ks:expr, $vd:ident, $vs:expr)),*) => {
                match (k, v) {
                    $((DType::$kd, DType::$vd) => attend(ex, q, $ks, $vs, &rows, out, g),)*
                    _ => unreachable!("checked: {}", op.kv_dtypes),
                }
            };
        }
        let q8 = |b| {
            let v = quant(DType::Q8_0, b);
            Q8 { qs: v.qs, d: v.d }
        };
        let q4 = |b| {
            let v = quant(DType::Q4_0, b);
            Q4 { qs: v.qs, d: v.d }
        };
        let fp8 = |b| fp8(b, kvh, hd);
        pairs!(
            (F32, ck.f32(), F32, cv.f32()),
            (F16, ck.f16(), F16, cv.f16()),
            (Q8_0, q8(ck), Q8_0, q8(cv)),
            (Q4_0, q4(ck), Q4_0, q4(cv)),
            (F8E4M3, fp8(ck), F8E4M3, fp8(cv)),
            (F16, ck.f16(), Q8_0, q8(cv)),
            (F16, ck.f16(), Q4_0, q4(cv)),
            (Q8_0, q8(ck), Q4_0, q4(cv))
        );
        Ok(())
    })
}

/// Whether fast mode scores some rows of `op` in the 16-bit activation class: decode rows over
/// a q8_0 K cache with whole blocks per head, on the AVX2 kernels (decode_q8.rs).
pub(crate) fn i16_class(op: &Attention, kernels: &crate::ops::matmul::Kernels) -> bool {
    let avx2 = cfg!(target_arch = "x86_64")
        && matches!(kernels.isa, crate::Isa::Avx2 | crate::Isa::Avx512);
    avx2 && op.decode_rows > 0
        && op.kv_dtypes.k == DType::Q8_0
        && op.head_dim.is_multiple_of(tandem_core::dtype::QBLOCK)
}

/// An fp8 cache's codes and head scales.
fn fp8(b: &crate::table::Buffer, kv_heads: usize, head_dim: usize) -> Fp8<'_> {
    Fp8::from(tandem_core::quant::kv::Fp8View::new(b.bytes(), b.numel, kv_heads, head_dim))
}

/// A quantized cache's codes and scales.
fn quant(dtype: DType, b: &crate::table::Buffer) -> QuantView<'_> {
    QuantView::new(dtype, b.numel, b.bytes())
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
    /// Whether queries i and j read one block table (rows of one sequence in the step).
    #[inline(always)]
    fn same_table(&self, i: usize, j: usize) -> bool {
        self.starts[i] == self.starts[j]
    }
    /// Query i's block table (from its start; entries past its context are never read).
    #[inline(always)]
    fn table(&self, i: usize) -> &[u32] {
        &self.tables[self.starts[i] as usize..]
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Geom {
    heads: usize,
    kv_heads: usize,
    hd: usize,
    bs: usize,
    scale: f32,
    window: usize,
    softcap: f32,
}

impl Geom {
    fn new(op: &Attention) -> Self {
        Geom {
            heads: op.heads,
            kv_heads: op.kv_heads,
            hd: op.head_dim,
            bs: op.block_size,
            scale: op.scale,
            window: op.window,
            softcap: op.softcap,
        }
    }
    /// The first position a query at `pos` attends to (its window's start).
    #[inline(always)]
    fn first(&self, pos: usize) -> usize {
        if self.window == 0 {
            0
        } else {
            (pos + 1).saturating_sub(self.window)
        }
    }
    /// A score after soft-capping (none when softcap is 0).
    #[inline(always)]
    fn cap(&self, s: f32) -> f32 {
        if self.softcap == 0.0 {
            s
        } else {
            self.softcap * (s / self.softcap).tanh()
        }
    }
    /// [`Geom::cap`] of every score in place, vectorized: the fast kernels' (a few ulp from
    /// the reference's libm tanh, and the same bits for a score wherever it sits).
    #[inline(always)]
    fn cap_all(&self, s: &mut [f32]) {
        if self.softcap != 0.0 {
            for v in s {
                *v = self.softcap * tanh(*v / self.softcap);
            }
        }
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
pub(crate) fn reference<K: KvSrc, V: KvSrc>(
    q: &[f32],
    ck: K,
    cv: V,
    rows: &Rows,
    out: &mut [f32],
    g: Geom,
) {
    let hd = g.hd;
    for i in 0..rows.positions.len() {
        let (pos, table) = (rows.pos(i), rows.table(i));
        let first = g.first(pos);
        // scores[t - first] for the positions of the window.
        let mut scores = vec![0f32; pos + 1 - first];
        for h in 0..g.heads {
            let kvh = g.kv_head(h);
            let qv = &q[(i * g.heads + h) * hd..(i * g.heads + h + 1) * hd];
            for t in first..=pos {
                let off = g.kv_at(table, t, kvh);
                let mut s = 0f32;
                for d in 0..hd {
                    s += qv[d] * ck.get(off + d);
                }
                scores[t - first] = g.cap(s * g.scale);
            }
            let max = scores.iter().fold(f32::NEG_INFINITY, |a, &s| a.max(s));
            let mut sum = 0f32;
            for s in &mut scores {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut out[(i * g.heads + h) * hd..(i * g.heads + h + 1) * hd];
            o.fill(0.0);
            for t in first..=pos {
                let p = scores[t - first] / sum;
                let off = g.kv_at(table, t, kvh);
                for d in 0..hd {
                    o[d] += p * cv.get(off + d);
                }
            }
        }
    }
}

/// The reference's loops, or the fast kernels.
fn attend<K: KvSrc, V: KvSrc>(
    ex: Exec,
    q: &[f32],
    ck: K,
    cv: V,
    rows: &Rows,
    out: &mut [f32],
    g: Geom,
) {
    if ex.fast {
        fast(ex, q, ck, cv, rows, out, g)
    } else {
        reference(q, ck, cv, rows, out, g)
    }
}

/// Decode rows, then prompt rows (each kind in its own file).
fn fast<K: KvSrc, V: KvSrc>(
    ex: Exec,
    q: &[f32],
    ck: K,
    cv: V,
    rows: &Rows,
    out: &mut [f32],
    g: Geom,
) {
    let (dec_out, pre_out) = out.split_at_mut(rows.decode * g.heads * g.hd);
    if rows.decode > 0 {
        decode::run(ex, q, ck, cv, rows, dec_out, g);
    }
    if rows.decode < rows.positions.len() {
        prefill::run(ex, q, ck, cv, rows, pre_out, g);
    }
}

/// y += a * x.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}
