//! LoRA's shrink and expand (see [`tandem_core::ops::LoraShrink`]): each adapter's rows
//! gathered and run as decode rows of a matmul over the adapter's slot of the pool, so a row's
//! bits are what it gets alone (the decode kernels' batch invariance) and each adapter's
//! weights are read once a step.

use std::cell::RefCell;

use tandem_core::ops::{check_indices, LoraExpand, LoraShrink};
use tandem_core::Result;

use super::matmul::{self, Operands};
use crate::table::{Table, Weight};
use crate::Exec;

thread_local! {
    /// Gathered inputs, outputs and row indices, kept between calls (two ops a projection).
    static GATHER: RefCell<(Vec<f32>, Vec<f32>, Vec<usize>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

pub(crate) fn shrink(t: &mut Table, ex: Exec, op: &LoraShrink) -> Result<()> {
    const OP: &str = "lora_shrink";
    let (n, k, rank) = (op.n, op.k, op.rank);
    t.with_out(OP, "t", op.t, |t, out| {
        let x = &t.arg(OP, "x", op.x)?.f32()[..op.x_rows * k];
        let a = t.arg(OP, "a", op.a)?.weight();
        let (rows, slots) = indices(t, OP, op.rows, op.slots, n, op.x_rows, op.n_slots)?;
        let out = &mut out.f32_mut()[..n * rank];
        per_slot(
            ex,
            rows,
            slots,
            op.n_slots,
            out,
            |i| &x[i * k..(i + 1) * k],
            |s| (a.rows(s * rank, rank, k), k, rank),
        );
        Ok(())
    })
}

pub(crate) fn expand(t: &mut Table, ex: Exec, op: &LoraExpand) -> Result<()> {
    const OP: &str = "lora_expand";
    let (n, m, rank) = (op.n, op.m, op.rank);
    t.with_out(OP, "out", op.out, |t, out| {
        let tv = &t.arg(OP, "t", op.t)?.f32()[..n * rank];
        let b = t.arg(OP, "b", op.b)?.weight();
        let (rows, slots) = indices(t, OP, op.rows, op.slots, n, op.out_rows, op.n_slots)?;
        let out = &mut out.f32_mut()[..op.out_rows * m];
        // y = B t for each listed row (in listed order), then added to its row of out.
        let mut y = vec![0f32; n * m];
        let listed: Vec<u32> = (0..n as u32).collect();
        per_slot(
            ex,
            &listed,
            slots,
            op.n_slots,
            &mut y,
            |i| &tv[i * rank..(i + 1) * rank],
            |s| (b.rows(s * m, m, rank), rank, m),
        );
        for (&r, yr) in rows.iter().zip(y.chunks_exact(m.max(1))) {
            for (o, v) in out[r as usize * m..(r as usize + 1) * m].iter_mut().zip(yr) {
                *o += v;
            }
        }
        Ok(())
    })
}

/// The op's rows and slots, checked against their limits.
fn indices<'t>(
    t: &'t Table,
    op: &'static str,
    rows: tandem_core::BufId,
    slots: tandem_core::BufId,
    n: usize,
    row_limit: usize,
    n_slots: usize,
) -> Result<(&'t [u32], &'t [u32])> {
    let rows = &t.arg(op, "rows", rows)?.u32()[..n];
    let slots = &t.arg(op, "slots", slots)?.u32()[..n];
    check_indices(op, "rows", rows, row_limit, "the rows of x and out")?;
    check_indices(op, "slots", slots, n_slots, "n_slots")?;
    Ok((rows, slots))
}

/// out[i] = w(slots[i]) · x_of(rows[i]) for every listed i: out: [n, m] for the (weight, k, m)
/// that `w` gives a slot. Rows of one slot run together as decode rows (fast mode), or one by
/// one through the reference loops.
fn per_slot<'a>(
    ex: Exec,
    rows: &[u32],
    slots: &[u32],
    n_slots: usize,
    out: &mut [f32],
    x_of: impl Fn(usize) -> &'a [f32],
    w: impl Fn(usize) -> (Weight<'a>, usize, usize),
) {
    if !ex.fast {
        for (i, (&r, &s)) in rows.iter().zip(slots).enumerate() {
            let (w, k, m) = w(s as usize);
            let a = Operands { x: x_of(r as usize), w, bias: None, n: 1, k, m };
            matmul::reference(&a, &mut out[i * m..(i + 1) * m]);
        }
        return;
    }
    GATHER.with_borrow_mut(|(xs, ys, listed)| {
        for s in 0..n_slots {
            listed.clear();
            listed.extend((0..rows.len()).filter(|&i| slots[i] as usize == s));
            if listed.is_empty() {
                continue;
            }
            let (w, k, m) = w(s);
            xs.clear();
            for &i in listed.iter() {
                xs.extend_from_slice(x_of(rows[i] as usize));
            }
            ys.clear();
            ys.resize(listed.len() * m, 0.0);
            matmul::decode(ex, &Operands { x: xs, w, bias: None, n: listed.len(), k, m }, ys);
            for (&i, y) in listed.iter().zip(ys.chunks_exact(m.max(1))) {
                out[i * m..(i + 1) * m].copy_from_slice(y);
            }
        }
    });
}
