//! Matmul launches: which kernel a row gets, shared decode launches, tensor-core shapes,
//! and decode steps repeated and captured.

use super::*;

#[test]
fn decode_grid_covers_every_row_of_its_bucket() {
    use ops::{decode_grid, part_len};
    for max_ctx in [
        1usize,
        31,
        32,
        33,
        100,
        4096,
        8191,
        8192,
        8193,
        20000,
        70000,
        1 << 21,
        (1 << 21) + 1,
        5_000_000,
    ] {
        let (part_max, parts) = decode_grid(max_ctx);
        let cap = max_ctx.next_power_of_two();
        // Every context up to the bucket's top fits the grid and the shared memory.
        let step = (cap / 4096).max(1);
        let most =
            (1..=cap).step_by(step).chain([cap]).map(|c| c.div_ceil(part_len(c))).max().unwrap();
        assert_eq!(parts, most, "max_ctx {max_ctx}");
        assert!((1..=cap).step_by(step).all(|c| part_len(c) <= part_max), "max_ctx {max_ctx}");
        // The launch stays the same while max_ctx grows within its power-of-two bucket.
        assert_eq!(decode_grid(cap), (part_max, parts));
    }
    assert_eq!(decode_grid(2048), (32, 64), "2048 positions in 64 partitions of 32");
    assert_eq!(decode_grid(8193), (64, 256), "long contexts: longer partitions, about 256");
}

/// The launches of a matmul of `n` rows, `decode_rows` of them decodes, with buffers of its own.
fn matmul(
    f: &mut Fake,
    wdtype: DType,
    n: usize,
    decode_rows: usize,
    k: usize,
    m: usize,
) -> Vec<Launch> {
    let (x, w, bias, out) = (
        f.buf(DType::F32, n * k),
        f.buf(wdtype, m * k),
        f.buf(DType::F32, m),
        f.buf(DType::F32, n * m),
    );
    f.record(&[Op::Matmul(Matmul { x, w, wdtype, bias: Some(bias), out, n, k, m, decode_rows })])
        .unwrap()
}

#[test]
fn a_rows_kernel_follows_its_class_not_n() {
    let mut f = Fake::new();
    for wdtype in [DType::F32, DType::Q4_0, DType::BF16] {
        for (k, m) in [(256, 96), (100, 37), (32 * 600, 5)] {
            // Each decode row: the same kernel and block as a one-row product's (n1 and nt run
            // one per-token arithmetic, matvec_nt), its token or tile of 8 on y.
            let family = |e: &str| e.replace("_nt_", "_n1_");
            let alone = matmul(&mut f, wdtype, 1, 1, k, m);
            for (n, dr) in [(5, 5), (30, 20), (2, 1)] {
                let l = matmul(&mut f, wdtype, n, dr, k, m);
                assert_eq!(
                    (family(l[0].entry), l[0].block),
                    (family(alone[0].entry), alone[0].block),
                    "{wdtype} k={k} n={n}"
                );
                let tokens = if l[0].entry.contains("_n1_") { dr } else { dr.div_ceil(8) };
                assert_eq!(l[0].grid.1 as usize, tokens);
            }
            // Prompt rows: the same launches' kinds whatever their count, one row included.
            let kinds = |l: &[Launch]| {
                l.iter()
                    .skip_while(|l| l.entry.starts_with("matmul_decode"))
                    .map(|l| (l.entry, l.block))
                    .collect::<BTreeSet<_>>()
            };
            let one = kinds(&matmul(&mut f, wdtype, 1, 0, k, m));
            for (n, dr) in [(300, 0), (9, 1), (130, 2)] {
                assert_eq!(
                    kinds(&matmul(&mut f, wdtype, n, dr, k, m)),
                    one,
                    "{wdtype} k={k} n={n}"
                );
            }
        }
    }
}

#[test]
fn products_over_one_x_share_their_decode_launch() {
    // q, k and v (gate and up) read the same x, a group the model records: their decode rows
    // are one n1/nt launch whose segments are the three weights; their prompt rows stay each
    // their own.
    let mut f = Fake::new();
    let (k, n) = (256, 6);
    let x = f.buf(DType::F32, n * k);
    let product = |f: &mut Fake, x, m, decode_rows, wdtype| {
        let (w, out) = (f.buf(wdtype, m * k), f.buf(DType::F32, n * m));
        Matmul { x, w, wdtype, bias: None, out, n, k, m, decode_rows }
    };
    let q4 = DType::Q4_1;
    let grouped = |ops: Vec<Matmul>| {
        let mut s = Step::default();
        s.group(ops).unwrap();
        s
    };
    let qkv = [
        product(&mut f, x, 64, n, q4),
        product(&mut f, x, 32, n, q4),
        product(&mut f, x, 32, n, q4),
    ];
    let l = f.record_step(&grouped(qkv.to_vec())).unwrap();
    assert_eq!(l.len(), 1, "one launch for three products");
    assert_eq!(l[0].entry, "matmul_decode_nt_q4_1");
    let m_args: Vec<u64> = [6, 12, 18].iter().map(|&i| l[0].args[i].bits()).collect();
    assert_eq!(m_args, [64, 32, 32], "each segment's rows");
    // The same products not recorded as a group: each its own launch.
    assert_eq!(f.record(&qkv.map(Op::Matmul)).unwrap().len(), 3);
    // A group of four: three in one launch (the kernel's most), the fourth alone.
    let four: Vec<Matmul> = (0..4).map(|_| product(&mut f, x, 32, n, q4)).collect();
    assert_eq!(f.record_step(&grouped(four)).unwrap().len(), 2);
    // Another weight type starts another launch.
    let mixed = vec![product(&mut f, x, 64, n, q4), product(&mut f, x, 32, n, DType::Q8_0)];
    assert_eq!(f.record_step(&grouped(mixed)).unwrap().len(), 2);
    // A group with another x, or an output that is the shared x, is refused by the engine,
    // and so is a step carrying one anyway.
    let y = f.buf(DType::F32, n * k);
    let apart = [product(&mut f, x, 64, n, q4), product(&mut f, y, 32, n, q4)];
    assert!(Step::default().group(apart.clone()).is_err());
    let mut forged = Step { ops: apart.map(Op::Matmul).to_vec(), ..Default::default() };
    forged.groups.push(0..2);
    assert!(f.record_step(&forged).is_err());
    let writes_x = Matmul { out: x, ..product(&mut f, x, 32, n, q4) };
    assert!(Step::default().group([product(&mut f, x, 64, n, q4), writes_x]).is_err());
    // With prompt rows: the decode rows still share a launch, the prompt rows do not.
    let mixed = vec![product(&mut f, x, 64, 2, q4), product(&mut f, x, 32, 2, q4)];
    let l = f.record_step(&grouped(mixed)).unwrap();
    assert_eq!(l.iter().filter(|l| l.entry.starts_with("matmul_decode")).count(), 1);
}

#[test]
fn tensor_core_products_have_one_shape_per_weight() {
    // cuBLAS picks its kernel from the product's shape and its operands' alignment, so every
    // product of one weight must be the same whatever the rows: n, k, m, ldc, and the operands
    // in scratch at the same offsets (the activations by whole chunks).
    let mut f = Fake::new();
    use ops::TC_ROWS;
    for (k, m) in [(64, 70), (4096, 300)] {
        let mut seen = None;
        for (n, dr) in [(1, 0), (7, 3), (TC_ROWS + 1, 0), (2 * TC_ROWS + 44, 44)] {
            let l = matmul(&mut f, DType::Q8_0, n, dr, k, m);
            let gemms: Vec<_> = l.iter().filter_map(|l| l.gemm).collect();
            assert_eq!(
                gemms.len(),
                (n - dr).div_ceil(TC_ROWS),
                "a product per chunk of TC_ROWS rows"
            );
            for (c, g) in gemms.iter().enumerate() {
                let x0 = g.x - (c * TC_ROWS * k * 2) as u64;
                let shape = (g.n, g.k, g.m, g.ldc, g.w, g.out, x0);
                assert_eq!(*seen.get_or_insert(shape), shape, "k={k} m={m} n={n}");
            }
        }
    }
}

#[test]
fn decode_steps_repeat_their_launches_as_contexts_grow() {
    // A graph replays recorded launches: a decode step's must not change while the contexts
    // grow within max_ctx's power-of-two bucket (positions and tables are uploaded data).
    let mut f = Fake::new();
    let (cache, q) = (f.buf(DType::F16, 64 * 16 * 2 * 64), f.buf(DType::F32, 3 * 8 * 64));
    let out = f.buf(DType::F32, 3 * 8 * 64);
    let (positions, table_starts, tables) = (f.u32s(&[0; 3]), f.u32s(&[0; 3]), f.u32s(&[0; 64]));
    let step = |max_ctx| {
        let op = Attention {
            q,
            cache_k: cache,
            cache_v: cache,
            kv_dtypes: DType::F16.into(),
            positions,
            table_starts,
            tables,
            tables_len: 64,
            out,
            n: 3,
            decode_rows: 3,
            max_ctx,
            heads: 8,
            kv_heads: 2,
            head_dim: 64,
            block_size: 16,
            scale: 0.125,
            window: 0,
            softcap: 0.0,
        };
        f.record(&[Op::Attention(op)]).unwrap()
    };
    assert!(step(300) == step(512), "one bucket");
    assert!(step(512) != step(513), "the next bucket");
}

#[test]
fn decode_steps_are_captured_on_first_sight() {
    let mut f = Fake::new();
    let ops = every_op(&mut f);
    assert!(!crate::graph::decode_step(&ops), "prompt rows among them");
    let decodes: Vec<Op> = ops
        .into_iter()
        .filter(|op| match op {
            Op::Matmul(m) => m.decode_rows == m.n,
            Op::Attention(a) => a.decode_rows == a.n,
            _ => true,
        })
        .collect();
    assert!(crate::graph::decode_step(&decodes));
    assert!(!crate::graph::decode_step(&decodes[..1]), "an embedding alone");
}
