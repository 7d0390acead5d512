//! Cases of the paged KV cache: kv_write, attention over prompt and decode rows (ragged
//! batches over shuffled block tables, NaN poison outside the context) and its batch
//! invariance.

use tandem_core::ops::*;
use tandem_core::quant::kv::{cache_numel, KV_PAIRS};
use tandem_core::{DType, KvDtypes};

use super::*;
use crate::harness::tolerance;
use crate::rng::Rng;

pub(super) fn kv_write(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for kv_dtype in KV_DTYPES {
        for (n, kv_heads, head_dim, rows) in [(1, 2, 64, 40), (5, 1, 8, 16), (13, 4, 16, 64)] {
            let len = n * kv_heads * head_dim;
            let (k, v) = (rng.vec(len, 2.0), rng.vec(len, 2.0));
            out.push(kv_write_case(rng, kv_dtype.into(), (n, kv_heads, head_dim, rows), &k, &v));
        }
    }
    // Quantized caches last (the float dtypes' cases draw the same streams without them), in
    // rows of whole blocks; one value in four is 20x the others (outliers set a block's
    // scale), and one row holds an infinity and a NaN (their blocks turn NaN, no other).
    for kv_dtype in KV_QUANT {
        // Rows of an odd number of blocks (1 and 3) make rows share a 4-byte word of scales:
        // writing one must leave its neighbours' halves alone.
        let shapes = [(1, 2, 64, 40), (13, 4, 16, 64), (3, 3, 64, 20), (5, 1, 32, 9)];
        for (n, kv_heads, head_dim, rows) in shapes {
            let row = kv_heads * head_dim;
            let vals = |rng: &mut Rng| {
                let mut x = rng.vec(n * row, 2.0);
                x.iter_mut().step_by(4).for_each(|v| *v *= 20.0);
                x
            };
            let mut k = vals(rng);
            if n > 1 {
                (k[row + 5], k[row + row - 1]) = (f32::INFINITY, f32::NAN);
            }
            let v = vals(rng);
            out.push(kv_write_case(rng, kv_dtype.into(), (n, kv_heads, head_dim, rows), &k, &v));
        }
    }
    // Keys and values of two dtypes: each cache written as its own dtype.
    for kv in mixed_pairs() {
        for (n, kv_heads, head_dim, rows) in [(3, 3, 64, 20), (5, 1, 32, 9)] {
            let len = n * kv_heads * head_dim;
            let (k, v) = (rng.vec(len, 2.0), rng.vec(len, 2.0));
            out.push(kv_write_case(rng, kv, (n, kv_heads, head_dim, rows), &k, &v));
        }
    }
    // fp8 heads of other lengths (GPU lanes loop more than once, or not all take part), last
    // of all; one value in eight is 400x the others, whose codes are then subnormal.
    for (n, kv_heads, head_dim, rows) in [(2, 2, 132, 6), (3, 1, 12, 8), (1, 1, 256, 4)] {
        let len = n * kv_heads * head_dim;
        let vals = |rng: &mut Rng| {
            let mut x = rng.vec(len, 0.05);
            x.iter_mut().step_by(8).for_each(|v| *v *= 400.0);
            x
        };
        let (k, v) = (vals(rng), vals(rng));
        let kv = DType::F8E4M3.into();
        out.push(kv_write_case(rng, kv, (n, kv_heads, head_dim, rows), &k, &v));
    }
    out
}

/// The K/V pairs whose keys and values differ.
fn mixed_pairs() -> impl Iterator<Item = KvDtypes> {
    KV_PAIRS.into_iter().filter(|p| p.k != p.v)
}

/// `n` rows of `k` and `v` written into `rows` poisoned cache rows (shuffled slots): rows not
/// written must come back still poisoned.
fn kv_write_case(
    rng: &mut Rng,
    kv: KvDtypes,
    (n, kv_heads, head_dim, rows): (usize, usize, usize, usize),
    k: &[f32],
    v: &[f32],
) -> Case {
    let mut b = Bufs::default();
    let (k, v) = (b.f32(k), b.f32(v));
    let cache_k = b.poison(kv.k, cache_numel(kv.k, rows, kv_heads, head_dim));
    let cache_v = b.poison(kv.v, cache_numel(kv.v, rows, kv_heads, head_dim));
    let mut all: Vec<u32> = (0..rows as u32).collect();
    rng.shuffle(&mut all);
    let slots = b.u32(&all[..n]);
    let kv_dtypes = kv;
    let op =
        Op::KvWrite(KvWrite { k, v, cache_k, cache_v, kv_dtypes, slots, n, kv_heads, head_dim });
    let tols = (tolerance("kv_write", kv.k), tolerance("kv_write", kv.v));
    let name = format!("{kv} n={n} kv_heads={kv_heads} head_dim={head_dim} rows={rows}");
    b.case(name, op, &[(cache_k, tols.0), (cache_v, tols.1)])
}

/// Whether a shape's cache rows (kv_heads * head_dim) are whole blocks of both dtypes.
fn fits(kv: impl Into<KvDtypes>, shape: &AttnShape) -> bool {
    let (kv, (_, kv_heads, head_dim, _)) = (kv.into(), shape.0);
    let fits = |d| tandem_core::quant::kv::row_fits(d, kv_heads * head_dim);
    fits(kv.k) && fits(kv.v)
}

/// A ragged attention batch: sequences with their own shuffled block tables in one pool (some
/// sharing leading blocks, as a prefix cache makes them), each contributing its last `rows`
/// queries; decodes (one row) first, as the engine orders them.
pub struct AttnBatch {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    bs: usize,
    pool: usize,
    ck: Vec<f32>,
    cv: Vec<f32>,
    /// (table, ctx_len, rows, q: [rows, heads, head_dim]).
    seqs: Vec<(Vec<u32>, usize, usize, Vec<f32>)>,
    decodes: usize,
    /// Sequences (the first after the decodes) whose rows are decode rows: a speculative
    /// verification (its last token and the drafts after it), each row as if decoded alone.
    verifies: usize,
    /// The op's sliding window and soft-cap (0: none).
    window: usize,
    softcap: f32,
}

impl AttnBatch {
    /// `seqs`: (ctx_len, rows); rows == 0 marks a decode (one row). With `share`, every
    /// sequence's table starts with the first's full blocks (as far as both reach).
    pub fn new(
        rng: &mut Rng,
        shape: (usize, usize, usize, usize),
        seqs: &[(usize, usize)],
        share: bool,
    ) -> Self {
        let (heads, kv_heads, head_dim, bs) = shape;
        let need: usize = seqs.iter().map(|s| s.0.div_ceil(bs)).sum();
        let pool = need + 3 + rng.below(need + 1);
        let mut blocks: Vec<u32> = (0..pool as u32).collect();
        rng.shuffle(&mut blocks);
        let row = kv_heads * head_dim;
        let mut ck = vec![f32::NAN; pool * bs * row];
        let mut cv = vec![f32::NAN; pool * bs * row];
        let mut next = 0;
        let mut specs = vec![];
        let mut order: Vec<&(usize, usize)> = seqs.iter().filter(|s| s.1 == 0).collect();
        order.extend(seqs.iter().filter(|s| s.1 > 0));
        let mut first: Option<(Vec<u32>, usize)> = None;
        for &&(ctx, rows) in &order {
            let nb = ctx.div_ceil(bs);
            let mut table = vec![];
            if let (true, Some((t0, c0))) = (share, &first) {
                // Share only blocks both contexts fill: a shared block is never written.
                let full = (c0 / bs).min(ctx / bs).min(nb);
                table.extend_from_slice(&t0[..full]);
            }
            let shared = table.len();
            while table.len() < nb {
                table.push(blocks[next]);
                next += 1;
            }
            for t in shared * bs..ctx {
                let r = table[t / bs] as usize * bs + t % bs;
                for e in r * row..(r + 1) * row {
                    ck[e] = rng.sym();
                    cv[e] = rng.sym() * 2.0;
                }
            }
            let rows = rows.max(1);
            // Scaled queries give peaked softmaxes, so the running max actually moves.
            let q = rng.vec(rows * heads * head_dim, 3.0);
            if first.is_none() {
                first = Some((table.clone(), ctx));
            }
            specs.push((table, ctx, rows, q));
        }
        let decodes = seqs.iter().filter(|s| s.1 == 0).count();
        AttnBatch {
            heads,
            kv_heads,
            head_dim,
            bs,
            pool,
            ck,
            cv,
            seqs: specs,
            decodes,
            verifies: 0,
            window: 0,
            softcap: 0.0,
        }
    }

    /// Every query attends to its last `window` positions only, scores capped at `softcap`
    /// (0: none).
    pub fn windowed(mut self, window: usize, softcap: f32) -> Self {
        (self.window, self.softcap) = (window, softcap);
        self
    }

    /// The first `n` sequences after the decodes verify drafts: their rows are decode rows.
    pub fn verifying(mut self, n: usize) -> Self {
        self.verifies = n;
        self
    }

    /// Row r of verifying sequence i alone: one decode at that row's position, over the same
    /// cache and table.
    pub fn verify_row_alone(&self, i: usize, r: usize, kv_dtype: DType) -> Case {
        let (table, ctx, rows, qs) = &self.seqs[i];
        let per = self.heads * self.head_dim;
        let one = (table.clone(), ctx - rows + r + 1, 1, qs[r * per..(r + 1) * per].to_vec());
        let alone = AttnBatch {
            seqs: vec![one],
            decodes: 1,
            verifies: 0,
            ck: self.ck.clone(),
            cv: self.cv.clone(),
            ..*self
        };
        alone.case(&[0], kv_dtype)
    }

    /// Query rows of sequence `i` within the whole batch.
    pub fn rows_of(&self, i: usize) -> std::ops::Range<usize> {
        let start: usize = self.seqs[..i].iter().map(|s| s.2).sum();
        start..start + self.seqs[i].2
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// The case of sequences `which` (in batch order) sharing one op.
    /// The cache `v` ([rows, kv_heads, head_dim]) as a `dtype` buffer: fp8 heads through
    /// the engine's own writer (its scales are per head), the others encoded as weights are.
    fn cache(&self, b: &mut Bufs, v: &[f32], dtype: DType) -> BufId {
        if dtype != DType::F8E4M3 {
            return b.encoded(v, dtype);
        }
        let (kvh, hd) = (self.kv_heads, self.head_dim);
        let rows = v.len() / (kvh * hd);
        let numel = cache_numel(dtype, rows, kvh, hd);
        let mut bytes = vec![0u8; dtype.storage_bytes(numel)];
        let slots: Vec<u32> = (0..rows as u32).collect();
        tandem_core::quant::kv::write_rows(&mut bytes, dtype, numel, v, &slots, kvh, hd);
        b.add(dtype, numel, Init::Data(bytes))
    }

    pub fn case(&self, which: &[usize], kv: impl Into<KvDtypes>) -> Case {
        let mut b = Bufs::default();
        let (mut q, mut positions, mut starts, mut tables) = (vec![], vec![], vec![], vec![]);
        let mut decode_rows = 0;
        for &i in which {
            let (table, ctx, rows, qs) = &self.seqs[i];
            if i < self.decodes + self.verifies {
                // Decode rows lead the op's rows, as the engine orders them.
                assert_eq!(decode_rows, positions.len(), "decodes and verifications come first");
                decode_rows += rows;
            }
            for r in 0..*rows {
                positions.push((ctx - rows + r) as u32);
                starts.push(tables.len() as u32);
            }
            tables.extend_from_slice(table);
            q.extend_from_slice(qs);
        }
        // Entries past the tables are garbage a backend must not read.
        tables.extend([u32::MAX, 7]);
        let n = positions.len();
        let max_ctx = positions.iter().map(|&p| p as usize + 1).max().unwrap_or(1);
        let kv_dtypes: KvDtypes = kv.into();
        let cache_k = self.cache(&mut b, &self.ck, kv_dtypes.k);
        let cache_v = self.cache(&mut b, &self.cv, kv_dtypes.v);
        let q = b.f32(&q);
        let pos = b.u32(&positions);
        let ts = b.u32(&starts);
        let tables_len = tables.len();
        let tb = b.u32(&tables);
        let (heads, hd) = (self.heads, self.head_dim);
        let o = b.poison(DType::F32, n * heads * hd);
        let op = Op::Attention(Attention {
            q,
            cache_k,
            cache_v,
            kv_dtypes,
            positions: pos,
            table_starts: ts,
            tables: tb,
            tables_len,
            out: o,
            n,
            decode_rows,
            max_ctx,
            heads,
            kv_heads: self.kv_heads,
            head_dim: hd,
            block_size: self.bs,
            scale: 1.0 / (hd as f32).sqrt(),
            window: self.window,
            softcap: self.softcap,
        });
        let ctxs: Vec<String> = which
            .iter()
            .map(|&i| {
                let s = &self.seqs[i];
                match i < self.decodes + self.verifies {
                    true if i >= self.decodes => format!("v{}@{}", s.2, s.1),
                    true => format!("d{}", s.1),
                    false => format!("{}@{}", s.2, s.1),
                }
            })
            .collect();
        let mut name = format!(
            "{kv_dtypes} [{}] heads={heads}/{} hd={hd} bs={} pool={}",
            ctxs.join(" "),
            self.kv_heads,
            self.bs,
            self.pool
        );
        if self.window > 0 {
            name += &format!(" window={}", self.window);
        }
        if self.softcap > 0.0 {
            name += &format!(" softcap={}", self.softcap);
        }
        // The same tolerance for every cache dtype: a quantized cache's values are read exactly.
        b.case(name, op.clone(), &[(o, tolerance(op.name(), kv_dtypes.v))])
    }
}

/// (heads, kv_heads, head_dim, block_size) and the sequences ((ctx_len, rows), rows 0: a
/// decode) of the attention batches; GQA ratios 1, 2, 4 and MQA.
type AttnShape = ((usize, usize, usize, usize), &'static [(usize, usize)], bool);

pub(super) fn attention_shapes(decode: bool) -> &'static [AttnShape] {
    if decode {
        &[
            ((4, 4, 8, 4), &[(1, 0)], false),
            ((4, 2, 64, 4), &[(17, 0)], false),
            ((8, 2, 64, 16), &[(300, 0)], false),
            ((8, 1, 8, 16), &[(77, 0)], false),
            ((4, 4, 64, 16), &[(129, 0)], false),
            // GQA ratio 3 and contexts cut into several partitions by a split decode.
            ((6, 2, 32, 16), &[(530, 0), (5, 0)], false),
            // Decodes of several sequences: ragged lengths, one shared prefix.
            ((8, 2, 8, 4), &[(50, 0), (3, 0), (17, 0), (1, 0)], false),
            ((4, 2, 64, 16), &[(40, 0), (70, 0), (33, 0)], true),
        ]
    } else {
        &[
            // Whole prompts: rows == ctx_len.
            ((4, 4, 8, 4), &[(5, 5)], false),
            ((4, 2, 64, 16), &[(13, 13)], false),
            ((8, 2, 8, 4), &[(13, 13)], false),
            ((4, 1, 64, 4), &[(20, 20)], false),
            // Chunked prefill continuing a context: rows < ctx_len.
            ((4, 4, 64, 4), &[(21, 5)], false),
            ((4, 2, 8, 16), &[(40, 13)], false),
            ((8, 1, 8, 4), &[(33, 7)], false),
            ((8, 2, 64, 16), &[(100, 9)], false),
            ((8, 4, 8, 16), &[(70, 40)], false),
            // Ragged steps: decodes and prompt chunks of several sequences.
            ((8, 2, 8, 4), &[(9, 0), (30, 0), (13, 13), (21, 5), (2, 1)], false),
            ((4, 2, 64, 16), &[(70, 0), (40, 12), (33, 33), (17, 1)], true),
            ((8, 1, 8, 16), &[(5, 5), (100, 20), (45, 0)], true),
        ]
    }
}

/// Batches with a sliding window (crossed by most contexts: inside one block, across blocks,
/// wider than a context) and soft-capped scores: (shape, sequences, share, window, softcap).
type WindowShape = ((usize, usize, usize, usize), &'static [(usize, usize)], bool, usize, f32);

pub(super) fn window_shapes(decode: bool) -> &'static [WindowShape] {
    if decode {
        &[
            ((4, 2, 64, 16), &[(17, 0)], false, 16, 0.0),
            ((8, 2, 64, 16), &[(300, 0), (9, 0)], false, 32, 0.0),
            ((4, 4, 8, 4), &[(50, 0), (3, 0)], false, 5, 2.0),
            // A window wider than a decode partition, contexts of several.
            ((6, 2, 32, 16), &[(530, 0), (40, 0)], true, 300, 0.0),
            ((4, 1, 64, 16), &[(129, 0)], false, 0, 1.5),
        ]
    } else {
        &[
            ((4, 2, 64, 16), &[(40, 40)], false, 16, 0.0),
            ((8, 2, 8, 4), &[(33, 7), (13, 13)], false, 5, 0.0),
            ((4, 4, 64, 16), &[(100, 20), (9, 0), (30, 30)], true, 32, 3.0),
            ((8, 1, 8, 16), &[(70, 40)], false, 64, 0.0),
            ((4, 2, 64, 4), &[(21, 21)], false, 0, 1.0),
        ]
    }
}

pub(super) fn attention(rng: &mut Rng, decode: bool) -> Vec<Case> {
    let mut out = vec![];
    for kv_dtype in KV_DTYPES {
        for &(shape, seqs, share) in attention_shapes(decode) {
            let batch = AttnBatch::new(rng, shape, seqs, share);
            let all: Vec<usize> = (0..batch.len()).collect();
            out.push(batch.case(&all, kv_dtype));
        }
    }
    for kv_dtype in KV_DTYPES {
        for &(shape, seqs, share, window, softcap) in window_shapes(decode) {
            let batch = AttnBatch::new(rng, shape, seqs, share).windowed(window, softcap);
            let all: Vec<usize> = (0..batch.len()).collect();
            out.push(batch.case(&all, kv_dtype));
        }
    }
    // Quantized caches last, on the shapes whose rows are whole blocks.
    for kv_dtype in KV_QUANT {
        for s in attention_shapes(decode).iter().filter(|s| fits(kv_dtype, s)) {
            let batch = AttnBatch::new(rng, s.0, s.1, s.2);
            let all: Vec<usize> = (0..batch.len()).collect();
            out.push(batch.case(&all, kv_dtype));
        }
        for &(shape, seqs, share, window, softcap) in window_shapes(decode) {
            if fits(kv_dtype, &(shape, seqs, share)) {
                let batch = AttnBatch::new(rng, shape, seqs, share).windowed(window, softcap);
                let all: Vec<usize> = (0..batch.len()).collect();
                out.push(batch.case(&all, kv_dtype));
            }
        }
    }
    // Keys and values of two dtypes, last of all, on a few of the shapes.
    for kv in mixed_pairs() {
        for s in attention_shapes(decode).iter().filter(|s| fits(kv, s)).step_by(2) {
            let batch = AttnBatch::new(rng, s.0, s.1, s.2);
            let all: Vec<usize> = (0..batch.len()).collect();
            out.push(batch.case(&all, kv));
        }
    }
    out
}

/// The whole batch, and each of its sequences alone.
fn each_alone(batch: &AttnBatch, kv_dtype: DType) -> Invariance {
    let all: Vec<usize> = (0..batch.len()).collect();
    let alone =
        (0..batch.len()).map(|i| (batch.case(&[i], kv_dtype), batch.rows_of(i).start)).collect();
    let row_len = batch.heads * batch.head_dim;
    Invariance { batch: batch.case(&all, kv_dtype), alone, row_len }
}

pub(super) fn attention_invariance(rng: &mut Rng) -> Vec<Invariance> {
    let mut out = vec![];
    // Quantized caches last (the float dtypes' cases draw the same streams without them).
    for kv_dtype in KV_DTYPES.into_iter().chain(KV_QUANT) {
        for decode in [true, false] {
            let shapes = attention_shapes(decode).iter().filter(|s| fits(kv_dtype, s));
            for &(shape, seqs, share) in shapes.filter(|s| s.1.len() > 1) {
                out.push(each_alone(&AttnBatch::new(rng, shape, seqs, share), kv_dtype));
            }
        }
        // Speculative verifications: a sequence's 5 rows as decode rows (positions 254..258 cross
        // a CPU partition of 256 and a block), beside decodes of other sequences; each row must
        // equal that row decoded alone. With a window and soft-cap: (window, softcap).
        let verifies: [(AttnShape, usize, f32); 3] = [
            (((6, 2, 32, 16), &[(40, 0), (259, 5)], false), 0, 0.0),
            (((8, 2, 64, 16), &[(300, 0), (17, 0), (70, 4)], true), 0, 0.0),
            // Positions 300..304: the first row's window starts before the partition cut at
            // 256, the others' after it.
            (((4, 2, 32, 16), &[(90, 0), (305, 5)], false), 46, 2.0),
        ];
        for decode in [true, false] {
            let windowed = window_shapes(decode).iter().filter(|s| s.1.len() > 1);
            let windowed = windowed.filter(|s| fits(kv_dtype, &(s.0, s.1, s.2)));
            for &(shape, seqs, share, window, softcap) in windowed {
                let batch = AttnBatch::new(rng, shape, seqs, share).windowed(window, softcap);
                out.push(each_alone(&batch, kv_dtype));
            }
        }
        for ((shape, seqs, share), window, softcap) in verifies {
            if !fits(kv_dtype, &(shape, seqs, share)) {
                continue;
            }
            let batch =
                AttnBatch::new(rng, shape, seqs, share).verifying(1).windowed(window, softcap);
            let all: Vec<usize> = (0..batch.len()).collect();
            let v = batch.len() - 1;
            let mut alone: Vec<(Case, usize)> =
                (0..v).map(|i| (batch.case(&[i], kv_dtype), batch.rows_of(i).start)).collect();
            alone.extend(
                batch
                    .rows_of(v)
                    .enumerate()
                    .map(|(r, row)| (batch.verify_row_alone(v, r, kv_dtype), row)),
            );
            out.push(Invariance {
                batch: batch.case(&all, kv_dtype),
                alone,
                row_len: shape.0 * shape.2,
            });
        }
    }
    out
}
