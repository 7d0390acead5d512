//! The conformance cases: deterministic (seeded per op), odd sizes, every weight and KV dtype,
//! random non-contiguous block tables with NaN poison in every cache row outside the context.

use tandem_core::ops::*;
use tandem_core::quant::encode;
use tandem_core::{BufId, DType};

use crate::harness::{tolerance, Tol};
use crate::rng::Rng;

/// Every op the suite covers, by the name shared with kernels and tests.
pub const OPS: [&str; 12] = [
    "embed",
    "rms_norm",
    "matmul",
    "rope",
    "kv_write",
    "attention_prefill",
    "attention_decode",
    "swiglu",
    "add",
    "argmax",
    "sample",
    "copy_rows",
];

pub const WEIGHT_DTYPES: [DType; 6] =
    [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1];
/// The GGUF block types (issue #12): their cases come after every other dtype's, so adding
/// them left the older cases' random streams unchanged.
pub use tandem_core::dtype::BLOCK_DTYPES;

/// Every weight dtype, block types last.
fn all_weight_dtypes() -> impl Iterator<Item = DType> {
    WEIGHT_DTYPES.into_iter().chain(BLOCK_DTYPES)
}

/// `numel` weights of `dtype`: `v` values of scale `scale` encoded, or for a GGUF block type
/// (which tandem does not quantize to) random blocks: random bits everywhere, padding
/// included (kernels must ignore it), with finite f16 scales of either sign in [1e-3, 1e-2).
fn weights(rng: &mut Rng, numel: usize, scale: f32, dtype: DType) -> Vec<u8> {
    let Some(l) = dtype.block_layout() else {
        return encode(&rng.vec(numel, scale), dtype);
    };
    let mut bytes: Vec<u8> =
        (0..dtype.storage_bytes(numel)).map(|_| rng.next_u64() as u8).collect();
    for blk in bytes.chunks_exact_mut(l.stride) {
        for &f in tandem_core::quant::blocks::f16_fields(dtype) {
            let v = (1e-3 + 9e-3 * rng.unit()) * if rng.below(2) == 0 { 1.0 } else { -1.0 };
            blk[f..f + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    bytes
}
pub const KV_DTYPES: [DType; 2] = [DType::F32, DType::F16];

pub enum Init {
    /// Bytes written at the start of the buffer.
    Data(Vec<u8>),
    /// All bits set: NaN as f32/f16, 0xFFFFFFFF as u32. Outputs start like this so that an
    /// element a backend forgets to write fails the comparison.
    Poison,
}

pub struct BufSpec {
    pub dtype: DType,
    pub numel: usize,
    pub init: Init,
}

/// One op on freshly allocated buffers. `op` names buffers by their index in `bufs`
/// (`BufId(i)`); `checks` lists the buffers compared after the run and how.
pub struct Case {
    pub name: String,
    pub bufs: Vec<BufSpec>,
    pub op: Op,
    pub checks: Vec<(usize, Tol)>,
}

#[derive(Default)]
struct Bufs(Vec<BufSpec>);

impl Bufs {
    fn add(&mut self, dtype: DType, numel: usize, init: Init) -> BufId {
        self.0.push(BufSpec { dtype, numel, init });
        BufId(self.0.len() as u32 - 1)
    }
    fn f32(&mut self, v: &[f32]) -> BufId {
        self.add(DType::F32, v.len(), Init::Data(bytemuck::cast_slice(v).to_vec()))
    }
    fn u32(&mut self, v: &[u32]) -> BufId {
        self.add(DType::U32, v.len(), Init::Data(bytemuck::cast_slice(v).to_vec()))
    }
    fn encoded(&mut self, v: &[f32], dtype: DType) -> BufId {
        self.add(dtype, v.len(), Init::Data(encode(v, dtype)))
    }
    fn poison(&mut self, dtype: DType, numel: usize) -> BufId {
        self.add(dtype, numel, Init::Poison)
    }
    fn case(self, name: String, op: Op, checks: &[(BufId, Tol)]) -> Case {
        Case {
            name,
            bufs: self.0,
            op,
            checks: checks.iter().map(|(b, t)| (b.0 as usize, *t)).collect(),
        }
    }
}

/// The cases of one op ("attention_prefill" and "attention_decode" are separate lists).
pub fn cases_for(op: &str) -> Vec<Case> {
    // Seeded by op so adding cases to one op leaves the others unchanged.
    let seed = op.bytes().fold(0xC0FFEEu64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let rng = &mut Rng::new(seed);
    match op {
        "embed" => embed(rng),
        "rms_norm" => rms_norm(rng),
        "matmul" => matmul(rng),
        "rope" => rope(rng),
        "kv_write" => kv_write(rng),
        "attention_prefill" => attention(rng, false),
        "attention_decode" => attention(rng, true),
        "swiglu" => swiglu(rng),
        "add" => add(rng),
        "argmax" => argmax(rng),
        "sample" => sample(rng),
        "copy_rows" => copy_rows(rng),
        _ => vec![],
    }
}

fn embed(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for dtype in all_weight_dtypes() {
        // dim 13 / 100 / 172: rows start mid-block in the quantized layouts; 256 / 512: rows
        // of whole K-quant blocks, as in GGUF files.
        let extra: &[(usize, usize, usize)] =
            if dtype.block_layout().is_some() { &[(3, 9, 256), (4, 5, 512)] } else { &[] };
        for &(n, vocab, dim) in
            [(1, 37, 64), (5, 37, 13), (13, 50, 100), (7, 11, 172)].iter().chain(extra)
        {
            let mut b = Bufs::default();
            let table =
                b.add(dtype, vocab * dim, Init::Data(weights(rng, vocab * dim, 1.0, dtype)));
            let mut ids: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
            ids[n - 1] = ids[0]; // a repeated id
            ids[0] = vocab as u32 - 1; // the last row
            let ids = b.u32(&ids);
            let o = b.poison(DType::F32, n * dim);
            let op = Op::Embed(Embed { table, dtype, ids, out: o, n, vocab, dim });
            out.push(b.case(
                format!("{dtype} n={n} vocab={vocab} dim={dim}"),
                op,
                &[(o, tolerance("embed", dtype))],
            ));
        }
    }
    out
}

fn rms_norm(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for (n, dim) in [(1, 7), (5, 64), (13, 100), (3, 576)] {
        let mut b = Bufs::default();
        // Rows at very different scales: the normalization must be per row.
        let x: Vec<f32> =
            (0..n * dim).map(|i| rng.sym() * [1.0, 100.0, 0.01][(i / dim) % 3]).collect();
        let x = b.f32(&x);
        let weight = b.f32(&rng.vec(dim, 2.0));
        let o = b.poison(DType::F32, n * dim);
        let op = Op::RmsNorm(RmsNorm { x, weight, out: o, n, dim, eps: 1e-5 });
        out.push(b.case(format!("n={n} dim={dim}"), op, &[(o, tolerance("rms_norm", DType::F32))]));
    }
    out
}

fn matmul(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    // k = 100, 172, 37: not multiples of 32, so quantized rows start mid-block.
    let shapes = [
        (1, 64, 13),
        (5, 100, 7),
        (13, 172, 64),
        (1, 576, 100),
        (7, 96, 300),
        (1, 37, 5),
        (1, 172, 40),
        (13, 64, 33),
        (1, 128, 257),
        // Prompt-sized: k % 32 == 0 and enough tokens for a GPU's tensor-core path.
        (40, 256, 96),
        (67, 512, 130),
    ];
    // Rows of whole K-quant blocks for the block types' decode kernels: one and several
    // decode rows, and a prompt.
    let block_shapes = [(1, 256, 33), (3, 512, 20), (1, 768, 9), (6, 256, 17)];
    for dtype in all_weight_dtypes() {
        let extra: &[(usize, usize, usize)] =
            if dtype.block_layout().is_some() { &block_shapes } else { &[] };
        for (ci, &(n, k, m)) in shapes.iter().chain(extra).enumerate() {
            let with_bias = ci % 2 == 1;
            // One-token products are decodes; longer ones are prompts, some led by decode rows
            // (a step that batches decodes with a prompt chunk).
            let decode_rows = match (n, ci % 3) {
                (1, 0) => 0, // a one-token prompt
                (1, _) => 1,
                (_, 0) => n.min(5),
                (_, 1) => n, // decodes of n sequences
                _ => 0,
            };
            let mut b = Bufs::default();
            let x = b.f32(&rng.vec(n * k, 1.0));
            let w = b.add(dtype, m * k, Init::Data(weights(rng, m * k, 0.5, dtype)));
            let bias = with_bias.then(|| b.f32(&rng.vec(m, 1.0)));
            let o = b.poison(DType::F32, n * m);
            let op = Op::Matmul(Matmul { x, w, wdtype: dtype, bias, out: o, n, k, m, decode_rows });
            let name = format!(
                "{dtype} n={n} (decode {decode_rows}) k={k} m={m}{}",
                if with_bias { " +bias" } else { "" }
            );
            out.push(b.case(name, op, &[(o, tolerance("matmul", dtype))]));
        }
    }
    out
}

fn rope(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for (n, heads, head_dim) in [(1, 4, 64), (5, 3, 8), (13, 2, 16), (4, 7, 128)] {
        let mut b = Bufs::default();
        let x = b.f32(&rng.vec(n * heads * head_dim, 1.0));
        let mut pos: Vec<u32> = (0..n).map(|_| rng.below(2048) as u32).collect();
        pos[0] = 0; // identity at position 0
        let positions = b.u32(&pos);
        let half = head_dim / 2;
        let inv: Vec<f32> =
            (0..half).map(|j| 10000f32.powf(-((2 * j) as f32) / head_dim as f32)).collect();
        let inv_freq = b.f32(&inv);
        let op = Op::Rope(Rope { x, positions, inv_freq, n, heads, head_dim });
        // In place: x is the checked output.
        out.push(b.case(
            format!("n={n} heads={heads} head_dim={head_dim}"),
            op,
            &[(x, tolerance("rope", DType::F32))],
        ));
    }
    out
}

fn kv_write(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for kv_dtype in KV_DTYPES {
        for (n, kv_heads, head_dim, rows) in [(1, 2, 64, 40), (5, 1, 8, 16), (13, 4, 16, 64)] {
            let mut b = Bufs::default();
            let row = kv_heads * head_dim;
            let k = b.f32(&rng.vec(n * row, 2.0));
            let v = b.f32(&rng.vec(n * row, 2.0));
            // Poisoned caches: rows not written must come back still poisoned.
            let cache_k = b.poison(kv_dtype, rows * row);
            let cache_v = b.poison(kv_dtype, rows * row);
            let mut all: Vec<u32> = (0..rows as u32).collect();
            rng.shuffle(&mut all);
            let slots = b.u32(&all[..n]);
            let op = Op::KvWrite(KvWrite {
                k,
                v,
                cache_k,
                cache_v,
                kv_dtype,
                slots,
                n,
                kv_heads,
                head_dim,
            });
            let tol = tolerance("kv_write", kv_dtype);
            let name =
                format!("{kv_dtype} n={n} kv_heads={kv_heads} head_dim={head_dim} rows={rows}");
            out.push(b.case(name, op, &[(cache_k, tol), (cache_v, tol)]));
        }
    }
    out
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
        AttnBatch { heads, kv_heads, head_dim, bs, pool, ck, cv, seqs: specs, decodes, verifies: 0 }
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
    pub fn case(&self, which: &[usize], kv_dtype: DType) -> Case {
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
        let cache_k = b.encoded(&self.ck, kv_dtype);
        let cache_v = b.encoded(&self.cv, kv_dtype);
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
            kv_dtype,
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
        let name = format!(
            "{kv_dtype} [{}] heads={heads}/{} hd={hd} bs={} pool={}",
            ctxs.join(" "),
            self.kv_heads,
            self.bs,
            self.pool
        );
        b.case(name, op.clone(), &[(o, tolerance(op.name(), kv_dtype))])
    }
}

/// (heads, kv_heads, head_dim, block_size) and the sequences ((ctx_len, rows), rows 0: a
/// decode) of the attention batches; GQA ratios 1, 2, 4 and MQA.
type AttnShape = ((usize, usize, usize, usize), &'static [(usize, usize)], bool);

fn attention_shapes(decode: bool) -> &'static [AttnShape] {
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

fn attention(rng: &mut Rng, decode: bool) -> Vec<Case> {
    let mut out = vec![];
    for kv_dtype in KV_DTYPES {
        for &(shape, seqs, share) in attention_shapes(decode) {
            let batch = AttnBatch::new(rng, shape, seqs, share);
            let all: Vec<usize> = (0..batch.len()).collect();
            out.push(batch.case(&all, kv_dtype));
        }
    }
    out
}

/// One op over a batch, and each of its requests alone: the rows each request gets inside the
/// batch must equal, bit for bit, what it gets alone (batch invariance).
pub struct Invariance {
    pub batch: Case,
    /// (the request alone, its first output row in the batch); outputs are f32 rows of
    /// `row_len` elements in the first checked buffer.
    pub alone: Vec<(Case, usize)>,
    pub row_len: usize,
}

/// The batch-invariance cases of "matmul" and "attention".
pub fn invariance_cases(op: &str) -> Vec<Invariance> {
    let rng = &mut Rng::new(0x1A7A);
    match op {
        "matmul" => matmul_invariance(rng),
        "attention" => attention_invariance(rng),
        _ => vec![],
    }
}

fn matmul_invariance(rng: &mut Rng) -> Vec<Invariance> {
    let mut out = vec![];
    // (decode rows, prompt chunk lengths): enough rows that a GPU would pick its batched or
    // tensor-core kernels for the batch but not for a request alone.
    // 5, 6 and 20 decode rows split into the CPU kernel's groups of 4 with 1, 2 and 0 left.
    let mixes: [(usize, &[usize]); 4] = [(5, &[]), (3, &[7, 1]), (20, &[30, 2]), (6, &[])];
    for dtype in all_weight_dtypes() {
        // k = 352: 11 blocks of 32, a whole group of 8 scales and a tail of 3.
        for (k, m) in [(256, 96), (352, 21), (100, 37)] {
            for (mi, &(decodes, prompts)) in mixes.iter().enumerate() {
                let w = weights(rng, m * k, 0.5, dtype);
                let bias = (mi % 2 == 1).then(|| rng.vec(m, 1.0));
                let reqs: Vec<(usize, bool)> = (0..decodes)
                    .map(|_| (1, true))
                    .chain(prompts.iter().map(|&n| (n, false)))
                    .collect();
                let xs: Vec<Vec<f32>> = reqs.iter().map(|&(n, _)| rng.vec(n * k, 1.0)).collect();
                let case = |parts: &[usize]| {
                    let mut b = Bufs::default();
                    let x: Vec<f32> = parts.iter().flat_map(|&i| xs[i].iter().copied()).collect();
                    let n: usize = parts.iter().map(|&i| reqs[i].0).sum();
                    let decode_rows = parts.iter().filter(|&&i| reqs[i].1).count();
                    let x = b.f32(&x);
                    let wb = b.add(dtype, m * k, Init::Data(w.clone()));
                    let bias = bias.as_ref().map(|v| b.f32(v));
                    let o = b.poison(DType::F32, n * m);
                    let op = Op::Matmul(Matmul {
                        x,
                        w: wb,
                        wdtype: dtype,
                        bias,
                        out: o,
                        n,
                        k,
                        m,
                        decode_rows,
                    });
                    b.case(
                        format!("{dtype} k={k} m={m} n={n} (decode {decode_rows})"),
                        op,
                        &[(o, Tol::Exact)],
                    )
                };
                let all: Vec<usize> = (0..reqs.len()).collect();
                let mut alone = vec![];
                let mut row = 0;
                for i in 0..reqs.len() {
                    alone.push((case(&[i]), row));
                    row += reqs[i].0;
                }
                out.push(Invariance { batch: case(&all), alone, row_len: m });
            }
        }
    }
    out
}

fn attention_invariance(rng: &mut Rng) -> Vec<Invariance> {
    let mut out = vec![];
    for kv_dtype in KV_DTYPES {
        for decode in [true, false] {
            for &(shape, seqs, share) in attention_shapes(decode).iter().filter(|s| s.1.len() > 1) {
                let batch = AttnBatch::new(rng, shape, seqs, share);
                let all: Vec<usize> = (0..batch.len()).collect();
                let alone = (0..batch.len())
                    .map(|i| (batch.case(&[i], kv_dtype), batch.rows_of(i).start))
                    .collect();
                let row_len = shape.0 * shape.2;
                out.push(Invariance { batch: batch.case(&all, kv_dtype), alone, row_len });
            }
        }
        // Speculative verifications: a sequence's 5 rows as decode rows (positions 254..258 cross
        // a CPU partition of 256 and a block), beside decodes of other sequences; each row must
        // equal that row decoded alone.
        let verifies: [AttnShape; 2] = [
            ((6, 2, 32, 16), &[(40, 0), (259, 5)], false),
            ((8, 2, 64, 16), &[(300, 0), (17, 0), (70, 4)], true),
        ];
        for (shape, seqs, share) in verifies {
            let batch = AttnBatch::new(rng, shape, seqs, share).verifying(1);
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

fn swiglu(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for len in [1, 7, 100, 1000, 4099] {
        let mut b = Bufs::default();
        let gate = b.f32(&rng.vec(len, 8.0)); // into silu's saturated tails
        let up = b.f32(&rng.vec(len, 1.0));
        let o = b.poison(DType::F32, len);
        let op = Op::Swiglu(Swiglu { gate, up, out: o, len });
        out.push(b.case(format!("len={len}"), op, &[(o, tolerance("swiglu", DType::F32))]));
    }
    out
}

fn add(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for len in [1, 13, 1000, 5001] {
        let mut b = Bufs::default();
        let x = b.f32(&rng.vec(len, 10.0));
        let y = b.f32(&rng.vec(len, 1.0));
        let op = Op::Add(Add { x, y, len });
        out.push(b.case(format!("len={len}"), op, &[(x, tolerance("add", DType::F32))]));
    }
    out
}

fn argmax(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for (n, width) in [(1, 7), (5, 100), (3, 49152), (13, 13)] {
        let mut b = Bufs::default();
        let mut x = rng.vec(n * width, 5.0);
        for (i, row) in x.chunks_exact_mut(width).enumerate() {
            match i % 4 {
                // A tie: the lower index must win.
                0 => {
                    let (j1, j2) = (rng.below(width), rng.below(width));
                    row[j1] = 100.0;
                    row[j2] = 100.0;
                }
                // NaN never wins, even first in the row or after the maximum.
                1 => {
                    row[0] = f32::NAN;
                    row[width - 1] = f32::NAN;
                    let j = rng.below(width);
                    row[j] = f32::NAN;
                }
                // Everything -inf but one NaN: the first -inf wins.
                2 => {
                    row.fill(f32::NEG_INFINITY);
                    row[0] = f32::NAN;
                }
                _ => {}
            }
        }
        let x = b.f32(&x);
        let o = b.poison(DType::U32, n);
        let op = Op::Argmax(Argmax { x, out: o, n, width });
        out.push(b.case(
            format!("n={n} width={width}"),
            op,
            &[(o, tolerance("argmax", DType::F32))],
        ));
    }
    out
}

/// Sampling over vocabulary-sized and odd rows with every filter, alone and combined. Logits
/// are spread wide (a real model's are) and the draws avoid the exact edges of the cumulative
/// distribution, where a different summation order could legitimately round across.
/// Sampling over vocabulary-sized and odd rows with every filter, alone and combined, and
/// batches whose rows each have their own parameters (greedy rows among them). Logits are
/// spread wide (a real model's are) and the draws avoid the exact edges of the cumulative
/// distribution, where a different summation order could legitimately round across.
fn sample(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    let filters: [(f32, u32, f32, f32); 7] = [
        (1.0, 0, 1.0, 0.0),
        (0.7, 40, 1.0, 0.0),
        (1.3, 0, 0.9, 0.0),
        (1.0, 0, 1.0, 0.05),
        (0.8, 50, 0.95, 0.02),
        (2.0, 1, 1.0, 0.0),
        (0.0, 0, 1.0, 0.0),
    ];
    let draw = |rng: &mut Rng| 0.05 + 0.9 * (rng.below(1000) as f32 / 1000.0);
    let mut push =
        |rng: &mut Rng, width: usize, rows: Vec<SampleRow>, poison_row: Option<usize>| {
            let n = rows.len();
            let mut b = Bufs::default();
            let mut x = rng.vec(n * width, 8.0);
            if let Some(r) = poison_row {
                // A NaN and a -inf must never be drawn.
                x[r * width + width / 2] = f32::NAN;
                x[r * width + width / 3] = f32::NEG_INFINITY;
            }
            let x = b.f32(&x);
            let params = b.u32(&SampleRow::to_words(&rows));
            let o = b.poison(DType::U32, n);
            let op = Op::Sample(Sample { x, params, out: o, n, width });
            let desc: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "T={} k={} p={} min_p={} u={}",
                        r.temperature, r.top_k, r.top_p, r.min_p, r.uniform
                    )
                })
                .collect();
            let name = format!("n={n} width={width} [{}]", desc.join("; "));
            out.push(b.case(name, op, &[(o, tolerance("sample", DType::F32))]));
        };
    for (width, n) in [(13, 1), (1000, 2), (49152, 1)] {
        for (f, &(temperature, top_k, top_p, min_p)) in filters.iter().enumerate() {
            let rows = (0..n)
                .map(|_| SampleRow { temperature, top_k, top_p, min_p, uniform: draw(rng) })
                .collect();
            push(rng, width, rows, (f == 3).then_some(0));
        }
    }
    // Every row its own filter and draw.
    for width in [1000, 49152] {
        let rows = filters
            .iter()
            .map(|&(temperature, top_k, top_p, min_p)| SampleRow {
                temperature,
                top_k,
                top_p,
                min_p,
                uniform: draw(rng),
            })
            .collect();
        push(rng, width, rows, Some(3));
    }
    // Rows with no finite logit: greedy and sampled alike give argmax's answer (the first
    // +inf; else the first -inf; NaN never).
    for (f, vals) in [
        [f32::NAN, f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY],
        [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, f32::INFINITY],
    ]
    .iter()
    .enumerate()
    {
        for temperature in [0.0, 1.0] {
            let mut b = Bufs::default();
            let width = 300;
            let mut x = vec![f32::NAN; width];
            for (j, &v) in vals.iter().enumerate() {
                x[50 + 60 * j] = v;
            }
            let x = b.f32(&x);
            let row = SampleRow { temperature, top_k: 0, top_p: 1.0, min_p: 0.0, uniform: 0.5 };
            let params = b.u32(&SampleRow::to_words(&[row]));
            let o = b.poison(DType::U32, 1);
            let op = Op::Sample(Sample { x, params, out: o, n: 1, width });
            out.push(b.case(
                format!("no finite logit {f} T={temperature}"),
                op,
                &[(o, tolerance("sample", DType::F32))],
            ));
        }
    }
    out
}

fn copy_rows(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for (src_rows, src_row, dst_row, n_rows, width) in
        [(13, 12, 0, 1, 64), (5, 0, 0, 5, 7), (20, 3, 2, 9, 100), (9, 8, 4, 1, 33)]
    {
        let mut b = Bufs::default();
        let src = b.f32(&rng.vec(src_rows * width, 1.0));
        // Rows before dst_row keep their poison: the reference leaves them too.
        let dst = b.poison(DType::F32, (dst_row + n_rows) * width);
        let op = Op::CopyRows(CopyRows { src, dst, src_row, dst_row, n_rows, width });
        let name = format!(
            "rows {src_row}..{} of {src_rows} to {dst_row}.. width={width}",
            src_row + n_rows
        );
        out.push(b.case(name, op, &[(dst, tolerance("copy_rows", DType::F32))]));
    }
    out
}
