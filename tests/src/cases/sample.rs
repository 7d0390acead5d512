//! Cases of the ops that pick tokens: argmax, sample, and mask_logits before them.

use tandem_core::ops::*;
use tandem_core::DType;

use super::*;
use crate::harness::tolerance;
use crate::rng::Rng;

pub(super) fn argmax(rng: &mut Rng) -> Vec<Case> {
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

/// Sampling over vocabulary-sized and odd rows with every filter, alone and combined, and
/// batches whose rows each have their own parameters (greedy rows among them). Logits are
/// spread wide (a real model's are) and the draws avoid the exact edges of the cumulative
/// distribution, where a different summation order could legitimately round across.
pub(super) fn sample(rng: &mut Rng) -> Vec<Case> {
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

pub(super) fn mask_logits(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    // (rows in x, which rows are masked): odd widths leave a partial last mask word; a listed
    // subset in any order leaves the other rows' bits alone; a 49152-token vocabulary.
    let shapes: [(usize, &[u32], usize); 4] =
        [(1, &[0], 7), (5, &[3, 0], 100), (3, &[2, 1, 0], 49152), (13, &[12, 5, 6, 1], 33)];
    for (x_rows, rows, width) in shapes {
        let mut b = Bufs::default();
        let mut x = rng.vec(x_rows * width, 5.0);
        // NaN and -inf pass through where allowed and become -inf where not.
        x[0] = f32::NAN;
        x[width / 2] = f32::NEG_INFINITY;
        let words = width.div_ceil(32);
        let n = rows.len();
        let mut mask: Vec<u32> = (0..n * words).map(|_| rng.next_u64() as u32).collect();
        // A row allowing one token only (a grammar's forced EOS) and one allowing all.
        mask[..words].fill(0);
        mask[words / 2] = 1 << 3;
        if n > 1 {
            mask[words..2 * words].fill(u32::MAX);
        }
        let x = b.f32(&x);
        let rows_buf = b.u32(rows);
        let mask = b.u32(&mask);
        let op = Op::MaskLogits(MaskLogits { x, rows: rows_buf, mask, n, x_rows, width });
        out.push(b.case(
            format!("x_rows={x_rows} n={n} width={width}"),
            op,
            &[(x, tolerance("mask_logits", DType::F32))],
        ));
    }
    out
}
