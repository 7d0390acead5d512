//! The mixture-of-experts ops: routing, the experts' matmuls, the weighted sum.
//!
//! The expert matmul's fast mode gathers the rows routed to each expert and runs them as the
//! decode rows of one product with that expert's matrix: the decode kernels give every row the
//! bits it gets alone (see `matmul`), and an expert's weights are read once for all its rows.

use std::cell::RefCell;

use tandem_core::ops::{check_indices, MoeMatmul, MoeRoute, MoeSum};
use tandem_core::Result;

use super::matmul::{self, Operands};
use crate::table::Table;
use crate::Exec;

pub(crate) fn route(t: &mut Table, op: &MoeRoute) -> Result<()> {
    const OP: &str = "moe_route";
    let nk = op.n * op.k;
    let mut ids = t.take_out(OP, "ids", op.ids)?;
    let r = t.with_out(OP, "weights", op.weights, |t, weights| {
        let logits = &t.arg(OP, "logits", op.logits)?.f32()[..op.n * op.experts];
        route_reference(
            logits,
            &mut ids.u32_mut()[..nk],
            &mut weights.f32_mut()[..nk],
            op.experts,
            op.k,
            op.norm,
        );
        Ok(())
    });
    t.put(op.ids, ids);
    r
}

/// logits: [n, experts]; ids, weights: [n, k]. Per token: the k largest logits in descending
/// order (lower index first among equals, NaN last), their softmax probabilities, optionally
/// renormalized.
pub(crate) fn route_reference(
    logits: &[f32],
    ids: &mut [u32],
    weights: &mut [f32],
    experts: usize,
    k: usize,
    norm: bool,
) {
    let mut p = vec![0f32; experts];
    let mut order: Vec<usize> = Vec::with_capacity(experts);
    for ((row, ids), ws) in
        logits.chunks_exact(experts).zip(ids.chunks_exact_mut(k)).zip(weights.chunks_exact_mut(k))
    {
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        let mut sum = 0f32;
        for (pe, &x) in p.iter_mut().zip(row) {
            *pe = (x - max).exp();
            sum += *pe;
        }
        for pe in &mut p {
            *pe /= sum;
        }
        order.clear();
        order.extend(0..experts);
        // Descending; NaN sorts after every number; stable, so equals keep index order.
        order.sort_by(|&a, &b| match (row[a].is_nan(), row[b].is_nan()) {
            (false, false) => row[b].partial_cmp(&row[a]).expect("numbers"),
            (x, y) => x.cmp(&y),
        });
        for j in 0..k {
            ids[j] = order[j] as u32;
            ws[j] = p[order[j]];
        }
        if norm {
            let mut s = 0f32;
            for &w in ws.iter() {
                s += w;
            }
            for w in ws.iter_mut() {
                *w /= s;
            }
        }
    }
}

thread_local! {
    /// The fast expert matmul's gathered rows, their outputs and their indices, kept between
    /// calls (three allocations per matmul, three matmuls per layer otherwise).
    static GATHER: RefCell<(Vec<f32>, Vec<f32>, Vec<usize>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

pub(crate) fn matmul(t: &mut Table, ex: Exec, op: &MoeMatmul) -> Result<()> {
    const OP: &str = "moe_matmul";
    let (n, slots, k, m) = (op.n, op.slots, op.k, op.m);
    let x_rows = if op.x_per_slot { n * slots } else { n };
    t.with_out(OP, "out", op.out, |t, out| {
        let x = &t.arg(OP, "x", op.x)?.f32()[..x_rows * k];
        let w = t.arg(OP, "w", op.w)?.weight();
        let ids = &t.arg(OP, "ids", op.ids)?.u32()[..n * slots];
        check_indices(OP, "ids", ids, op.experts, "experts")?;
        let out = &mut out.f32_mut()[..n * slots * m];
        let x_of = |r: usize| {
            let xr = if op.x_per_slot { r } else { r / slots.max(1) };
            &x[xr * k..(xr + 1) * k]
        };
        if !ex.fast {
            for (r, (o, &e)) in out.chunks_exact_mut(m.max(1)).zip(ids).enumerate() {
                let w = w.rows(e as usize * m, m, k);
                matmul::reference(&Operands { x: x_of(r), w, bias: None, n: 1, k, m }, o);
            }
            return Ok(());
        }
        // Each expert's rows gathered, run as decode rows, scattered back.
        GATHER.with_borrow_mut(|(xs, ys, rows)| {
            for e in 0..op.experts as u32 {
                rows.clear();
                rows.extend((0..n * slots).filter(|&r| ids[r] == e));
                if rows.is_empty() {
                    continue;
                }
                xs.clear();
                for &r in rows.iter() {
                    xs.extend_from_slice(x_of(r));
                }
                ys.clear();
                ys.resize(rows.len() * m, 0.0);
                let w = w.rows(e as usize * m, m, k);
                matmul::decode(ex, &Operands { x: xs, w, bias: None, n: rows.len(), k, m }, ys);
                for (&r, y) in rows.iter().zip(ys.chunks_exact(m.max(1))) {
                    out[r * m..(r + 1) * m].copy_from_slice(y);
                }
            }
        });
        Ok(())
    })
}

pub(crate) fn sum(t: &mut Table, op: &MoeSum) -> Result<()> {
    const OP: &str = "moe_sum";
    let (n, slots, dim) = (op.n, op.slots, op.dim);
    t.with_out(OP, "out", op.out, |t, out| {
        let y = &t.arg(OP, "y", op.y)?.f32()[..n * slots * dim];
        let w = &t.arg(OP, "weights", op.weights)?.f32()[..n * slots];
        sum_reference(y, w, &mut out.f32_mut()[..n * dim], slots, dim);
        Ok(())
    })
}

/// y: [n, slots, dim]; w: [n, slots]; out: [n, dim]. Moves n * slots * dim floats once: the
/// fast mode needs nothing cleverer.
pub(crate) fn sum_reference(y: &[f32], w: &[f32], out: &mut [f32], slots: usize, dim: usize) {
    for (t, o) in out.chunks_exact_mut(dim.max(1)).enumerate() {
        o.fill(0.0);
        for j in 0..slots {
            let (wj, yj) = (w[t * slots + j], &y[(t * slots + j) * dim..]);
            for (o, &v) in o.iter_mut().zip(yj) {
                *o += wj * v;
            }
        }
    }
}
