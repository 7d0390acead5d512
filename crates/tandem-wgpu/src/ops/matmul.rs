//! out = x @ w^T (+ bias): the matrix-vector kernel for up to 8 tokens (decode), the tiled
//! kernel above; one dispatch per part of a split weight, each writing its rows' columns.

use tandem_core::ops::Matmul;
use tandem_core::{DType, Error, Result};

use super::{bad_dtype, dtype_code, fits_u32, groups_1d, numel, quant_offsets, Dispatch, Recorder};
use crate::pipelines::{PipeKey, Shader};

const OP: &str = "matmul";
/// Most tokens the matrix-vector kernel takes (MAXN in matmul.wgsl).
const MATVEC_MAX_N: usize = 8;
/// Invocations per weight row in the matrix-vector kernel (16 and 32 measured best on
/// lavapipe for k = 576..1536; 64 left most lanes idle and cost more barriers).
const TPR: usize = 32;
/// Rows per workgroup of the row-per-invocation matrix-vector kernel.
const RWG: usize = 64;

pub(crate) fn record(r: &mut Recorder, op: &Matmul) -> Result<()> {
    let code = dtype_code(op.wdtype)
        .ok_or_else(|| bad_dtype(OP, "w", "f32/f16/bf16/q8_0/q4_0/q4_1", op.wdtype))?;
    let (n, k, m) = (op.n, op.k, op.m);
    let x_len = numel(OP, &[n, k])?;
    let w_len = numel(OP, &[m, k])?;
    let out_len = numel(OP, &[n, m])?;
    let x = r.buf(OP, "x", op.x, DType::F32, x_len)?;
    let w = r.table.check(OP, "w", op.w, op.wdtype, w_len)?;
    let bias = match op.bias {
        Some(b) => Some(r.buf(OP, "bias", b, DType::F32, m)?),
        None => None,
    };
    let out = r.buf(OP, "out", op.out, DType::F32, out_len)?;
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
    let native = op.wdtype == DType::F16 && r.uses_f16;
    let shader = if native {
        Shader::MatmulF16Native
    } else {
        Shader::Matmul
    };
    let matvec = n <= MATVEC_MAX_N;
    // Rows of whole blocks (and so every part of a split weight) take the row-per-invocation
    // kernel.
    let rows_kernel = matvec && !native && k % 32 == 0;
    let entry = match (matvec, rows_kernel) {
        (_, true) => "matvec_rows",
        (true, false) => "matvec",
        (false, _) => "tiled",
    };
    let mut pipe = PipeKey::new(shader, entry);
    if !native {
        pipe = pipe.with("DTYPE", code);
    }
    if rows_kernel {
        pipe = pipe.with("RWG", RWG as u32);
    } else if matvec {
        pipe = pipe.with("TPR", TPR as u32);
    }
    for part in &w.parts {
        let rows = if w.parts.len() == 1 { m } else { part.rows };
        if part.row0 >= m {
            continue;
        }
        let rows = rows.min(m - part.row0);
        let (d_off, m_off) = quant_offsets(
            op.wdtype,
            if w.parts.len() == 1 {
                w.numel
            } else {
                part.rows * k
            },
        );
        let params = vec![
            n as u32,
            k as u32,
            rows as u32,
            m as u32,
            part.row0 as u32,
            bias.is_some() as u32,
            d_off,
            m_off,
        ];
        // Without a bias the binding still needs a buffer: x is read-only too.
        let bufs = vec![
            x.clone(),
            (part.gpu.uid, part.gpu.buffer.clone()),
            bias.clone().unwrap_or_else(|| x.clone()),
            out.clone(),
        ];
        let groups = if rows_kernel {
            let [x, y, _] = groups_1d(rows, RWG);
            [x, y, n as u32]
        } else if matvec {
            let [x, y, _] = groups_1d(rows, 256 / TPR);
            [x, y, n as u32]
        } else {
            tiled_groups(rows, n)?
        };
        r.out.push(Dispatch {
            pipe: pipe.clone(),
            bufs,
            params,
            groups,
        });
    }
    Ok(())
}

fn tiled_groups(rows: usize, n: usize) -> Result<[u32; 3]> {
    let (x, y) = (rows.div_ceil(64), n.div_ceil(64));
    if x > 65535 || y > 65535 {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: "m and n below 64 * 65535".into(),
            got: format!("m {rows}, n {n}"),
        });
    }
    Ok([x as u32, y as u32, 1])
}
