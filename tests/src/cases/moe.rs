//! Cases of the mixture-of-experts ops: routing (ties, every k), the experts' matmuls in every
//! weight dtype (experts chosen by several tokens, and by none) and their batch invariance,
//! and the weighted sum.

use tandem_core::ops::*;
use tandem_core::DType;

use super::*;
use crate::harness::tolerance;
use crate::rng::Rng;

pub(super) fn route(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for (n, experts, k, norm) in
        [(1, 8, 2, true), (5, 8, 2, false), (13, 60, 4, true), (3, 128, 8, true), (4, 4, 4, false)]
    {
        let mut b = Bufs::default();
        let mut logits = rng.vec(n * experts, 4.0);
        // Equal logits in a row: the lower index must come first.
        logits[1] = logits[0];
        if n > 1 && experts > 4 {
            logits[experts + 3] = logits[experts + 2];
        }
        let l = b.f32(&logits);
        let ids = b.poison(DType::U32, n * k);
        let weights = b.poison(DType::F32, n * k);
        let op = Op::MoeRoute(MoeRoute { logits: l, ids, weights, n, experts, k, norm });
        out.push(b.case(
            format!("n={n} experts={experts} k={k} norm={norm}"),
            op,
            &[
                (ids, tolerance("moe_route", DType::U32)),
                (weights, tolerance("moe_route", DType::F32)),
            ],
        ));
    }
    out
}

/// Expert ids for `n` tokens of `slots` each: distinct within a token (as routing gives
/// them), some experts shared between tokens and, with enough experts, some left out.
fn expert_ids(rng: &mut Rng, n: usize, slots: usize, experts: usize) -> Vec<u32> {
    let mut ids = vec![];
    for _ in 0..n {
        let mut all: Vec<u32> = (0..experts as u32).collect();
        rng.shuffle(&mut all);
        ids.extend_from_slice(&all[..slots]);
    }
    ids
}

/// One expert matmul: (n, slots, k, m, experts, x_per_slot) in `dtype`, tokens' ids given.
fn matmul_case(
    rng: &mut Rng,
    dtype: DType,
    (n, slots, k, m, experts, x_per_slot): (usize, usize, usize, usize, usize, bool),
    ids: &[u32],
) -> Case {
    let mut b = Bufs::default();
    let x_rows = if x_per_slot { n * slots } else { n };
    let x = b.f32(&rng.vec(x_rows * k, 1.0));
    let numel = experts * m * k;
    let w = b.add(dtype, numel, Init::Data(weights(rng, numel, 0.5, dtype)));
    let ids = b.u32(ids);
    let o = b.poison(DType::F32, n * slots * m);
    let op = Op::MoeMatmul(MoeMatmul {
        x,
        w,
        wdtype: dtype,
        ids,
        out: o,
        n,
        slots,
        k,
        m,
        experts,
        x_per_slot,
    });
    let name =
        format!("{dtype} n={n} slots={slots} k={k} m={m} experts={experts} per_slot={x_per_slot}");
    b.case(name, op, &[(o, tolerance("moe_matmul", dtype))])
}

/// k of whole blocks of the dtype: 64 for the floats and the 32-element blocks, 256 for the
/// K-quants.
fn block_k(dtype: DType) -> usize {
    dtype.block_elems().max(64)
}

pub(super) fn matmul(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for dtype in all_weight_dtypes() {
        let k = block_k(dtype);
        for (n, slots, m, experts, x_per_slot) in
            [(1, 2, 40, 8, false), (5, 2, 24, 8, true), (9, 4, 17, 6, false), (1, 1, 33, 3, true)]
        {
            let ids = expert_ids(rng, n, slots, experts);
            out.push(matmul_case(rng, dtype, (n, slots, k, m, experts, x_per_slot), &ids));
        }
    }
    out
}

/// Tokens batched, then each token alone with its own ids: a token's rows must come out the
/// same bits either way.
pub(super) fn matmul_invariance(rng: &mut Rng) -> Vec<Invariance> {
    let mut out = vec![];
    for dtype in all_weight_dtypes() {
        let k = block_k(dtype);
        for (n, slots, m, experts, x_per_slot) in [(7, 2, 40, 8, false), (5, 3, 24, 4, true)] {
            let ids = expert_ids(rng, n, slots, experts);
            // The same x, w and ids, so the alone cases are the batch's rows (same seed).
            let seed = rng.next_u64();
            let shape = (n, slots, k, m, experts, x_per_slot);
            let batch = matmul_case(&mut Rng::new(seed), dtype, shape, &ids);
            let alone = (0..n).map(|t| (token_alone(&batch, t, shape), t)).collect();
            out.push(Invariance { batch, alone, row_len: slots * m });
        }
    }
    out
}

/// Token `t` of an expert-matmul case as a case of its own: its x row(s) and its ids, the
/// same weights.
fn token_alone(batch: &Case, t: usize, shape: (usize, usize, usize, usize, usize, bool)) -> Case {
    let (_, slots, k, m, experts, x_per_slot) = shape;
    let Op::MoeMatmul(op) = &batch.op else { unreachable!("built by matmul_case") };
    let data = |buf: BufId| match &batch.bufs[buf.0 as usize].init {
        Init::Data(d) => d.clone(),
        Init::Poison => unreachable!("inputs carry data"),
    };
    let x: Vec<f32> = bytemuck::pod_collect_to_vec(&data(op.x));
    let ids: Vec<u32> = bytemuck::pod_collect_to_vec(&data(op.ids));
    let rows = if x_per_slot { slots } else { 1 };
    let mut b = Bufs::default();
    let x = b.f32(&x[t * rows * k..(t + 1) * rows * k]);
    let w = b.add(op.wdtype, experts * m * k, Init::Data(data(op.w)));
    let ids = b.u32(&ids[t * slots..(t + 1) * slots]);
    let o = b.poison(DType::F32, slots * m);
    let one = Op::MoeMatmul(MoeMatmul { x, w, ids, out: o, n: 1, ..op.clone() });
    b.case(
        format!("token {t} of [{}]", batch.name),
        one,
        &[(o, tolerance("moe_matmul", op.wdtype))],
    )
}

pub(super) fn sum(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for (n, slots, dim) in [(1, 2, 64), (5, 8, 100), (13, 1, 7), (3, 4, 576)] {
        let mut b = Bufs::default();
        let y = b.f32(&rng.vec(n * slots * dim, 3.0));
        let w: Vec<f32> = (0..n * slots).map(|_| rng.unit()).collect();
        let w = b.f32(&w);
        let o = b.poison(DType::F32, n * dim);
        let op = Op::MoeSum(MoeSum { y, weights: w, out: o, n, slots, dim });
        out.push(b.case(
            format!("n={n} slots={slots} dim={dim}"),
            op,
            &[(o, tolerance("moe_sum", DType::F32))],
        ));
    }
    out
}
