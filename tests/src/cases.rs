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

pub const WEIGHT_DTYPES: [DType; 6] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
];
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
        self.add(
            DType::F32,
            v.len(),
            Init::Data(bytemuck::cast_slice(v).to_vec()),
        )
    }
    fn u32(&mut self, v: &[u32]) -> BufId {
        self.add(
            DType::U32,
            v.len(),
            Init::Data(bytemuck::cast_slice(v).to_vec()),
        )
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
    let seed = op.bytes().fold(0xC0FFEEu64, |h, b| {
        h.wrapping_mul(31).wrapping_add(b as u64)
    });
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
    for dtype in WEIGHT_DTYPES {
        // dim 13 / 100 / 172: rows start mid-block in the quantized layouts.
        for (n, vocab, dim) in [(1, 37, 64), (5, 37, 13), (13, 50, 100), (7, 11, 172)] {
            let mut b = Bufs::default();
            let table = b.encoded(&rng.vec(vocab * dim, 1.0), dtype);
            let mut ids: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
            ids[n - 1] = ids[0]; // a repeated id
            ids[0] = vocab as u32 - 1; // the last row
            let ids = b.u32(&ids);
            let o = b.poison(DType::F32, n * dim);
            let op = Op::Embed(Embed {
                table,
                dtype,
                ids,
                out: o,
                n,
                vocab,
                dim,
            });
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
        let x: Vec<f32> = (0..n * dim)
            .map(|i| rng.sym() * [1.0, 100.0, 0.01][(i / dim) % 3])
            .collect();
        let x = b.f32(&x);
        let weight = b.f32(&rng.vec(dim, 2.0));
        let o = b.poison(DType::F32, n * dim);
        let op = Op::RmsNorm(RmsNorm {
            x,
            weight,
            out: o,
            n,
            dim,
            eps: 1e-5,
        });
        out.push(b.case(
            format!("n={n} dim={dim}"),
            op,
            &[(o, tolerance("rms_norm", DType::F32))],
        ));
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
    for dtype in WEIGHT_DTYPES {
        for (ci, (n, k, m)) in shapes.into_iter().enumerate() {
            let with_bias = ci % 2 == 1;
            let mut b = Bufs::default();
            let x = b.f32(&rng.vec(n * k, 1.0));
            let w = b.encoded(&rng.vec(m * k, 0.5), dtype);
            let bias = with_bias.then(|| b.f32(&rng.vec(m, 1.0)));
            let o = b.poison(DType::F32, n * m);
            let op = Op::Matmul(Matmul {
                x,
                w,
                wdtype: dtype,
                bias,
                out: o,
                n,
                k,
                m,
            });
            let name = format!(
                "{dtype} n={n} k={k} m={m}{}",
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
        let inv: Vec<f32> = (0..half)
            .map(|j| 10000f32.powf(-((2 * j) as f32) / head_dim as f32))
            .collect();
        let inv_freq = b.f32(&inv);
        let op = Op::Rope(Rope {
            x,
            positions,
            inv_freq,
            n,
            heads,
            head_dim,
        });
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

fn attention(rng: &mut Rng, decode: bool) -> Vec<Case> {
    // (n, ctx_len, heads, kv_heads, head_dim, block_size): GQA ratios 1, 2, 4 and MQA.
    let shapes: &[(usize, usize, usize, usize, usize, usize)] = if decode {
        &[
            (1, 1, 4, 4, 8, 4),
            (1, 17, 4, 2, 64, 4),
            (1, 300, 8, 2, 64, 16),
            (1, 77, 8, 1, 8, 16),
            (1, 129, 4, 4, 64, 16),
            (1, 50, 8, 2, 8, 4),
        ]
    } else {
        &[
            // Whole prompts: n == ctx_len.
            (5, 5, 4, 4, 8, 4),
            (13, 13, 4, 2, 64, 16),
            (13, 13, 8, 2, 8, 4),
            (20, 20, 4, 1, 64, 4),
            // Chunked prefill continuing a context: n < ctx_len.
            (5, 21, 4, 4, 64, 4),
            (13, 40, 4, 2, 8, 16),
            (7, 33, 8, 1, 8, 4),
            (9, 100, 8, 2, 64, 16),
            (40, 70, 8, 4, 8, 16),
        ]
    };
    let mut out = vec![];
    for kv_dtype in KV_DTYPES {
        for &(n, ctx_len, heads, kv_heads, head_dim, bs) in shapes {
            let mut b = Bufs::default();
            let needed = ctx_len.div_ceil(bs);
            // Shuffled blocks from a pool larger than needed: non-contiguous and out of order.
            let pool = needed + 3 + rng.below(needed + 1);
            let mut blocks: Vec<u32> = (0..pool as u32).collect();
            rng.shuffle(&mut blocks);
            let mut table = blocks[..needed].to_vec();
            // Entries past ceil(ctx_len / block_size) are garbage a backend must not read.
            table.extend([u32::MAX, 7]);
            let row = kv_heads * head_dim;
            let mut ck = vec![f32::NAN; pool * bs * row];
            let mut cv = vec![f32::NAN; pool * bs * row];
            for t in 0..ctx_len {
                let r = table[t / bs] as usize * bs + t % bs;
                for e in r * row..(r + 1) * row {
                    ck[e] = rng.sym();
                    cv[e] = rng.sym() * 2.0;
                }
            }
            let cache_k = b.encoded(&ck, kv_dtype);
            let cache_v = b.encoded(&cv, kv_dtype);
            let block_table = b.u32(&table);
            // Scaled queries give peaked softmaxes, so the running max actually moves.
            let q = b.f32(&rng.vec(n * heads * head_dim, 3.0));
            let o = b.poison(DType::F32, n * heads * head_dim);
            let scale = 1.0 / (head_dim as f32).sqrt();
            let op = Op::Attention(Attention {
                q,
                cache_k,
                cache_v,
                kv_dtype,
                block_table,
                out: o,
                n,
                ctx_len,
                heads,
                kv_heads,
                head_dim,
                block_size: bs,
                scale,
            });
            let name = format!(
                "{kv_dtype} n={n} ctx={ctx_len} heads={heads}/{kv_heads} hd={head_dim} bs={bs}"
            );
            out.push(b.case(name, op.clone(), &[(o, tolerance(op.name(), kv_dtype))]));
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
        let op = Op::Swiglu(Swiglu {
            gate,
            up,
            out: o,
            len,
        });
        out.push(b.case(
            format!("len={len}"),
            op,
            &[(o, tolerance("swiglu", DType::F32))],
        ));
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
        out.push(b.case(
            format!("len={len}"),
            op,
            &[(x, tolerance("add", DType::F32))],
        ));
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
        let op = Op::Argmax(Argmax {
            x,
            out: o,
            n,
            width,
        });
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
fn sample(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    let filters: [(f32, usize, f32, f32); 6] =
        [(1.0, 0, 1.0, 0.0), (0.7, 40, 1.0, 0.0), (1.3, 0, 0.9, 0.0), (1.0, 0, 1.0, 0.05), (0.8, 50, 0.95, 0.02), (2.0, 1, 1.0, 0.0)];
    for (width, n) in [(13, 1), (1000, 2), (49152, 1)] {
        for (f, &(temperature, top_k, top_p, min_p)) in filters.iter().enumerate() {
            let mut b = Bufs::default();
            let mut x = rng.vec(n * width, 8.0);
            if f == 3 {
                // A NaN and a -inf must never be drawn.
                x[width / 2] = f32::NAN;
                x[width / 3] = f32::NEG_INFINITY;
            }
            let x = b.f32(&x);
            let o = b.poison(DType::U32, n);
            let uniform = 0.05 + 0.9 * (rng.below(1000) as f32 / 1000.0);
            let op = Op::Sample(Sample { x, out: o, n, width, temperature, top_k, top_p, min_p, uniform });
            let name = format!("n={n} width={width} T={temperature} top_k={top_k} top_p={top_p} min_p={min_p} u={uniform}");
            out.push(b.case(name, op, &[(o, tolerance("sample", DType::F32))]));
        }
    }
    out
}

fn copy_rows(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for (src_rows, src_row, n_rows, width) in [(13, 12, 1, 64), (5, 0, 5, 7), (20, 3, 9, 100)] {
        let mut b = Bufs::default();
        let src = b.f32(&rng.vec(src_rows * width, 1.0));
        let dst = b.poison(DType::F32, n_rows * width);
        let op = Op::CopyRows(CopyRows {
            src,
            dst,
            src_row,
            n_rows,
            width,
        });
        let name = format!(
            "rows {src_row}..{} of {src_rows} width={width}",
            src_row + n_rows
        );
        out.push(b.case(name, op, &[(dst, tolerance("copy_rows", DType::F32))]));
    }
    out
}
