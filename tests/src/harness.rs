//! Runs a case on a backend and on the CPU reference, and compares the outputs.

use tandem_core::ops::{Op, Precision};
use tandem_core::{Backend, BufId, DType, Step};
use tandem_cpu::CpuBackend;

use crate::cases::{cases_for, Case, Init};

/// How closely a backend must match the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tol {
    /// Byte-identical output (ids, copies, the cache rows written by kv_write).
    Exact,
    /// NMSE = sum((a - b)^2) / sum(a^2) over f32 outputs at most this, with NaN/Inf parity.
    Nmse(f64),
}

/// The tolerance table: per op and weight / KV dtype, never per backend.
///
/// The bounds allow a different summation order (lanes, tiles, online softmax) and fused
/// multiply-adds in f32, with two to three orders of magnitude of margin over what the fast
/// CPU backend shows; a real bug (a wrong element, a wrong block scale, a leaked poisoned row)
/// lands at 1e-4 or above.
pub fn tolerance(op: &str, dtype: DType) -> Tol {
    match (op, dtype) {
        // A lookup and one multiply per element: correctly rounded everywhere...
        ("embed", DType::F32 | DType::F16 | DType::BF16 | DType::Q8_0 | DType::Q4_0) => Tol::Exact,
        // GGUF block types without a minimum: dl * q with dl a correctly rounded product.
        ("embed", DType::Q5_0 | DType::Q3_K | DType::Q6_K | DType::IQ4_NL | DType::IQ4_XS) => {
            Tol::Exact
        }
        // ...except d * q + m, which a GPU may contract into an fma.
        ("embed", _) => Tol::Nmse(1e-12),
        ("rms_norm", _) => Tol::Nmse(1e-10),
        ("matmul", DType::F32 | DType::F16 | DType::BF16) => Tol::Nmse(1e-10),
        // Factored block sums (d * sum(q x) + m * sum(x)) cancel more than per-element sums.
        ("matmul", _) => Tol::Nmse(1e-9),
        // sin/cos of angles up to ~2000 rad: GPU implementations lose digits there.
        ("rope", _) => Tol::Nmse(1e-8),
        // exp() implementations differ by a few ulps, on top of the online-softmax order.
        ("attention_prefill" | "attention_decode", _) => Tol::Nmse(1e-8),
        ("swiglu" | "geglu", _) => Tol::Nmse(1e-10),
        // tanh implementations differ by a few ulps.
        ("softcap", _) => Tol::Nmse(1e-10),
        // Sums of up to 256 terms of one magnitude class, in any order.
        ("hadamard", _) => Tol::Nmse(1e-12),
        // Each row a one-row matmul of its expert.
        ("moe_matmul", d) => tolerance("matmul", d),
        // The experts are chosen on the logits (exact); the weights go through exp().
        ("moe_route", DType::U32) => Tol::Exact,
        ("moe_route", _) => Tol::Nmse(1e-10),
        ("moe_sum", _) => Tol::Nmse(1e-12),
        // Dot products over k (the shrink) and over the rank (the expand), as matmul's.
        ("lora_shrink" | "lora_expand", _) => Tol::Nmse(1e-10),
        // Quantizing is a division and a rounding: a GPU's reciprocal may land a value on the
        // other side of a rounding boundary, one step off. Compared decoded: one code in a
        // hundred a step off is ~2e-6 (q8_0) or ~5e-4 (q4_0) of NMSE; a wrong scale or a
        // misplaced block is 1e-2 and more.
        ("kv_write", DType::Q8_0) => Tol::Nmse(1e-5),
        ("kv_write", DType::Q4_0) => Tol::Nmse(1e-3),
        // fp8 kernels round with integer arithmetic on the scaled value (no conversion
        // instruction to differ), after the same correctly rounded reciprocal: exact.
        ("kv_write", DType::F8E4M3) => Tol::Exact,
        ("add" | "argmax" | "sample" | "mask_logits" | "copy_rows" | "kv_write", _) => Tol::Exact,
        _ => Tol::Nmse(0.0),
    }
}

/// The tolerance of an op computed in a precision class other than f32 (`None`: the case's
/// own f32 tolerance). Tensor-core products round both operands to bf16 (8 significant bits,
/// a relative error up to 2^-9 each), so a dot product's NMSE is about 2 * (2^-9)^2 / 3 =
/// 2.5e-6 whatever the summation; measured on an H100: see the CUDA notes. The bound leaves
/// a decade of margin, and a wrong element or block scale still lands far above it.
pub fn precision_tolerance(op: &Op, precision: Precision) -> Option<Tol> {
    match (op, precision) {
        (_, Precision::F32) => None,
        (Op::Matmul(_) | Op::MoeMatmul(_), Precision::Bf16Products) => Some(Tol::Nmse(3e-5)),
        (_, Precision::Bf16Products) => None,
        // Activations rounded to 16 bits per block of 32: the worst of the shared matmul cases
        // measured 1.3e-9 on the wasm CPU fallback (Chromium, tests/browser/cpu-fallback),
        // above f32's 1e-9 for the outlier cases; a decade of margin, as above.
        (Op::Matmul(_) | Op::MoeMatmul(_), Precision::I16Activations) => Some(Tol::Nmse(1e-8)),
        // Decode scores over a q8_0 K cache with the query so rounded (the CPU's AVX2 kernel):
        // the worst of the attention cases measured 2.1e-10 (f32's worst there 3e-12); the
        // same decade of margin under a real bug's 1e-4.
        (Op::Attention(_), Precision::I16Activations) => Some(Tol::Nmse(3e-9)),
        (_, Precision::I16Activations) => None,
    }
}

/// Allocates the case's buffers on `backend` (outputs poisoned), runs its op, reads every
/// checked buffer back whole, and frees everything. Blocks on the reads: native only.
#[cfg(not(target_arch = "wasm32"))]
pub fn run_case<B: Backend>(backend: &mut B, case: &Case) -> Result<Vec<Vec<u8>>, String> {
    pollster::block_on(run_case_async(backend, case))
}

/// [`run_case`], awaiting the reads: what runs in a browser, where nothing may block.
pub async fn run_case_async<B: Backend>(
    backend: &mut B,
    case: &Case,
) -> Result<Vec<Vec<u8>>, String> {
    let mut ids = Vec::with_capacity(case.bufs.len());
    let result = run_case_inner(backend, case, &mut ids).await;
    for id in ids {
        backend.free(id);
    }
    result
}

async fn run_case_inner<B: Backend>(
    backend: &mut B,
    case: &Case,
    ids: &mut Vec<BufId>,
) -> Result<Vec<Vec<u8>>, String> {
    for b in &case.bufs {
        let id = backend.alloc(b.dtype, b.numel).map_err(|e| format!("alloc: {e}"))?;
        ids.push(id);
        let bytes = match &b.init {
            Init::Data(d) => d.clone(),
            // All-ones bits are NaN as f32 and f16 and 0xFFFFFFFF as u32.
            Init::Poison => vec![0xFF; b.dtype.storage_bytes(b.numel)],
        };
        backend.write(id, &bytes).map_err(|e| format!("write: {e}"))?;
    }
    let op = remap(&case.op, |BufId(i)| ids[i as usize]);
    backend
        .execute(&Step { writes: vec![], read_back: vec![], groups: vec![], ops: vec![op] })
        .map_err(|e| format!("execute: {e}"))?;
    let mut outs = Vec::new();
    for (i, _) in &case.checks {
        let b = &case.bufs[*i];
        let len = b.dtype.storage_bytes(b.numel);
        outs.push(backend.read(ids[*i], 0, len).await.map_err(|e| format!("read: {e}"))?);
    }
    Ok(outs)
}

/// What [`check_backend_op`] found when every case passed.
#[derive(Debug, Clone, PartialEq)]
pub struct OpSummary {
    /// The cases run.
    pub cases: usize,
    /// The worst NMSE over the cases' NMSE-checked buffers (0 for exact-only ops).
    pub worst_nmse: f64,
}

/// Runs every case of `op` on the backend `make` builds and on the reference; panics with
/// every failing case (op, case, NMSE) listed. A backend that cannot be built is skipped
/// loudly. Native only (it blocks); [`check_backend_op`] is the async core.
#[cfg(not(target_arch = "wasm32"))]
pub fn check_op<B: Backend, F: Fn() -> Result<B, String>>(make: F, label: &str, op: &str) {
    let mut backend = match make() {
        Ok(b) => b,
        Err(reason) => {
            eprintln!("SKIP {label}: {reason}");
            return;
        }
    };
    let name = backend.name();
    match pollster::block_on(check_backend_op(&mut backend, label, op, |_| true)) {
        Ok(s) => eprintln!(
            "{label} ({name}): {op}: {} cases pass, worst NMSE {:.3e}",
            s.cases, s.worst_nmse
        ),
        Err(msg) => panic!("{msg}"),
    }
}

/// Runs the cases of `op` whose names `keep` accepts on `backend` and on the CPU reference,
/// comparing them as [`check_op`] does. `Err` lists every failing case (op, case, NMSE).
pub async fn check_backend_op<B: Backend>(
    backend: &mut B,
    label: &str,
    op: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<OpSummary, String> {
    let name = backend.name();
    let cases: Vec<Case> = cases_for(op).into_iter().filter(|c| keep(&c.name)).collect();
    if cases.is_empty() {
        return Err(format!("no cases for op {op}"));
    }
    let mut reference = CpuBackend::reference();
    let base_bytes = backend.allocated_bytes();
    let mut failures = Vec::new();
    let mut worst = 0f64;
    for case in &cases {
        let tag = format!("{op} [{}]", case.name);
        // Every case's op is one each backend must run (every weight dtype, the GGUF block
        // types included): an unsupported one fails, never skips.
        if !backend.supports(&case.op) {
            failures.push(format!("{tag}: {name} reports the op unsupported"));
            continue;
        }
        let want = match run_case_async(&mut reference, case).await {
            Ok(w) => w,
            Err(e) => return Err(format!("{tag}: the reference itself failed: {e}")),
        };
        let got = match run_case_async(backend, case).await {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{tag}: {e}"));
                continue;
            }
        };
        let precision = backend.precision(&case.op);
        for (((buf, tol), w), g) in case.checks.iter().zip(&want).zip(&got) {
            let what = format!("{tag} buffer {buf}");
            let tol = precision_tolerance(&case.op, precision).unwrap_or(*tol);
            let spec = &case.bufs[*buf];
            match compare(&what, tol, (spec.dtype, spec.numel), w, g) {
                Ok(nmse) => {
                    worst = worst.max(nmse);
                    if precision != Precision::F32 {
                        // The measurements this class's tolerances are set from.
                        eprintln!("{label} ({name}): {tag} in {precision:?}: NMSE {nmse:.3e} (limit {tol:?})");
                    }
                }
                Err(msg) => failures.push(msg),
            }
        }
        if backend.allocated_bytes() != base_bytes {
            failures.push(format!(
                "{tag}: {} bytes still allocated after freeing the case's buffers (was {base_bytes})",
                backend.allocated_bytes()
            ));
        }
    }
    if !failures.is_empty() {
        return Err(format!(
            "{label} ({name}): {} of {} {op} cases failed:\n  {}",
            failures.len(),
            cases.len(),
            failures.join("\n  ")
        ));
    }
    Ok(OpSummary { cases: cases.len(), worst_nmse: worst })
}

/// Batch invariance of `op` ("matmul" or "attention") on `backend`: every request's rows
/// inside a batch equal, bit for bit, its rows computed alone. `Err` lists every difference.
pub async fn check_batch_invariance<B: Backend>(
    backend: &mut B,
    op: &str,
) -> Result<usize, String> {
    let name = backend.name();
    let cases = crate::cases::invariance_cases(op);
    if cases.is_empty() {
        return Err(format!("no batch-invariance cases for {op}"));
    }
    let mut failures = vec![];
    for inv in &cases {
        if !backend.supports(&inv.batch.op) {
            failures.push(format!("{op} [{}]: {name} reports the op unsupported", inv.batch.name));
            continue;
        }
        let batch = run_case_async(backend, &inv.batch)
            .await
            .map_err(|e| format!("{op} [{}]: {e}", inv.batch.name))?;
        let batch: Vec<f32> = bytemuck::pod_collect_to_vec(&batch[0]);
        for (alone, row0) in &inv.alone {
            let got = run_case_async(backend, alone)
                .await
                .map_err(|e| format!("{op} [{}]: {e}", alone.name))?;
            let got: Vec<f32> = bytemuck::pod_collect_to_vec(&got[0]);
            let inside = &batch[row0 * inv.row_len..row0 * inv.row_len + got.len()];
            if let Some(i) = got.iter().zip(inside).position(|(a, b)| a.to_bits() != b.to_bits()) {
                failures.push(format!(
                    "{op} [{}] alone vs inside [{}] (from row {row0}): element {i} differs: {} vs {}",
                    alone.name, inv.batch.name, got[i], inside[i]
                ));
            }
        }
    }
    if failures.is_empty() {
        Ok(cases.len())
    } else {
        Err(format!(
            "{name}: {} batch-invariance failures:\n  {}",
            failures.len(),
            failures.join("\n  ")
        ))
    }
}

/// [`check_batch_invariance`] on the backend `make` builds, skipping loudly without one.
#[cfg(not(target_arch = "wasm32"))]
pub fn check_invariance<B: Backend, F: Fn() -> Result<B, String>>(make: F, label: &str, op: &str) {
    let mut backend = match make() {
        Ok(b) => b,
        Err(reason) => {
            eprintln!("SKIP {label}: {reason}");
            return;
        }
    };
    match pollster::block_on(check_batch_invariance(&mut backend, op)) {
        Ok(n) => eprintln!(
            "{label} ({}): {op}: {n} batches bitwise equal to their requests alone",
            backend.name()
        ),
        Err(msg) => panic!("{msg}"),
    }
}

/// Ok(nmse) when `got` matches `want` within `tol`; the NMSE is 0 for exact checks.
fn compare(
    what: &str,
    tol: Tol,
    (dtype, numel): (DType, usize),
    want: &[u8],
    got: &[u8],
) -> Result<f64, String> {
    if want.len() != got.len() {
        return Err(format!("{what}: read {} bytes, reference {}", got.len(), want.len()));
    }
    match tol {
        Tol::Exact => match want.iter().zip(got).position(|(a, b)| a != b) {
            None => Ok(0.0),
            Some(at) => {
                let elem = match dtype {
                    DType::F16 => 2,
                    DType::F8E4M3 => 1,
                    _ => 4,
                };
                let i = at / elem;
                let (w, g) = (&want[i * elem..(i + 1) * elem], &got[i * elem..(i + 1) * elem]);
                Err(format!("{what}: not exact, first difference at element {i}: want {w:02x?}, got {g:02x?}"))
            }
        },
        Tol::Nmse(limit) => {
            let floats = |bytes: &[u8]| -> Vec<f32> {
                if dtype.is_quantized() {
                    tandem_core::quant::decode(bytes, dtype, numel)
                } else {
                    bytemuck::pod_collect_to_vec(bytes)
                }
            };
            let (a, b) = (floats(want), floats(got));
            let (mut num, mut den) = (0f64, 0f64);
            for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
                if x.is_nan() || y.is_nan() || x.is_infinite() || y.is_infinite() {
                    let same = (x.is_nan() && y.is_nan()) || x == y;
                    if !same {
                        return Err(format!(
                            "{what}: NaN/Inf parity broken at element {i}: want {x}, got {y}"
                        ));
                    }
                    continue;
                }
                num += (x as f64 - y as f64).powi(2);
                den += (x as f64).powi(2);
            }
            // An all-zero reference makes the error absolute.
            let nmse = if den > 0.0 { num / den } else { num };
            if nmse <= limit {
                Ok(nmse)
            } else {
                Err(format!("{what}: NMSE {nmse:.3e} > {limit:.1e}"))
            }
        }
    }
}

/// The op with every buffer id passed through `f`.
pub fn remap(op: &Op, f: impl Fn(BufId) -> BufId) -> Op {
    let mut op = op.clone();
    match &mut op {
        Op::Embed(o) => (o.table, o.ids, o.out) = (f(o.table), f(o.ids), f(o.out)),
        Op::RmsNorm(o) => (o.x, o.weight, o.out) = (f(o.x), f(o.weight), f(o.out)),
        Op::Matmul(o) => (o.x, o.w, o.bias, o.out) = (f(o.x), f(o.w), o.bias.map(&f), f(o.out)),
        Op::Rope(o) => (o.x, o.positions, o.inv_freq) = (f(o.x), f(o.positions), f(o.inv_freq)),
        Op::KvWrite(o) => {
            (o.k, o.v, o.cache_k, o.cache_v, o.slots) =
                (f(o.k), f(o.v), f(o.cache_k), f(o.cache_v), f(o.slots))
        }
        Op::Attention(o) => {
            (o.q, o.cache_k, o.cache_v, o.positions, o.table_starts, o.tables, o.out) = (
                f(o.q),
                f(o.cache_k),
                f(o.cache_v),
                f(o.positions),
                f(o.table_starts),
                f(o.tables),
                f(o.out),
            )
        }
        Op::Swiglu(o) => (o.gate, o.up, o.out) = (f(o.gate), f(o.up), f(o.out)),
        Op::Geglu(o) => (o.gate, o.up, o.out) = (f(o.gate), f(o.up), f(o.out)),
        Op::Softcap(o) => o.x = f(o.x),
        Op::Hadamard(o) => o.x = f(o.x),
        Op::MoeRoute(o) => (o.logits, o.ids, o.weights) = (f(o.logits), f(o.ids), f(o.weights)),
        Op::MoeMatmul(o) => (o.x, o.w, o.ids, o.out) = (f(o.x), f(o.w), f(o.ids), f(o.out)),
        Op::MoeSum(o) => (o.y, o.weights, o.out) = (f(o.y), f(o.weights), f(o.out)),
        Op::Add(o) => (o.x, o.y) = (f(o.x), f(o.y)),
        Op::Argmax(o) => (o.x, o.out) = (f(o.x), f(o.out)),
        Op::Sample(o) => (o.x, o.params, o.out) = (f(o.x), f(o.params), f(o.out)),
        Op::MaskLogits(o) => (o.x, o.rows, o.mask) = (f(o.x), f(o.rows), f(o.mask)),
        Op::CopyRows(o) => (o.src, o.dst) = (f(o.src), f(o.dst)),
        Op::LoraShrink(o) => {
            (o.x, o.a, o.rows, o.slots, o.t) = (f(o.x), f(o.a), f(o.rows), f(o.slots), f(o.t))
        }
        Op::LoraExpand(o) => {
            (o.t, o.b, o.rows, o.slots, o.out) = (f(o.t), f(o.b), f(o.rows), f(o.slots), f(o.out))
        }
    }
    op
}
