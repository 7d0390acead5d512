//! LoRA's shrink and expand (see [`tandem_core::ops::LoraShrink`]): each listed row against
//! its adapter's slot of the pool (a dot product per output for the shrink, an axpy per rank
//! for the expand), so a row's bits are what it gets alone. Rows run across the team; a slot
//! stays in cache for the few rows of a step that share it.

use tandem_core::ops::{check_indices, LoraExpand, LoraShrink};
use tandem_core::Result;

use half::slice::HalfFloatSliceExt;

use super::matmul::{self, Operands};
use crate::table::{Table, Weight};
use crate::Exec;

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
        // y = t B for each listed row (in listed order), summed down B's rows in order (an
        // axpy a rank, each output's sum the reference's), then added to its row of out.
        let mut y = vec![0f32; n * m];
        let ex = ex.sized(n * m * rank);
        ex.for_chunks(&mut y, m.max(1), |i, y| {
            let bt = b.rows(slots[i] as usize * rank, rank, m);
            let mut buf = widen_buffer(bt, ex.fast, m);
            for (j, &tj) in tv[i * rank..(i + 1) * rank].iter().enumerate() {
                if ex.fast {
                    let row = widen(bt, j * m, m, &mut buf);
                    y.iter_mut().zip(row).for_each(|(y, &w)| *y += tj * w);
                } else {
                    for (o, y) in y.iter_mut().enumerate() {
                        *y += tj * bt.get(j * m + o);
                    }
                }
            }
        });
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
/// that `w` gives a slot (m the same for every slot). Each output is one [`dot`] whatever
/// else is listed (fast mode) or the reference loops' sum (reference mode).
fn per_slot<'a>(
    ex: Exec,
    rows: &[u32],
    slots: &[u32],
    out: &mut [f32],
    x_of: impl Fn(usize) -> &'a [f32] + Sync,
    w: impl Fn(usize) -> (Weight<'a>, usize, usize) + Sync,
) {
    if !ex.fast {
        for (i, (&r, &s)) in rows.iter().zip(slots).enumerate() {
            let (w, k, m) = w(s as usize);
            let a = Operands { x: x_of(r as usize), w, bias: None, n: 1, k, m };
            matmul::reference(&a, &mut out[i * m..(i + 1) * m]);
        }
        return;
    }
    // Row by row across the team: a slot's weights are small enough to stay in cache for the
    // few rows that share it.
    let m_of = |s: u32| w(s as usize).2;
    let m = slots.first().map_or(0, |&s| m_of(s));
    let ex = ex.sized(rows.len() * m * 64);
    ex.for_chunks(&mut out[..rows.len() * m], m.max(1), |i, o| {
        let (w, k, m) = w(slots[i] as usize);
        let x = x_of(rows[i] as usize);
        let mut buf = widen_buffer(w, true, k);
        for (r, y) in o.iter_mut().enumerate().take(m) {
            *y = dot(widen(w, r * k, k, &mut buf), x);
        }
    });
}

/// Room for [`widen`] to widen `len` f16 values into: none for an f32 pool (or the reference
/// loops), which never allocates.
fn widen_buffer(w: Weight, fast: bool, len: usize) -> Vec<f32> {
    vec![0f32; if fast && matches!(w, Weight::F16(_)) { len } else { 0 }]
}

/// Elements e0..e0 + k of a pool as f32: the f32 pool's own slice, an f16 one widened into
/// `buf`.
fn widen<'b>(w: Weight<'b>, e0: usize, k: usize, buf: &'b mut [f32]) -> &'b [f32] {
    match w {
        Weight::F32(v) => &v[e0..e0 + k],
        Weight::F16(v) => {
            v[e0..e0 + k].convert_to_f32_slice(buf);
            buf
        }
        // `supports` takes f32 and f16 pools only (the op's shape check).
        _ => unreachable!("LoRA pools are f32 or f16"),
    }
}

/// sum a[j] * b[j] in 8 lanes (then the lanes in order, then the tail): the same for a row
/// whatever the rest of the step is.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}
