//! One-token matmuls that read the same activation, run as one parallel section: the attention's
//! q, k and v projections, the MLP's gate and up (consecutive ops of a step).
//!
//! Why: at batch 1 a small projection's hand-off to the threads and its activation split cost
//! as much as its bytes: on SmolLM2 Q8_0 (2 threads) k and v, 117 KB each, took 12.6 us apiece,
//! a third of what memory gives, and q 23.5 us for 352 KB. Here the split is made once per
//! weight kind and the threads take chunks of all the ops' rows together. Each row is computed
//! by the same one-token kernel (`quant_rows`) from the same split as alone, so every output is
//! the same bits as the ops run one by one.

use tandem_core::ops::{Matmul, Op};
use tandem_core::{BufId, DType, QuantView, Result, QBLOCK};

use super::{chunk_rows, par_chunks_caller, quant_rows, XPrep, OP};
use crate::table::{Buffer, Table, Weight};
use crate::Exec;

/// How many ops from the start of `ops` run as one group: consecutive one-token matmuls with
/// Q8_0 / Q4 weights of rows of whole blocks, the same input and k, whose outputs are
/// distinct and none of their inputs. 0 or 1: run the first op alone.
pub(crate) fn group_len(ops: &[Op]) -> usize {
    let Some(Op::Matmul(first)) = ops.first() else { return 0 };
    if !groupable(first, first) {
        return 0;
    }
    let mut group: Vec<&Matmul> = vec![first];
    for op in &ops[1..] {
        let Op::Matmul(m) = op else { break };
        if !groupable(m, first) || !independent(&group, m) {
            break;
        }
        group.push(m);
    }
    group.len()
}

fn groupable(m: &Matmul, first: &Matmul) -> bool {
    let quant = matches!(m.wdtype, DType::Q8_0 | DType::Q4_0 | DType::Q4_1);
    quant && m.n == 1 && m.decode_rows >= 1 && m.k % QBLOCK == 0 && m.k > 0 && m.m > 0 && m.x == first.x && m.k == first.k
}

/// Whether `m` can join `group`: no output of either is an input or output of the other.
fn independent(group: &[&Matmul], m: &Matmul) -> bool {
    let reads = |o: &Matmul| -> Vec<BufId> { [Some(o.x), Some(o.w), o.bias].into_iter().flatten().collect() };
    group.iter().all(|g| g.out != m.out && !reads(g).contains(&m.out) && !reads(m).contains(&g.out))
        && !reads(m).contains(&m.out)
}

/// Runs `ops` (a group as [`group_len`] found it) with their results as if run one by one.
pub(crate) fn run(t: &mut Table, ex: Exec, ops: &[&Matmul]) -> Result<()> {
    let mut outs: Vec<(BufId, Buffer)> = Vec::with_capacity(ops.len());
    for op in ops {
        match t.take(OP, "out", op.out, DType::F32, op.m) {
            Ok(b) => outs.push((op.out, b)),
            Err(e) => {
                outs.into_iter().for_each(|(id, b)| t.put(id, b));
                return Err(e);
            }
        }
    }
    let r = compute(t, ex, ops, &mut outs);
    outs.into_iter().for_each(|(id, b)| t.put(id, b));
    r
}

/// One op's part of the group: its weights, bias and first row in the group's row space.
struct Part<'a> {
    q: QuantView<'a>,
    bias: Option<&'a [f32]>,
    start: usize,
    m: usize,
}

fn compute(t: &Table, ex: Exec, ops: &[&Matmul], outs: &mut [(BufId, Buffer)]) -> Result<()> {
    let k = ops[0].k;
    let x = &t.input(OP, "x", ops[0].x, DType::F32, k)?.f32()[..k];
    let mut parts = Vec::with_capacity(ops.len());
    let mut rows = 0;
    for op in ops {
        let Weight::Q(q) = t.input(OP, "w", op.w, op.wdtype, op.m * k)?.weight() else {
            unreachable!("group_len takes Q8_0 / Q4 weights only")
        };
        let bias = match op.bias {
            Some(b) => Some(&t.input(OP, "bias", b, DType::F32, op.m)?.f32()[..op.m]),
            None => None,
        };
        parts.push(Part { q, bias, start: rows, m: op.m });
        rows += op.m;
    }
    // The split depends on the weight kind only through Q8_0 or not.
    let prep_for = |q8: bool| parts.iter().find(|p| (p.q.dtype == DType::Q8_0) == q8).map(|p| XPrep::new(x, p.q.dtype, ex.avx2));
    let preps = [prep_for(false), prep_for(true)];
    let mut all = vec![0f32; rows];
    let threads = ex.threads();
    let c = chunk_rows(rows, threads * 2, 16);
    let work = |ci: usize, o: &mut [f32]| {
        let (lo, hi) = (ci * c, ci * c + o.len());
        for p in parts.iter().filter(|p| p.start < hi && lo < p.start + p.m) {
            // This chunk's rows of part p, in p's own numbering.
            let (r0, r1) = (lo.max(p.start) - p.start, hi.min(p.start + p.m) - p.start);
            let seg = &mut o[p.start + r0 - lo..p.start + r1 - lo];
            let prep = preps[(p.q.dtype == DType::Q8_0) as usize].as_ref().expect("made for each kind present");
            quant_rows(ex.avx2, p.q, x, prep, k, r0, seg);
            if let Some(b) = p.bias {
                for (v, bv) in seg.iter_mut().zip(&b[r0..]) {
                    *v += bv;
                }
            }
        }
    };
    match ex.pool {
        Some(pool) => par_chunks_caller(pool, threads, &mut all, c, work),
        None => work(0, &mut all),
    }
    for (p, (_, out)) in parts.iter().zip(outs.iter_mut()) {
        out.f32_mut()[..p.m].copy_from_slice(&all[p.start..p.start + p.m]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tandem_core::ops::{Matmul, Op};
    use tandem_core::{quant, Backend, BufId, DType, Step};

    use super::group_len;
    use crate::CpuBackend;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i + seed) * 7919 % 1013) as f32 - 506.0) * 1.3e-3).collect()
    }

    fn upload(cpu: &mut CpuBackend, dtype: DType, v: &[f32]) -> BufId {
        let b = cpu.alloc(dtype, v.len()).unwrap();
        let bytes = match dtype {
            DType::F32 => bytemuck::cast_slice(v).to_vec(),
            _ => quant::encode(v, dtype),
        };
        cpu.write(b, &bytes).unwrap();
        b
    }

    fn out(cpu: &CpuBackend, b: BufId) -> Vec<u32> {
        cpu.table.get(b).unwrap().f32().iter().map(|v| v.to_bits()).collect()
    }

    /// q, k, v-like projections of three weight kinds (k = 160: five blocks, a partial group
    /// of four), one with a bias, on one and two threads: run as a group, each output is the
    /// bits of its op run alone; and what may not join a group does not.
    #[test]
    fn a_group_gives_each_op_its_own_bits() {
        let k = 160;
        for threads in [1, 2] {
            let mut cpu = CpuBackend::fast(threads).unwrap();
            let x = upload(&mut cpu, DType::F32, &values(k, 1));
            let specs = [(DType::Q8_0, 70, true), (DType::Q4_1, 33, false), (DType::Q4_0, 40, false)];
            let ops: Vec<Matmul> = specs
                .iter()
                .enumerate()
                .map(|(i, &(wdtype, m, bias))| {
                    let w = upload(&mut cpu, wdtype, &values(m * k, 10 + i));
                    let bias = bias.then(|| upload(&mut cpu, DType::F32, &values(m, 99)));
                    let out = cpu.alloc(DType::F32, m).unwrap();
                    Matmul { x, w, wdtype, bias, out, n: 1, k, m, decode_rows: 1 }
                })
                .collect();
            let mut step = Step::default();
            ops.iter().for_each(|o| step.push(Op::Matmul(o.clone())));
            assert_eq!(group_len(&step.ops), 3);
            cpu.execute(&step).unwrap();
            let grouped: Vec<Vec<u32>> = ops.iter().map(|o| out(&cpu, o.out)).collect();
            for (o, want) in ops.iter().zip(&grouped) {
                let mut alone = Step::default();
                alone.push(Op::Matmul(o.clone()));
                cpu.execute(&alone).unwrap();
                assert_eq!(&out(&cpu, o.out), want, "{} m={} on {threads} threads", o.wdtype, o.m);
            }
            // An op writing the shared input, or another's output, ends the group.
            let writes_x = Matmul { out: x, ..ops[1].clone() };
            let same_out = Matmul { out: ops[0].out, ..ops[1].clone() };
            for bad in [writes_x, same_out] {
                let mut s = Step::default();
                s.push(Op::Matmul(ops[0].clone()));
                s.push(Op::Matmul(bad));
                assert_eq!(group_len(&s.ops), 1);
            }
        }
    }
}
