//! out = x @ w^T (+ bias) with the dequantization fused: the matrix-vector kernels for up to
//! 8 tokens (kernels/matmul_decode.cu: 16-byte block loads when k % 32 == 0, so every row
//! starts on a quantization block, with a one-token variant that reads x once per 4 rows; a
//! per-element kernel otherwise), the tiled kernel above (kernels/matmul_prefill.cu).

use tandem_core::ops::Matmul;
use tandem_core::{DType, Result};

use super::{quant_offsets, weight_entries, weight_index, WEIGHT_DTYPES};
use crate::kernels::KernelFile;
use crate::blas::Gemm;
use crate::launch::{bad_dtype, fits_u32, numel, Arg, Recorder};

const OP: &str = "matmul";
/// Most tokens the matrix-vector kernels take (MATVEC_MAXN).
pub(crate) const MATVEC_MAX_N: usize = 8;
/// Output rows per block of the matrix-vector kernels (MATVEC_WARPS: a warp per row).
const MATVEC_ROWS: usize = 4;
/// Threads per block of the one-token kernel at most (N1_MAX_THREADS): k up to 32 times it.
const N1_MAX_THREADS: usize = 512;

/// Rows per block of the one-token kernel (N1Rows in kernels/matmul_decode.cu).
fn n1_rows(d: DType) -> usize {
    match d {
        DType::F32 => 2,
        DType::Q4_0 | DType::Q4_1 => 8,
        _ => 4,
    }
}
/// Output tile of the prefill kernel (PF_TN rows x PF_TM tokens).
const TILE: usize = 64;

/// Fewest tokens whose product goes to the tensor cores: below, the f32 kernels (which read
/// each weight once per 8 tokens or tile it in shared memory) are as fast and exact.
const TC_MIN_N: usize = 16;
/// Scratch for quantized weights expanded to bf16, a slice of rows at a time.
const TC_SLICE_BYTES: usize = 64 << 20;

/// Whether `op` runs as a cuBLAS product with bf16 operands (given cuBLAS is there): a
/// prompt-sized product of bf16 or quantized weights with whole blocks per row. f32 and f16
/// weights keep f32 products (bf16 would round the weights themselves; f16 activations can
/// overflow).
pub(crate) fn tensor_cores(op: &Matmul) -> bool {
    op.n >= TC_MIN_N && op.k > 0 && op.k % 32 == 0 && matches!(op.wdtype, DType::BF16 | DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
}

/// Rows of a quantized weight expanded per slice: whole multiples of 128 within the scratch
/// (at least 128), and never more than the weight has (k > 0, see tensor_cores).
fn tc_slice_rows(k: usize, m: usize) -> usize {
    (TC_SLICE_BYTES / (2 * k) / 128 * 128).max(128).min(m)
}

/// Bytes of the bf16 activations at the start of the scratch, rounded up so the weight slice
/// after them is aligned. Saturating: the op's shapes are checked only when it records.
fn tc_x_bytes(n: usize, k: usize) -> usize {
    n.saturating_mul(k).saturating_mul(2).saturating_add(255) / 256 * 256
}

/// Scratch bytes of a tensor-core product: the bf16 activations, then the weight slice.
pub(crate) fn tc_scratch_bytes(op: &Matmul) -> usize {
    let x = tc_x_bytes(op.n, op.k);
    let w = if op.wdtype == DType::BF16 { 0 } else { tc_slice_rows(op.k, op.m).saturating_mul(op.k).saturating_mul(2) };
    x.saturating_add(w)
}

pub(crate) fn record(r: &mut Recorder, op: &Matmul) -> Result<()> {
    let wi = weight_index(op.wdtype).ok_or_else(|| bad_dtype(OP, "w", WEIGHT_DTYPES, op.wdtype))?;
    let (n, k, m) = (op.n, op.k, op.m);
    let x_len = numel(OP, &[n, k])?;
    let w_len = numel(OP, &[m, k])?;
    let out_len = numel(OP, &[n, m])?;
    let x = r.buf(OP, "x", op.x, DType::F32, x_len)?.ptr;
    let w = r.buf(OP, "w", op.w, op.wdtype, w_len)?;
    let bias = match op.bias {
        Some(b) => r.buf(OP, "bias", b, DType::F32, m)?.ptr,
        None => 0, // a null pointer: the kernels test it
    };
    let out = r.buf(OP, "out", op.out, DType::F32, out_len)?.ptr;
    if out_len == 0 {
        return Ok(());
    }
    let (d_off, m_off) = quant_offsets(op.wdtype, w.numel);
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(w.ptr),
        Arg::U64(d_off),
        Arg::U64(m_off),
        Arg::Ptr(bias),
        Arg::Ptr(out),
        Arg::U32(fits_u32(OP, "n", n)?),
        Arg::U32(fits_u32(OP, "k", k)?),
        Arg::U32(fits_u32(OP, "m", m)?),
    ];
    if let (Some(handle), true) = (r.blas, tensor_cores(op)) {
        return record_tc(r, op, handle, x, w.ptr, bias, out, (d_off, m_off));
    }
    if n == 1 && k % 32 == 0 && k / 32 <= N1_MAX_THREADS {
        // The decode step's own path: a thread per block of x, blocks walking row groups.
        let args = [args[0], args[1], args[2], args[3], args[4], args[5], args[7], args[8]];
        let threads = (k / 32).next_multiple_of(32).max(32);
        let groups = m.div_ceil(n1_rows(op.wdtype));
        // As many blocks as are resident at once: the launch bound caps registers at 128 a
        // thread, so a multiprocessor's 64K registers hold 512 / threads blocks.
        let resident = r.arch.sms as usize * (512 / threads).max(1);
        let grid = (fits_u32(OP, "m / rows", groups.min(resident))?, 1, 1);
        r.launch(KernelFile::MatmulDecode, weight_entries!("matmul_decode_n1")[wi], grid, threads as u32, 0, &args)
    } else if n <= MATVEC_MAX_N {
        let entry = if k % 32 == 0 {
            weight_entries!("matmul_decode")[wi]
        } else {
            weight_entries!("matmul_decode_any")[wi]
        };
        let grid = (fits_u32(OP, "m / 4", m.div_ceil(MATVEC_ROWS))?, 1, 1);
        r.launch(KernelFile::MatmulDecode, entry, grid, 32 * MATVEC_ROWS as u32, 0, &args)
    } else {
        let grid = (fits_u32(OP, "m / 64", m.div_ceil(TILE))?, fits_u32(OP, "n / 64", n.div_ceil(TILE))?, 1);
        r.launch(KernelFile::MatmulPrefill, weight_entries!("matmul_prefill")[wi], grid, 256, 0, &args)
    }
}

/// The prompt's product on tensor cores: x rounded to bf16 into the scratch, quantized weights
/// expanded slice by slice after it, cuBLAS for each slice's columns of out, then the bias.
#[allow(clippy::too_many_arguments)]
fn record_tc(r: &mut Recorder, op: &Matmul, handle: usize, x: u64, w: u64, bias: u64, out: u64, q: (u64, u64)) -> Result<()> {
    let (n, k, m) = (op.n, op.k, op.m);
    let xh = r.scratch;
    let cast_grid = crate::launch::grid_1d((n * k) as u64, 256);
    r.launch(KernelFile::MatmulTc, "matmul_tc_cast_x", cast_grid, 256, 0, &[Arg::Ptr(x), Arg::Ptr(xh), Arg::U64((n * k) as u64)])?;
    let i32_of = |what: &str, v: usize| i32::try_from(v).map_err(|_| tandem_core::Error::ShapeMismatch { op: OP, expected: format!("{what} < 2^31"), got: v.to_string() });
    let gemm = |w: u64, out: u64, rows: usize| -> Result<Gemm> {
        Ok(Gemm { handle, x: xh, w, out, n: i32_of("n", n)?, k: i32_of("k", k)?, m: i32_of("m", rows)?, ldc: i32_of("m", m)? })
    };
    if op.wdtype == DType::BF16 {
        r.gemm(gemm(w, out, m)?);
    } else {
        let entry = match op.wdtype {
            DType::Q8_0 => "matmul_tc_dequant_q8_0",
            DType::Q4_0 => "matmul_tc_dequant_q4_0",
            _ => "matmul_tc_dequant_q4_1",
        };
        let wh = xh + tc_x_bytes(n, k) as u64;
        let slice = tc_slice_rows(k, m);
        for row0 in (0..m).step_by(slice) {
            let rows = slice.min(m - row0);
            let grid = crate::launch::grid_1d((rows * k / 32) as u64, 256);
            let args = [Arg::Ptr(w), Arg::U64(q.0), Arg::U64(q.1), Arg::Ptr(wh), Arg::U32(row0 as u32), Arg::U32(rows as u32), Arg::U32(k as u32)];
            r.launch(KernelFile::MatmulTc, entry, grid, 256, 0, &args)?;
            r.gemm(gemm(wh, out + 4 * row0 as u64, rows)?);
        }
    }
    if bias != 0 {
        let grid = crate::launch::grid_1d((n * m) as u64, 256);
        r.launch(KernelFile::MatmulTc, "matmul_tc_bias", grid, 256, 0, &[Arg::Ptr(out), Arg::Ptr(bias), Arg::U32(n as u32), Arg::U32(m as u32)])?;
    }
    Ok(())
}
