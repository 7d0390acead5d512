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
        let op = Op::Rope(Rope {
            x,
            positions,
            inv_freq,
            n,
            heads,
            head_dim,
            rot_dim: head_dim,
            scale: 1.0,
        });
        // In place: x is the checked output.
        out.push(b.case(
            format!("n={n} heads={heads} head_dim={head_dim}"),
            op,
            &[(x, tolerance("rope", DType::F32))],
        ));
    }
    // Partial rotary (Phi-3, Phi-4-mini: 3/4 of the head) with LongRoPE's attention factor:
    // the elements past rot_dim must pass through untouched.
    for (n, heads, head_dim, rot_dim, scale) in
        [(3, 4, 64, 48, 1.19), (5, 2, 96, 64, 1.0), (1, 3, 128, 32, 0.93), (7, 2, 8, 2, 1.0)]
    {
        let mut b = Bufs::default();
        let x = b.f32(&rng.vec(n * heads * head_dim, 1.0));
        let positions = b.u32(&(0..n).map(|_| rng.below(4096) as u32).collect::<Vec<_>>());
        let half = rot_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|j| 10000f32.powf(-((2 * j) as f32) / rot_dim as f32) / (1.0 + j as f32 * 0.1))
            .collect();
        let inv_freq = b.f32(&inv);
        let op = Op::Rope(Rope { x, positions, inv_freq, n, heads, head_dim, rot_dim, scale });
        out.push(b.case(
            format!("n={n} heads={heads} head_dim={head_dim} rot_dim={rot_dim} scale={scale}"),
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

pub(super) fn geglu(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for len in [1, 7, 100, 1000, 4099] {
        let mut b = Bufs::default();
        // Into the tanh's saturated tails and through its cubic term.
        let gate = b.f32(&rng.vec(len, 8.0));
        let up = b.f32(&rng.vec(len, 1.0));
        let o = b.poison(DType::F32, len);
        let op = Op::Geglu(Geglu { gate, up, out: o, len });
        out.push(b.case(format!("len={len}"), op, &[(o, tolerance("geglu", DType::F32))]));
    }
    out
}

/// Rotations of every size the engine uses (head_dim's largest power-of-two factor: 8 for
/// stories260K, 64, 128, 256 for Gemma), one run and many, with an outlier channel per run.
pub(super) fn hadamard(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for (runs, size) in [(1, 2), (3, 8), (40, 64), (7, 128), (2, 256), (33, 32)] {
        let mut b = Bufs::default();
        let len = runs * size;
        let mut v = rng.vec(len, 1.0);
        v.iter_mut().step_by(size).for_each(|x| *x *= 50.0);
        let x = b.f32(&v);
        let op = Op::Hadamard(Hadamard { x, len, size });
        out.push(b.case(
            format!("runs={runs} size={size}"),
            op,
            &[(x, tolerance("hadamard", DType::F32))],
        ));
    }
    out
}

pub(super) fn softcap(rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for (len, cap) in [(1, 30.0), (100, 5.0), (4099, 30.0), (1000, 0.5)] {
        let mut b = Bufs::default();
        // Logits well inside the cap, near it and far past it.
        let x = b.f32(&rng.vec(len, 4.0 * cap));
        let op = Op::Softcap(Softcap { x, len, cap });
        out.push(b.case(
            format!("len={len} cap={cap}"),
            op,
            &[(x, tolerance("softcap", DType::F32))],
        ));
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
