//! out = x @ w^T (+ bias) with the dequantization fused: the matrix-vector kernels for up to
//! 8 tokens (kernels/matmul_decode.cu: 16-byte block loads when k % 32 == 0, so every row
//! starts on a quantization block, with a one-token variant that reads x once per 4 rows; a
//! per-element kernel otherwise), the tiled kernel above (kernels/matmul_prefill.cu).

use tandem_core::ops::Matmul;
use tandem_core::{DType, Result};

use super::{quant_offsets, weight_entries, weight_index, WEIGHT_DTYPES};
use crate::kernels::KernelFile;
use crate::launch::{bad_dtype, fits_u32, numel, Arg, Recorder};

const OP: &str = "matmul";
/// Most tokens the matrix-vector kernels take (MATVEC_MAXN).
pub(crate) const MATVEC_MAX_N: usize = 8;
/// Output rows per block of the matrix-vector kernels (MATVEC_WARPS: a warp per row).
const MATVEC_ROWS: usize = 4;
/// Output tile of the prefill kernel (PF_TN rows x PF_TM tokens).
const TILE: usize = 64;

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
    if n == 1 && k % 32 == 0 {
        // The decode step's own path: no token count, x shared by the block's rows.
        let args = [args[0], args[1], args[2], args[3], args[4], args[5], args[7], args[8]];
        let grid = (fits_u32(OP, "m / 4", m.div_ceil(MATVEC_ROWS))?, 1, 1);
        r.launch(KernelFile::MatmulDecode, weight_entries!("matmul_decode_n1")[wi], grid, 32 * MATVEC_ROWS as u32, 0, &args)
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
