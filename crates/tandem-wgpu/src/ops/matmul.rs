//! out = x @ w^T (+ bias): decode rows through the matrix-vector kernels, prompt rows through
//! the tiled kernel, whatever n is, so each row is computed as it would be alone (batch
//! invariance, see `Matmul`); one dispatch per part of a split weight and row class.

use tandem_core::ops::Matmul;
use tandem_core::{DType, Error, Result};

use super::{
    bad_dtype, dtype_code, fits_u32, groups_1d, quant_offsets, Dispatch, Recorder, WEIGHT_DTYPES,
};
use crate::pipelines::{PipeKey, Shader};

const OP: &str = "matmul";
/// Invocations per weight row in the matrix-vector kernel: enough to split a row of the usual
/// k (576..1536) into short runs, few enough that every lane has work (64 leaves most idle and
/// costs more barriers; see NOTES.md).
pub(crate) const TPR: usize = 32;
/// Rows per workgroup of the row-per-invocation matrix-vector kernel.
pub(crate) const RWG: usize = 64;
/// Token rows per tile of the tiled kernel (TILE in matmul_tiled.wgsl).
const TILE: usize = 64;
/// Most workgroups in one grid dimension.
const MAX_GROUPS: usize = 65535;

pub(crate) fn record(r: &mut Recorder, op: &Matmul) -> Result<()> {
    let code = dtype_code(op.wdtype).ok_or_else(|| bad_dtype(OP, "w", WEIGHT_DTYPES, op.wdtype))?;
    let (n, k, m) = (op.n, op.k, op.m);
    let x_len = n * k;
    let w_len = m * k;
    let out_len = n * m;
    let x = r.buf(OP, "x", op.x)?;
    let w = r.table.entry(OP, "w", op.w)?;
    let bias = match op.bias {
        Some(b) => Some(r.buf(OP, "bias", b)?),
        None => None,
    };
    let out = r.buf(OP, "out", op.out)?;
    if w.parts.len() > 1 && w.shape.map(|s| s.1) != Some(k) {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: format!("a split weight of rows of {k} values"),
            got: format!("shape {:?}", w.shape),
        });
    }
    if out_len == 0 {
        return Ok(());
    }
    fits_u32(OP, "n * k", x_len)?;
    fits_u32(OP, "m * k", w_len)?;
    fits_u32(OP, "n * m", out_len)?;
    // The matrix-vector grids fold rows into two dimensions; the tiled one does not.
    if op.decode_rows < n && m.div_ceil(TILE) > MAX_GROUPS {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: format!("m <= {}", TILE * MAX_GROUPS),
            got: m.to_string(),
        });
    }
    let native = op.wdtype == DType::F16 && r.uses_f16;
    let shader = if native { Shader::MatmulF16Native } else { Shader::Matmul };
    let rows_kernel = decode_kernel(r, op.wdtype, k);
    let with_dtype = |pipe: PipeKey| if native { pipe } else { pipe.with("DTYPE", code) };
    let matvec = with_dtype(match rows_kernel {
        true => PipeKey::new(shader, "matvec_rows").with("RWG", RWG as u32),
        false => PipeKey::new(shader, "matvec").with("TPR", TPR as u32),
    });
    let tiled = with_dtype(PipeKey::new(shader, "tiled"));
    // (pipeline, first row, rows, rows per dispatch: the grid's token dimension stays in range).
    let classes = [
        (matvec, 0, op.decode_rows, MAX_GROUPS),
        (tiled, op.decode_rows, n - op.decode_rows, TILE * MAX_GROUPS),
    ];
    for part in &w.parts {
        let rows = if w.parts.len() == 1 { m } else { part.rows };
        if part.row0 >= m {
            continue;
        }
        let rows = rows.min(m - part.row0);
        let (d_off, m_off) =
            quant_offsets(op.wdtype, if w.parts.len() == 1 { w.numel } else { part.rows * k });
        // Without a bias the binding still needs a buffer: x is read-only too.
        let bufs = vec![
            x.clone(),
            (part.gpu.uid, part.gpu.buffer.clone()),
            bias.clone().unwrap_or_else(|| x.clone()),
            out.clone(),
        ];
        for &(ref pipe, first, count, chunk) in &classes {
            for row0 in (first..first + count).step_by(chunk) {
                let tokens = chunk.min(first + count - row0);
                let groups = match pipe.entry {
                    "tiled" => [rows.div_ceil(TILE) as u32, tokens.div_ceil(TILE) as u32, 1],
                    "matvec_rows" => fold(rows, RWG, tokens),
                    _ => fold(rows, 256 / TPR, tokens),
                };
                let params = vec![
                    tokens as u32,
                    k as u32,
                    rows as u32,
                    m as u32,
                    part.row0 as u32,
                    bias.is_some() as u32,
                    d_off,
                    m_off,
                    row0 as u32,
                ];
                r.out.push(Dispatch { pipe: pipe.clone(), bufs: bufs.clone(), params, groups });
            }
        }
    }
    Ok(())
}

/// Whether decode rows of a `wdtype` weight with rows of k take the row-per-invocation kernel
/// (matvec_rows) rather than the lanes-per-row one (matvec). On a CPU rasterizer, rows of whole
/// blocks (and so every part of a split weight) take the row-per-invocation kernel. A GPU takes
/// the lanes-per-row kernel for every row: one row per invocation reads each row's bytes k
/// apart across a warp, uncoalesced. Native f16 weights have only the lanes-per-row kernel.
pub(crate) fn decode_kernel(r: &Recorder, wdtype: DType, k: usize) -> bool {
    let native = wdtype == DType::F16 && r.uses_f16;
    r.row_matvec && !native && k % 32 == 0 && wdtype.block_layout().is_none()
}

/// Weight rows in groups of `per` (folded into x and y), one token per z.
pub(crate) fn fold(rows: usize, per: usize, tokens: usize) -> [u32; 3] {
    let [x, y, _] = groups_1d(rows, per);
    [x, y, tokens as u32]
}
