//! Decode matmuls that read the same activation, run as one parallel section: the attention's
//! q, k and v projections, the MLP's gate and up (groups the model records in its step), for
//! one token or for a few decode rows (a speculative verification, a small batch).
//!
//! Why: at batch 1 a small projection's hand-off to the threads and its activation split cost
//! as much as its bytes: on SmolLM2 Q8_0 (2 threads) k and v, 117 KB each, took 12.6 us apiece,
//! a third of what memory gives, and q 23.5 us for 352 KB. Here the split is made once per
//! weight kind and the threads take chunks of all the ops' rows together. Each row is computed
//! by the same decode kernel (the table's `quant_rows` for one token, `quant_tokens` for
//! several) from the same split as alone, so every output is the same bits as the ops run one
//! by one.

use std::cell::RefCell;

use tandem_core::ops::{Matmul, Op};
use tandem_core::{BufId, DType, QuantView, Result, QBLOCK};

use super::{add_bias, chunk_rows, with_prep, XPrep, OP};
use crate::ops::par_chunks_caller;
use crate::table::{Buffer, Table, Weight};
use crate::Exec;

/// The most ops a group takes (a model's are 3 and 2); fixed, so a group needs no heap.
const MAX: usize = 4;
/// The most decode rows (tokens) a group takes: a verification's K + 1, a small batch.
const MAX_TOKENS: usize = 16;

thread_local! {
    /// The group's outputs, all rows one after another, kept between calls; with several
    /// tokens, a [tokens, rows] block per chunk of rows (see `decode_parts`).
    static ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// One part's rows of a chunk for every token ([tokens, rows]), as the batched kernels
    /// write them.
    static SEG: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Whether the joint kernel takes `ops`, a group the engine has checked ([`Step::groups`]:
/// matmuls over one x with the same n, k and decode rows, whose outputs are distinct and none
/// of their operands): at most [`MAX`] of them, of decode rows only (at most [`MAX_TOKENS`]),
/// with Q8_0 / Q4 weights of rows of whole blocks. Else its members run one by one.
///
/// [`Step::groups`]: tandem_core::Step::groups
pub(crate) fn joins(ops: &[Op]) -> bool {
    (2..=MAX).contains(&ops.len())
        && ops.iter().all(|op| {
            let Op::Matmul(m) = op else { return false };
            matches!(m.wdtype, DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
                && (1..=MAX_TOKENS).contains(&m.n)
                && m.decode_rows >= m.n
                && m.k.is_multiple_of(QBLOCK)
                && m.k > 0
                && m.m > 0
        })
}

/// Runs `ops` (a group [`joins`] takes) with their results as if run one by one.
pub(crate) fn run(t: &mut Table, ex: Exec, ops: &[Op]) -> Result<()> {
    let mut mm: [Option<&Matmul>; MAX] = [None; MAX];
    for (slot, op) in mm.iter_mut().zip(ops) {
        let Op::Matmul(m) = op else { unreachable!("a group holds matmuls only") };
        *slot = Some(m);
    }
    let ops: &[Option<&Matmul>] = &mm[..ops.len().min(MAX)];
    let mut outs: [Option<(BufId, Buffer)>; MAX] = std::array::from_fn(|_| None);
    let mut taken = Ok(());
    for (slot, op) in outs.iter_mut().zip(ops.iter().flatten()) {
        match t.take_out(OP, "out", op.out) {
            Ok(b) => *slot = Some((op.out, b)),
            Err(e) => {
                taken = Err(e);
                break;
            }
        }
    }
    let r = taken.and_then(|()| compute(t, ex, ops, &mut outs));
    for (id, b) in outs.into_iter().flatten() {
        t.put(id, b);
    }
    r
}

/// One op's part of the group: its weights, bias and first row in the group's row space.
#[derive(Clone, Copy)]
pub(super) struct Part<'a> {
    pub q: QuantView<'a>,
    pub bias: Option<&'a [f32]>,
    pub start: usize,
    pub m: usize,
}

fn compute(
    t: &Table,
    ex: Exec,
    ops: &[Option<&Matmul>],
    outs: &mut [Option<(BufId, Buffer)>; MAX],
) -> Result<()> {
    let first = ops[0].expect("a group has ops");
    let (n, k) = (first.n, first.k);
    let x = &t.arg(OP, "x", first.x)?.f32()[..n * k];
    let mut parts: [Option<Part>; MAX] = [None; MAX];
    let mut rows = 0;
    for (slot, op) in parts.iter_mut().zip(ops.iter().flatten()) {
        let Weight::Q(q) = t.arg(OP, "w", op.w)?.weight() else {
            unreachable!("joins takes Q8_0 / Q4 weights only")
        };
        let bias = match op.bias {
            Some(b) => Some(&t.arg(OP, "bias", b)?.f32()[..op.m]),
            None => None,
        };
        *slot = Some(Part { q, bias, start: rows, m: op.m });
        rows += op.m;
    }
    // The split depends on the weight kind only through Q8_0 or not: one of each kind present.
    let kind =
        |q8: bool| parts.iter().flatten().map(|p| p.q.dtype).find(|&d| (d == DType::Q8_0) == q8);
    let split = ex.kernels.split;
    if n > 1 {
        // A verification's or a small batch's rows: one split per token and kind (allocated:
        // only the one-token step is kept free of allocations).
        let preps = |d: Option<DType>| {
            d.map(|d| x.chunks_exact(k).map(|xt| XPrep::new(xt, d, split)).collect::<Vec<_>>())
        };
        let (p4, p8) = (preps(kind(false)), preps(kind(true)));
        return ROWS.with_borrow_mut(|all| {
            all.clear();
            all.resize(n * rows, 0.0);
            let c = decode_parts(ex, x, &parts, [p4.as_deref(), p8.as_deref()], all);
            scatter(all, c, n, rows, &parts, outs);
            Ok(())
        });
    }
    let mut run = |preps: [Option<&XPrep>; 2]| {
        ROWS.with_borrow_mut(|all| {
            all.clear();
            all.resize(rows, 0.0);
            let c = decode_parts(ex, x, &parts, preps.map(|p| p.map(std::slice::from_ref)), all);
            scatter(all, c, 1, rows, &parts, outs);
        })
    };
    match (kind(false), kind(true)) {
        (Some(a), Some(b)) => {
            with_prep(x, a, split, |pa| with_prep(x, b, split, |pb| run([Some(pa), Some(pb)])))
        }
        (Some(a), None) => with_prep(x, a, split, |pa| run([Some(pa), None])),
        (None, Some(b)) => with_prep(x, b, split, |pb| run([None, Some(pb)])),
        (None, None) => unreachable!("a group has parts"),
    }
    Ok(())
}

/// Every part's rows into `all` for every token, the threads taking chunks of `c` rows across
/// parts (about 8 chunks per thread, so a thread that loses its core mid-call leaves little);
/// returns c. With n tokens (`x`: [n, k]) chunk j holds its rows' [n, rows] block at
/// all[n * j * c..]; with one that is all = [rows]. `preps`: each token's split for Q4
/// weights, then for Q8_0. A lone one-token matmul is a group of one part.
pub(super) fn decode_parts(
    ex: Exec,
    x: &[f32],
    parts: &[Option<Part>],
    preps: [Option<&[XPrep]>; 2],
    all: &mut [f32],
) -> usize {
    let n = preps.iter().flatten().map(|p| p.len()).next().expect("a split for each kind present");
    let threads = ex.threads();
    let rows = all.len() / n;
    let c = chunk_rows(rows, threads * 2, 16);
    let work = |ci: usize, o: &mut [f32]| {
        let (lo, w) = (ci * c, o.len() / n);
        for p in parts.iter().flatten().filter(|p| p.start < lo + w && lo < p.start + p.m) {
            // This chunk's rows of part p, in p's own numbering, and where they sit in a
            // token's row of the chunk.
            let (r0, r1) = (lo.max(p.start) - p.start, (lo + w).min(p.start + p.m) - p.start);
            let at = p.start + r0 - lo;
            let prep =
                preps[(p.q.dtype == DType::Q8_0) as usize].expect("made for each kind present");
            if n == 1 {
                let seg = &mut o[at..at + r1 - r0];
                (ex.kernels.quant_rows)(p.q, x, &prep[0], r0, seg);
                add_bias(seg, p.bias, r0);
                continue;
            }
            SEG.with_borrow_mut(|seg| {
                seg.clear();
                seg.resize(n * (r1 - r0), 0.0);
                (ex.kernels.quant_tokens)(p.q, x, prep, r0, seg);
                for (t, st) in seg.chunks_exact_mut(r1 - r0).enumerate() {
                    add_bias(st, p.bias, r0);
                    o[t * w + at..t * w + at + st.len()].copy_from_slice(st);
                }
            });
        }
    };
    match ex.pool {
        Some(pool) => {
            par_chunks_caller(pool, threads, all, c * n, work);
            c
        }
        None => {
            work(0, all);
            rows
        }
    }
}

/// Each part's [n, m] output from `all` ([`decode_parts`]'s chunks of c rows, [n, rows] each; with
/// one token, all = [rows]).
fn scatter(
    all: &[f32],
    c: usize,
    n: usize,
    rows: usize,
    parts: &[Option<Part>],
    outs: &mut [Option<(BufId, Buffer)>; MAX],
) {
    for (ci, chunk) in all.chunks(c * n).enumerate() {
        let (lo, w) = (ci * c, chunk.len() / n);
        debug_assert!(lo + w <= rows);
        for (p, (_, out)) in parts.iter().flatten().zip(outs.iter_mut().flatten()) {
            let (r0, r1) = (lo.max(p.start), (lo + w).min(p.start + p.m));
            if r0 >= r1 {
                continue;
            }
            let out = out.f32_mut();
            for (t, src) in chunk.chunks_exact(w).enumerate() {
                out[t * p.m + r0 - p.start..t * p.m + r1 - p.start]
                    .copy_from_slice(&src[r0 - lo..r1 - lo]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use tandem_core::ops::{Add, Matmul, Op, RmsNorm, Swiglu};
    use tandem_core::{quant, Backend, BufId, DType, Step};

    use super::joins;
    use crate::{CpuBackend, Isa};

    /// This crate's unit tests count the allocations each thread makes.
    struct Counting;
    thread_local! {
        static ALLOCS: Cell<u64> = const { Cell::new(0) };
    }
    fn count() {
        ALLOCS.with(|c| c.set(c.get() + 1));
    }
    // SAFETY: every call is passed to `System` unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count();
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
            count();
            unsafe { System.realloc(ptr, layout, size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
    }
    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// A decode step's matmul side of a layer (norm, q/k/v of Q4_1, gate/up of Q8_0, SwiGLU, a
    /// Q4_0 down projection, the residual add) on one thread, on every SIMD ISA this machine
    /// has: after its first run it allocates nothing (activation splits and group rows come
    /// from buffers kept). The portable Q8_0 / Q4 kernel widens each chunk's scales into a
    /// scratch of its own (`dot::quant_rows`), so it is left out.
    #[test]
    fn a_layer_of_one_token_matmuls_allocates_nothing_once_warm() {
        for isa in Isa::supported_all().into_iter().filter(|&i| i != Isa::Portable) {
            one_token_layer_allocations(isa);
        }
    }

    fn one_token_layer_allocations(isa: Isa) {
        let (k, ffn) = (160, 96);
        let mut cpu = CpuBackend::fast(1).unwrap().with_isa(isa).unwrap();
        let x = upload(&mut cpu, DType::F32, &values(k, 1));
        let norm_w = upload(&mut cpu, DType::F32, &values(k, 2));
        let xb = cpu.alloc(DType::F32, k).unwrap();
        let mut step = Step::default();
        step.push(Op::RmsNorm(RmsNorm { x, weight: norm_w, out: xb, n: 1, dim: k, eps: 1e-5 }));
        let matmul =
            |cpu: &mut CpuBackend, x: BufId, wdtype: DType, m: usize, k: usize, seed: usize| {
                let w = upload(cpu, wdtype, &values(m * k, seed));
                let out = cpu.alloc(DType::F32, m).unwrap();
                Matmul { x, w, wdtype, bias: None, out, n: 1, k, m, decode_rows: 1 }
            };
        // q, k and v of Q4_1 share xb; so do gate and up of Q8_0.
        let qkv: Vec<Matmul> = [64, 32, 32]
            .into_iter()
            .zip(10..)
            .map(|(m, seed)| matmul(&mut cpu, xb, DType::Q4_1, m, k, seed))
            .collect();
        step.group(qkv).unwrap();
        let gate = matmul(&mut cpu, xb, DType::Q8_0, ffn, k, 20);
        let up = matmul(&mut cpu, xb, DType::Q8_0, ffn, k, 21);
        let (gate_out, up_out) = (gate.out, up.out);
        step.group([gate, up]).unwrap();
        let hidden = cpu.alloc(DType::F32, ffn).unwrap();
        step.push(Op::Swiglu(Swiglu { gate: gate_out, up: up_out, out: hidden, len: ffn }));
        let w_down = upload(&mut cpu, DType::Q4_0, &values(k * ffn, 30));
        let down = cpu.alloc(DType::F32, k).unwrap();
        step.push(Op::Matmul(Matmul {
            x: hidden,
            w: w_down,
            wdtype: DType::Q4_0,
            bias: None,
            out: down,
            n: 1,
            k: ffn,
            m: k,
            decode_rows: 1,
        }));
        step.push(Op::Add(Add { x, y: down, len: k }));
        // Both groups run through the joint kernel.
        assert!(step.groups.iter().all(|g| joins(&step.ops[g.clone()])));
        let cold = ALLOCS.with(Cell::get);
        cpu.execute(&step).unwrap();
        // The counter sees this thread's allocations: the first run makes the buffers.
        assert!(ALLOCS.with(Cell::get) > cold);
        let before = ALLOCS.with(Cell::get);
        cpu.execute(&step).unwrap();
        assert_eq!(
            ALLOCS.with(Cell::get) - before,
            0,
            "allocations in a warm one-token step, {isa}"
        );
    }

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
    /// of four), one with a bias, on one and two threads, for one token and for five decode
    /// rows (a verification), on every ISA this machine has: run as a group, each output is
    /// the bits of its op run alone; and what may not join a group does not.
    #[test]
    fn a_group_gives_each_op_its_own_bits() {
        for isa in Isa::supported_all() {
            group_bits(isa);
        }
    }

    fn group_bits(isa: Isa) {
        let k = 160;
        for (threads, n) in [(1, 1), (2, 1), (1, 5), (2, 5)] {
            let mut cpu = CpuBackend::fast(threads).unwrap().with_isa(isa).unwrap();
            let x = upload(&mut cpu, DType::F32, &values(n * k, 1));
            let specs =
                [(DType::Q8_0, 70, true), (DType::Q4_1, 33, false), (DType::Q4_0, 40, false)];
            let ops: Vec<Matmul> = specs
                .iter()
                .enumerate()
                .map(|(i, &(wdtype, m, bias))| {
                    let w = upload(&mut cpu, wdtype, &values(m * k, 10 + i));
                    let bias = bias.then(|| upload(&mut cpu, DType::F32, &values(m, 99)));
                    let out = cpu.alloc(DType::F32, n * m).unwrap();
                    Matmul { x, w, wdtype, bias, out, n, k, m, decode_rows: n }
                })
                .collect();
            let mut step = Step::default();
            step.group(ops.iter().cloned()).unwrap();
            assert!(joins(&step.ops));
            cpu.execute(&step).unwrap();
            let grouped: Vec<Vec<u32>> = ops.iter().map(|o| out(&cpu, o.out)).collect();
            for (o, want) in ops.iter().zip(&grouped) {
                let mut alone = Step::default();
                alone.push(Op::Matmul(o.clone()));
                cpu.execute(&alone).unwrap();
                assert_eq!(
                    &out(&cpu, o.out),
                    want,
                    "{} m={} n={n} on {threads} threads, {isa}",
                    o.wdtype,
                    o.m
                );
            }
            // The engine refuses a group with an op writing the shared input or another's
            // output, or of another number of rows or decode rows.
            let writes_x = Matmul { out: x, ..ops[1].clone() };
            let same_out = Matmul { out: ops[0].out, ..ops[1].clone() };
            let prompt = Matmul { decode_rows: n - 1, ..ops[1].clone() };
            let other_n = Matmul { n: n + 1, decode_rows: n + 1, ..ops[1].clone() };
            for bad in [writes_x, same_out, prompt, other_n] {
                let mut s = Step::default();
                assert!(s.group([ops[0].clone(), bad]).is_err());
                assert!(s.ops.is_empty() && s.groups.is_empty());
            }
            // A group of prompt rows is one the joint kernel does not take: its members run
            // one by one, each with its own bits.
            let prompt: Vec<Matmul> =
                ops.iter().map(|o| Matmul { decode_rows: n - 1, ..o.clone() }).collect();
            let mut s = Step::default();
            s.group(prompt.iter().cloned()).unwrap();
            assert!(!joins(&s.ops));
            cpu.execute(&s).unwrap();
            let grouped: Vec<Vec<u32>> = prompt.iter().map(|o| out(&cpu, o.out)).collect();
            for (o, want) in prompt.iter().zip(&grouped) {
                let mut alone = Step::default();
                alone.push(Op::Matmul(o.clone()));
                cpu.execute(&alone).unwrap();
                assert_eq!(&out(&cpu, o.out), want, "prompt rows, n={n}, {isa}");
            }
        }
    }
}
