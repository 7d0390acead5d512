//! LoRA's shrink and expand: both pool dtypes, ranks from 1 to 64, odd k and m, rows listed
//! out of order with adapters in random slots, and rows of out no adapter touches (they must
//! keep their bits). Invariance: each listed row alone gives the bits it gets in the batch.

use super::*;
use crate::harness::tolerance;

pub const POOL_DTYPES: [DType; 2] = [DType::F32, DType::F16];

/// (n listed rows, rows of x / out, slots, rank, k or m).
const SHAPES: [(usize, usize, usize, usize, usize); 5] = [
    (1, 1, 1, 8, 64),
    (3, 5, 2, 16, 576),
    (4, 7, 3, 64, 100),
    (2, 2, 4, 1, 33),
    (6, 9, 2, 8, 1536),
];

/// `n` distinct rows of `rows`, in random order, and a random slot for each.
fn listing(rng: &mut Rng, n: usize, rows: usize, n_slots: usize) -> (Vec<u32>, Vec<u32>) {
    let mut all: Vec<u32> = (0..rows as u32).collect();
    for i in (1..all.len()).rev() {
        all.swap(i, rng.below(i + 1));
    }
    all.truncate(n);
    let slots = (0..n).map(|_| rng.below(n_slots) as u32).collect();
    (all, slots)
}

/// A pool of `numel` values in `dtype`, the scale of real adapters' A (or B times its scale).
fn pool(b: &mut Bufs, rng: &mut Rng, numel: usize, dtype: DType) -> BufId {
    b.encoded(&rng.vec(numel, 0.1), dtype)
}

struct Shrink {
    x: Vec<f32>,
    a: BufSpec,
    rows: Vec<u32>,
    slots: Vec<u32>,
}

fn shrink_case(s: &Shrink, dtype: DType, shape: (usize, usize, usize, usize, usize)) -> Case {
    let (n, x_rows, n_slots, rank, k) = shape;
    let mut b = Bufs::default();
    let x = b.f32(&s.x);
    let Init::Data(a) = &s.a.init else { unreachable!("a pool carries data") };
    let a = b.add(dtype, s.a.numel, Init::Data(a.clone()));
    let (rows, slots) = (b.u32(&s.rows), b.u32(&s.slots));
    let t = b.poison(DType::F32, n * rank);
    let op = LoraShrink { x, a, dtype, rows, slots, t, n, x_rows, n_slots, rank, k };
    let name = format!("{dtype} n={n} x_rows={x_rows} slots={n_slots} rank={rank} k={k}");
    b.case(name, Op::LoraShrink(op), &[(t, tolerance("lora_shrink", dtype))])
}

fn shrink_data(rng: &mut Rng, dtype: DType, shape: (usize, usize, usize, usize, usize)) -> Shrink {
    let (n, x_rows, n_slots, rank, k) = shape;
    let x = rng.vec(x_rows * k, 1.0);
    let mut b = Bufs::default();
    pool(&mut b, rng, n_slots * rank * k, dtype);
    let a = b.0.pop().expect("one buffer");
    let (rows, slots) = listing(rng, n, x_rows, n_slots);
    Shrink { x, a, rows, slots }
}

pub(super) fn shrink(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for dtype in POOL_DTYPES {
        for shape in SHAPES {
            out.push(shrink_case(&shrink_data(rng, dtype, shape), dtype, shape));
        }
    }
    out
}

pub(super) fn expand(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for dtype in POOL_DTYPES {
        for shape in SHAPES {
            out.push(expand_case(&expand_data(rng, dtype, shape), dtype, shape));
        }
    }
    out
}

struct Expand {
    t: Vec<f32>,
    b: Vec<u8>,
    rows: Vec<u32>,
    slots: Vec<u32>,
    out: Vec<f32>,
}

fn expand_data(rng: &mut Rng, dtype: DType, shape: (usize, usize, usize, usize, usize)) -> Expand {
    let (n, out_rows, n_slots, rank, m) = shape;
    let t = rng.vec(n * rank, 1.0);
    let b = encode(&rng.vec(n_slots * rank * m, 0.1), dtype);
    let (rows, slots) = listing(rng, n, out_rows, n_slots);
    // The projection's own output, which the adapter's rows add to.
    let out = rng.vec(out_rows * m, 1.0);
    Expand { t, b, rows, slots, out }
}

fn expand_case(e: &Expand, dtype: DType, shape: (usize, usize, usize, usize, usize)) -> Case {
    let (n, out_rows, n_slots, rank, m) = shape;
    let mut bufs = Bufs::default();
    let t = bufs.f32(&e.t);
    let b = bufs.add(dtype, n_slots * rank * m, Init::Data(e.b.clone()));
    let (rows, slots) = (bufs.u32(&e.rows), bufs.u32(&e.slots));
    let out = bufs.f32(&e.out);
    let op = LoraExpand { t, b, dtype, rows, slots, out, n, out_rows, n_slots, rank, m };
    let name = format!("{dtype} n={n} out_rows={out_rows} slots={n_slots} rank={rank} m={m}");
    bufs.case(name, Op::LoraExpand(op), &[(out, tolerance("lora_expand", dtype))])
}

/// Each listed row of a shrink alone (n = 1, its x row only) and of an expand alone (its t
/// row, its out row): the bits it gets inside the batch.
pub(super) fn invariance(rng: &mut Rng) -> Vec<Invariance> {
    let mut out = vec![];
    for dtype in POOL_DTYPES {
        for shape @ (n, _, _, rank, k) in [(5, 8, 3, 16, 576), (4, 4, 2, 8, 100)] {
            let s = shrink_data(rng, dtype, shape);
            let alone = (0..n)
                .map(|i| {
                    let r = s.rows[i] as usize;
                    let one = Shrink {
                        x: s.x[r * k..(r + 1) * k].to_vec(),
                        a: BufSpec { dtype, numel: s.a.numel, init: clone_init(&s.a.init) },
                        rows: vec![0],
                        slots: vec![s.slots[i]],
                    };
                    let (_, _, n_slots, _, _) = shape;
                    (shrink_case(&one, dtype, (1, 1, n_slots, rank, k)), i)
                })
                .collect();
            out.push(Invariance { batch: shrink_case(&s, dtype, shape), alone, row_len: rank });

            let e = expand_data(rng, dtype, shape);
            let m = k;
            let alone = (0..n)
                .map(|i| {
                    let r = e.rows[i] as usize;
                    let one = Expand {
                        t: e.t[i * rank..(i + 1) * rank].to_vec(),
                        b: e.b.clone(),
                        rows: vec![0],
                        slots: vec![e.slots[i]],
                        out: e.out[r * m..(r + 1) * m].to_vec(),
                    };
                    let (_, _, n_slots, _, _) = shape;
                    (expand_case(&one, dtype, (1, 1, n_slots, rank, m)), r)
                })
                .collect();
            out.push(Invariance { batch: expand_case(&e, dtype, shape), alone, row_len: m });
        }
    }
    out
}

fn clone_init(i: &Init) -> Init {
    match i {
        Init::Data(d) => Init::Data(d.clone()),
        Init::Poison => Init::Poison,
    }
}
