//! Cases of the row-wise ops: rms_norm, rope, swiglu, add and copy_rows.

use tandem_core::ops::*;
use tandem_core::DType;

use super::*;
use crate::harness::tolerance;
use crate::rng::Rng;

pub(super) fn rms_norm(rng: &mut Rng) -> Vec<Case> {
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

pub(super) fn rope(rng: &mut Rng) -> Vec<Case> {
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

pub(super) fn swiglu(rng: &mut Rng) -> Vec<Case> {
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

pub(super) fn add(rng: &mut Rng) -> Vec<Case> {
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

pub(super) fn copy_rows(rng: &mut Rng) -> Vec<Case> {
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
