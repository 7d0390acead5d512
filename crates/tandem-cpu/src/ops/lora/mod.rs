//! LoRA's shrink and expand (see [`tandem_core::ops::LoraShrink`]): each listed row against
//! its adapter's slot of the pool (a dot product per output for the shrink, an axpy per rank
//! for the expand; see [`kernels`]), so a row's bits are what it gets alone. Rows run across
//! the team; a slot stays in cache for the few rows of a step that share it.

mod kernels;

use tandem_core::ops::{check_indices, LoraExpand, LoraShrink};
use tandem_core::Result;

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
            let t = &tv[i * rank..(i + 1) * rank];
            if ex.fast {
                #[cfg(target_arch = "x86_64")]
                if ex.avx2() {
                    // SAFETY: `ex.avx2()` is true only where AVX2 was detected.
                    return unsafe { kernels::axpys_avx2(bt, m, t, y) };
                }
                kernels::axpys(bt, m, t, y);
            } else {
                for (j, &tj) in t.iter().enumerate() {
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
        #[cfg(target_arch = "x86_64")]
        if ex.avx2() {
            // SAFETY: `ex.avx2()` is true only where AVX2 was detected.
            return unsafe { kernels::dots_avx2(w, k, x, &mut o[..m]) };
        }
        kernels::dots(w, k, x, &mut o[..m]);
    });
}
