//! out = x @ w^T (+ bias) with the dequantization fused. The kernel of a row follows from its
//! class (decode or prompt) and k, m, dtype, never from n, so a row is computed alike however
//! many rows share the op (batch invariance, see [`Matmul`]):
//! - decode rows: the persistent n1/nt kernels (kernels/matmul_decode.cu, a token or a tile of
//!   N1_TOKENS tokens per blockIdx.y) where k % 32 == 0 and k fits its block, else the warp-per-row kernels there,
//!   whose sums are per token;
//! - prompt rows: cuBLAS on tensor cores (bf16 operands, f32 sums) for bf16 and quantized
//!   weights with k % 32 == 0, in products of one fixed shape (see [`TC_ROWS`]); else the tiled
//!   f32 kernel (kernels/matmul_prefill.cu).
//!
//! Row offsets (the prompt rows after the decode rows) are pointer offsets.

use tandem_core::ops::Matmul;
use tandem_core::{DType, Error, Result};

use super::{quant_offsets, weight_entries, weight_index, WEIGHT_DTYPES};
use crate::blas::Gemm;
use crate::kernels::KernelFile;
use crate::launch::{bad_dtype, fits_u32, grid_1d, Arg, Recorder};

const OP: &str = "matmul";
/// Tokens per blockIdx.y of the warp-per-row kernels (MATVEC_MAXN).
const MATVEC_MAX_N: usize = 8;
/// Output rows per block of the warp-per-row kernels (MATVEC_WARPS: a warp per row).
const MATVEC_ROWS: usize = 4;
/// Threads per block of the one-token kernel at most (N1_MAX_THREADS): k up to 32 times it.
const N1_MAX_THREADS: usize = 512;
/// Tokens per block of the batched decode kernel (N1_TOKENS).
const N1_TOKENS: usize = 8;

/// Rows per block of the one-token kernel (N1Rows in kernels/matmul_decode.cu).
fn n1_rows(d: DType) -> usize {
    match d {
        DType::F32 => 2,
        _ => 4,
    }
}
/// Output tile of the prefill kernel (PF_TN rows x PF_TM tokens).
const TILE: usize = 64;

/// Rows of every tensor-core product: prompt rows go to cuBLAS this many at a time, the last
/// chunk padded with zero rows, into scratch (aligned alike whatever the row offset), so every
/// product of one k, m and dtype has one shape. cuBLAS picks its kernel (tiling, split-K) from
/// the shape; a fixed shape keeps a row's arithmetic independent of how many rows share the op.
/// 512: cuBLAS ran 128-row products at ~150 TFLOP/s on an H100 and 512-row ones at 450-700
/// (bench/device_ceilings.py), so a short prompt costs about the same either way and a long
/// one a third.
pub(crate) const TC_ROWS: usize = 512;
/// Scratch for quantized weights expanded to bf16, a slice of rows at a time.
const TC_SLICE_BYTES: usize = 64 << 20;
/// Scratch for one chunk's product over a slice of weight rows.
const TC_ACC_BYTES: usize = 32 << 20;

/// Whether prompt rows of this k and dtype go to the tensor cores (given cuBLAS): whole
/// quantization blocks per row, bf16 or quantized weights. f32 and f16 weights keep f32
/// products (bf16 would round the weights themselves; f16 activations can overflow).
fn tc_applies(k: usize, d: DType) -> bool {
    k > 0 && k % 32 == 0 && matches!(d, DType::BF16 | DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
}

/// Whether some rows of `op` run on tensor cores (given cuBLAS): its prompt rows, if any.
pub(crate) fn tensor_cores(op: &Matmul) -> bool {
    op.n > op.decode_rows && tc_applies(op.k, op.wdtype)
}

/// Rows of the weight per slice: whole multiples of 128 within both scratch budgets (at
/// least 128), and never more than the weight has (k > 0, see tc_applies).
fn tc_slice_rows(k: usize, m: usize) -> usize {
    let rows = (TC_SLICE_BYTES / (2 * k)).min(TC_ACC_BYTES / (4 * TC_ROWS));
    (rows / 128 * 128).max(128).min(m)
}

/// Scratch of a tensor-core product of `prompt` rows, in bytes, each part rounded up so the
/// next is aligned: a chunk's product, the weight slice (quantized weights only), the bf16
/// activations (whole chunks), in this order so that only the last part's size depends on the
/// rows. Saturating: the op's shapes are checked only when it records.
fn tc_layout(prompt: usize, k: usize, m: usize, d: DType) -> [usize; 3] {
    let round = |b: usize| b.saturating_add(255) / 256 * 256;
    let slice = tc_slice_rows(k, m);
    let w = if d == DType::BF16 { 0 } else { slice.saturating_mul(k).saturating_mul(2) };
    let x = prompt.div_ceil(TC_ROWS).saturating_mul(TC_ROWS).saturating_mul(k).saturating_mul(2);
    [round(TC_ROWS * slice * 4), round(w), x]
}

/// Scratch bytes of `op`'s tensor-core products.
pub(crate) fn tc_scratch_bytes(op: &Matmul) -> usize {
    tc_layout(op.n.saturating_sub(op.decode_rows), op.k, op.m, op.wdtype)
        .iter()
        .fold(0, |a, &b| a.saturating_add(b))
}

/// The weight as the kernels take it.
#[derive(Clone, Copy)]
struct Weight {
    ptr: u64,
    d_off: u64,
    m_off: u64,
    /// Index into every weight kernel's entry list.
    wi: usize,
}

/// An op's buffers, checked, as the kernels take them.
struct Checked<'a> {
    op: &'a Matmul,
    x: u64,
    w: Weight,
    bias: u64,
    out: u64,
}

fn check<'a>(r: &Recorder, op: &'a Matmul) -> Result<Option<Checked<'a>>> {
    let wi = weight_index(op.wdtype).ok_or_else(|| bad_dtype(OP, "w", WEIGHT_DTYPES, op.wdtype))?;
    let (n, k, m) = (op.n, op.k, op.m);
    let out_len = n * m;
    let x = r.buf(OP, "x", op.x)?.ptr;
    let w = r.buf(OP, "w", op.w)?;
    let bias = match op.bias {
        Some(b) => r.buf(OP, "bias", b)?.ptr,
        None => 0, // a null pointer: the kernels test it
    };
    let out = r.buf(OP, "out", op.out)?.ptr;
    if out_len == 0 {
        return Ok(None);
    }
    fits_u32(OP, "k", k)?;
    fits_u32(OP, "m", m)?;
    let (d_off, m_off) = quant_offsets(op.wdtype, w.numel);
    Ok(Some(Checked { op, x, w: Weight { ptr: w.ptr, d_off, m_off, wi }, bias, out }))
}

pub(crate) fn record(r: &mut Recorder, op: &Matmul) -> Result<()> {
    record_run(r, &[op])
}

/// Whether `b`, a member of `a`'s group (the same x, n, k and decode rows, distinct outputs
/// none of which is x or another member's operand: the engine checked that), can share `a`'s
/// decode launch (see [`record_run`]): the same weight type, and decode rows the n1/nt kernels
/// take.
pub(crate) fn fusable(a: &Matmul, b: &Matmul) -> bool {
    a.wdtype == b.wdtype && a.decode_rows > 0 && n1_applies(a.k, a.wdtype)
}

/// Up to three products of one group (q, k and v; gate and up; see [`fusable`]): their
/// decode rows in one launch of the n1/nt kernel, whose row groups run through the products'
/// weights one after the other (a row's arithmetic is the one it has alone), then each one's
/// prompt rows.
pub(crate) fn record_run(r: &mut Recorder, run: &[&Matmul]) -> Result<()> {
    debug_assert!(
        !run.is_empty()
            && run.len() <= 3
            && run.iter().all(|m| (m.x, m.n, m.k) == (run[0].x, run[0].n, run[0].k))
            && run.windows(2).all(|p| fusable(run[0], p[1]))
    );
    let mut checked = Vec::with_capacity(run.len());
    for op in run {
        checked.extend(check(r, op)?);
    }
    let Some(first) = checked.first() else { return Ok(()) };
    if first.op.decode_rows > 0 {
        if n1_applies(first.op.k, first.op.wdtype) {
            decode_n1(r, &checked)?;
        } else {
            for c in &checked {
                decode_warps(r, c)?;
            }
        }
    }
    for c in &checked {
        prompt_rows(r, c)?;
    }
    Ok(())
}

fn prompt_rows(r: &mut Recorder, c: &Checked) -> Result<()> {
    let (op, w, bias) = (c.op, c.w, c.bias);
    let (n, k, m, dr) = (op.n, op.k, op.m, op.decode_rows);
    let prompt = n - dr;
    if prompt == 0 {
        return Ok(());
    }
    let (x, out) = (c.x + (4 * dr * k) as u64, c.out + (4 * dr * m) as u64);
    match r.blas {
        Some(handle) if tc_applies(k, op.wdtype) => record_tc(r, op, handle, x, w, bias, out),
        _ => {
            let args = [
                Arg::Ptr(x),
                Arg::Ptr(w.ptr),
                Arg::U64(w.d_off),
                Arg::U64(w.m_off),
                Arg::Ptr(bias),
                Arg::Ptr(out),
                Arg::U32(fits_u32(OP, "n", prompt)?),
                Arg::U32(k as u32),
                Arg::U32(m as u32),
            ];
            let grid = (
                fits_u32(OP, "m / 64", m.div_ceil(TILE))?,
                fits_u32(OP, "n / 64", prompt.div_ceil(TILE))?,
                1,
            );
            r.launch(
                KernelFile::MatmulPrefill,
                weight_entries!("matmul_prefill")[w.wi],
                grid,
                256,
                0,
                &args,
            )
        }
    }
}

/// Whether decode rows of this k and weight type take the n1/nt kernels: whole blocks of 32,
/// a thread each, of tandem's own types (GGUF block types take matmul_decode_kq).
fn n1_applies(k: usize, d: DType) -> bool {
    k > 0 && k % 32 == 0 && k / 32 <= N1_MAX_THREADS && d.block_layout().is_none()
}

/// The decode rows of up to three products over the same x, in one launch: a thread per block
/// of x, blocks walking the products' row groups; blockIdx.y is the token (one row) or the
/// tile of N1_TOKENS tokens (a batch: each group's weights loaded once for the tile). Both
/// kernels run the same per-token arithmetic.
fn decode_n1(r: &mut Recorder, run: &[Checked]) -> Result<()> {
    let op = run[0].op;
    let (k, rows) = (op.k, op.decode_rows);
    let threads = (k / 32).next_multiple_of(32).max(32);
    let groups: usize = run.iter().map(|c| c.op.m.div_ceil(n1_rows(op.wdtype))).sum();
    let (entry, tiles) = match rows {
        1 => (weight_entries!("matmul_decode_n1")[run[0].w.wi], 1),
        _ => (weight_entries!("matmul_decode_nt")[run[0].w.wi], rows.div_ceil(N1_TOKENS)),
    };
    // As many blocks as are resident at once, shared by the tiles: the launch bound caps
    // registers at 128 a thread, so a multiprocessor's 64K registers hold 512 / threads
    // blocks (one where k > 8192: a second wave cost the 8B's down projection 12% on an H100,
    // NOTES.md). The grid only spreads the row groups; a row's arithmetic is the same.
    let resident = r.arch.sms as usize * (512 / threads).max(1);
    let grid = (
        fits_u32(OP, "m / rows", groups.min((resident / tiles).max(1)))?,
        fits_u32(OP, "decode rows", tiles)?,
        1,
    );
    let mut args = vec![Arg::Ptr(run[0].x)];
    for i in 0..3 {
        match run.get(i) {
            Some(c) => args.extend([
                Arg::Ptr(c.w.ptr),
                Arg::U64(c.w.d_off),
                Arg::U64(c.w.m_off),
                Arg::Ptr(c.bias),
                Arg::Ptr(c.out),
                Arg::U32(c.op.m as u32),
            ]),
            None => args.extend([
                Arg::Ptr(0),
                Arg::U64(0),
                Arg::U64(0),
                Arg::Ptr(0),
                Arg::Ptr(0),
                Arg::U32(0),
            ]),
        }
    }
    args.extend([Arg::U32(fits_u32(OP, "decode rows", rows)?), Arg::U32(k as u32)]);
    r.launch(KernelFile::MatmulDecode, entry, grid, threads as u32, 0, &args)
}

/// How the expert products of a mixture-of-experts layer run a row (kernels/matmul_decode.cu's
/// moe_rows): with the kernel function a one-row decode product of the same k, m and dtype
/// takes here, so that each row has that product's bits.
pub(crate) struct MoePath {
    /// MOE_N1, MOE_BLOCKS, MOE_KQ or MOE_ANY.
    pub path: u32,
    pub threads: u32,
    /// Blocks over each row's output (a row's arithmetic does not depend on it).
    pub grid_x: usize,
}

/// The [`MoePath`] of rows of this k, m and dtype, `rows` of them sharing the launch.
pub(crate) fn moe_path(r: &Recorder, k: usize, m: usize, d: DType, rows: usize) -> MoePath {
    if n1_applies(k, d) {
        // As decode_n1 sizes one token's grid, shared by the rows.
        let threads = (k / 32).next_multiple_of(32).max(32);
        let resident = r.arch.sms as usize * (512 / threads).max(1);
        let grid_x = m.div_ceil(n1_rows(d)).min((resident / rows.max(1)).max(1));
        return MoePath { path: 0, threads: threads as u32, grid_x };
    }
    // As decode_warps picks its kernel.
    let path = match (d.block_layout().is_some(), k % 32 == 0, k % 8 == 0) {
        (true, _, true) => 2,
        (true, _, false) | (false, false, _) => 3,
        (false, true, _) => 1,
    };
    MoePath { path, threads: 32 * MATVEC_ROWS as u32, grid_x: m.div_ceil(MATVEC_ROWS) }
}

/// Decode rows the n1 kernel does not take: a warp per output row, MATVEC_MAX_N tokens per
/// blockIdx.y, each token's sums its own. GGUF block types run 8 values a lane where every row
/// starts on a run of 8 (k % 8 == 0), else element by element.
fn decode_warps(r: &mut Recorder, c: &Checked) -> Result<()> {
    let (k, m, rows) = (c.op.k, c.op.m, c.op.decode_rows);
    let entry = match (c.op.wdtype.block_layout().is_some(), k % 32 == 0, k % 8 == 0) {
        (true, _, true) => weight_entries!("matmul_decode_kq")[c.w.wi],
        (true, _, false) | (false, false, _) => weight_entries!("matmul_decode_any")[c.w.wi],
        (false, true, _) => weight_entries!("matmul_decode")[c.w.wi],
    };
    let grid = (
        fits_u32(OP, "m / 4", m.div_ceil(MATVEC_ROWS))?,
        fits_u32(OP, "decode rows / 8", rows.div_ceil(MATVEC_MAX_N))?,
        1,
    );
    let args = [
        Arg::Ptr(c.x),
        Arg::Ptr(c.w.ptr),
        Arg::U64(c.w.d_off),
        Arg::U64(c.w.m_off),
        Arg::Ptr(c.bias),
        Arg::Ptr(c.out),
        Arg::U32(fits_u32(OP, "decode rows", rows)?),
        Arg::U32(k as u32),
        Arg::U32(m as u32),
    ];
    r.launch(KernelFile::MatmulDecode, entry, grid, 32 * MATVEC_ROWS as u32, 0, &args)
}

/// The prompt rows (`x`, `out` at their first row) on tensor cores: x rounded to bf16 into the
/// scratch in whole chunks of TC_ROWS, quantized weights expanded slice by slice, and
/// for each (slice, chunk) one cuBLAS product of the fixed shape into the scratch, then stored
/// into the chunk's rows of out with the bias.
fn record_tc(
    r: &mut Recorder,
    op: &Matmul,
    handle: usize,
    x: u64,
    w: Weight,
    bias: u64,
    out: u64,
) -> Result<()> {
    let (k, m, prompt) = (op.k, op.m, op.n - op.decode_rows);
    let [acc_bytes, w_bytes, _] = tc_layout(prompt, k, m, op.wdtype);
    let chunks = prompt.div_ceil(TC_ROWS);
    let (acc, wh) = (r.scratch, r.scratch + acc_bytes as u64);
    let xh = wh + w_bytes as u64;
    let padded = (chunks * TC_ROWS * k) as u64;
    let cast = [Arg::Ptr(x), Arg::Ptr(xh), Arg::U64((prompt * k) as u64), Arg::U64(padded)];
    r.launch(KernelFile::MatmulTc, "matmul_tc_cast_x", grid_1d(padded, 256), 256, 0, &cast)?;
    let i32_of = |what: &str, v: usize| {
        i32::try_from(v).map_err(|_| Error::ShapeMismatch {
            op: OP,
            expected: format!("{what} < 2^31"),
            got: v.to_string(),
        })
    };
    let k_i32 = i32_of("k", k)?;
    let slice = tc_slice_rows(k, m);
    for row0 in (0..m).step_by(slice) {
        let rows = slice.min(m - row0);
        let ws = if op.wdtype == DType::BF16 {
            w.ptr + (2 * row0 * k) as u64
        } else {
            let entry = match op.wdtype {
                DType::Q8_0 => "matmul_tc_dequant_q8_0",
                DType::Q4_0 => "matmul_tc_dequant_q4_0",
                _ => "matmul_tc_dequant_q4_1",
            };
            let args = [
                Arg::Ptr(w.ptr),
                Arg::U64(w.d_off),
                Arg::U64(w.m_off),
                Arg::Ptr(wh),
                Arg::U32(row0 as u32),
                Arg::U32(rows as u32),
                Arg::U32(k as u32),
            ];
            r.launch(
                KernelFile::MatmulTc,
                entry,
                grid_1d((rows * k / 32) as u64, 256),
                256,
                0,
                &args,
            )?;
            wh
        };
        let rows_i32 = i32_of("m", rows)?;
        for c in 0..chunks {
            let x_chunk = xh + (2 * c * TC_ROWS * k) as u64;
            r.gemm(Gemm {
                handle,
                x: x_chunk,
                w: ws,
                out: acc,
                n: TC_ROWS as i32,
                k: k_i32,
                m: rows_i32,
                ldc: rows_i32,
            });
            let valid = TC_ROWS.min(prompt - c * TC_ROWS);
            let dst = out + (4 * c * TC_ROWS * m) as u64;
            let args = [
                Arg::Ptr(acc),
                Arg::Ptr(bias),
                Arg::Ptr(dst),
                Arg::U32(valid as u32),
                Arg::U32(rows as u32),
                Arg::U32(m as u32),
                Arg::U32(row0 as u32),
            ];
            r.launch(
                KernelFile::MatmulTc,
                "matmul_tc_store",
                grid_1d((valid * rows) as u64, 256),
                256,
                0,
                &args,
            )?;
        }
    }
    Ok(())
}
