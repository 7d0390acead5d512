//! Cases of the ops that read weights of every dtype: embed and matmul (with its batch
//! invariance).

use tandem_core::ops::*;
use tandem_core::DType;

use super::*;
use crate::harness::tolerance;
use crate::rng::Rng;

pub(super) fn embed(rng: &mut Rng) -> Vec<Case> {
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
            let op = Op::Embed(Embed { table, dtype, ids, out: o, n, vocab, dim, scale: 1.0 });
            out.push(b.case(
                format!("{dtype} n={n} vocab={vocab} dim={dim}"),
                op,
                &[(o, tolerance("embed", dtype))],
            ));
        }
    }
    // Gemma's scaled lookup: the row times sqrt(dim), one more correctly rounded product.
    for dtype in all_weight_dtypes() {
        let (n, vocab, dim) = (4, 21, if dtype.block_layout().is_some() { 256 } else { 100 });
        let mut b = Bufs::default();
        let table = b.add(dtype, vocab * dim, Init::Data(weights(rng, vocab * dim, 1.0, dtype)));
        let ids = b.u32(&(0..n).map(|_| rng.below(vocab) as u32).collect::<Vec<_>>());
        let o = b.poison(DType::F32, n * dim);
        let scale = (dim as f32).sqrt() * 1.01;
        let op = Op::Embed(Embed { table, dtype, ids, out: o, n, vocab, dim, scale });
        out.push(b.case(
            format!("{dtype} n={n} vocab={vocab} dim={dim} scale={scale}"),
            op,
            &[(o, tolerance("embed", dtype))],
        ));
    }
    out
}

pub(super) fn matmul(rng: &mut Rng) -> Vec<Case> {
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

pub(super) fn matmul_invariance(rng: &mut Rng) -> Vec<Invariance> {
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
                for (i, &(n, _)) in reqs.iter().enumerate() {
                    alone.push((case(&[i]), row));
                    row += n;
                }
                out.push(Invariance { batch: case(&all), alone, row_len: m });
            }
        }
    }
    out
}
