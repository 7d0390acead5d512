//! The small ops: rope, swiglu, geglu, softcap, add, argmax, mask_logits, copy_rows (one dispatch each, one
//! invocation per element or one workgroup per row).

use tandem_core::ops::{Add, Argmax, CopyRows, Geglu, MaskLogits, Rope, Softcap, Swiglu};
use tandem_core::{BufId, Error, Result};

use super::{fits_u32, groups_1d, Recorder};
use crate::pipelines::{PipeKey, Shader};

pub(crate) fn rope(r: &mut Recorder, op: &Rope) -> Result<()> {
    const OP: &str = "rope";
    let len = op.n * op.heads * op.head_dim;
    let half = op.rot_dim / 2;
    let x = r.buf(OP, "x", op.x)?;
    let pos = r.buf(OP, "positions", op.positions)?;
    let inv = r.buf(OP, "inv_freq", op.inv_freq)?;
    let pairs = op.n * op.heads * half;
    if pairs == 0 {
        return Ok(());
    }
    fits_u32(OP, "n * heads * head_dim", len)?;
    r.push(
        PipeKey::new(Shader::Rope, "main"),
        vec![x, pos, inv],
        vec![pairs as u32, op.heads as u32, half as u32, op.head_dim as u32, op.scale.to_bits()],
        groups_1d(pairs, 256),
    );
    Ok(())
}

pub(crate) fn swiglu(r: &mut Recorder, op: &Swiglu) -> Result<()> {
    glu(r, ("swiglu", Shader::Swiglu), [op.gate, op.up, op.out], op.len)
}

pub(crate) fn geglu(r: &mut Recorder, op: &Geglu) -> Result<()> {
    glu(r, ("geglu", Shader::Geglu), [op.gate, op.up, op.out], op.len)
}

/// A gated activation: out = act(gate) * up over `len` elements, the act the shader's.
fn glu(
    r: &mut Recorder,
    (name, shader): (&'static str, Shader),
    bufs: [BufId; 3],
    len: usize,
) -> Result<()> {
    let gate = r.buf(name, "gate", bufs[0])?;
    let up = r.buf(name, "up", bufs[1])?;
    let out = r.buf(name, "out", bufs[2])?;
    if len == 0 {
        return Ok(());
    }
    let n = fits_u32(name, "len", len)?;
    r.push(PipeKey::new(shader, "main"), vec![gate, up, out], vec![n], groups_1d(len, 256));
    Ok(())
}

pub(crate) fn softcap(r: &mut Recorder, op: &Softcap) -> Result<()> {
    const OP: &str = "softcap";
    let x = r.buf(OP, "x", op.x)?;
    if op.len == 0 {
        return Ok(());
    }
    let len = fits_u32(OP, "len", op.len)?;
    r.push(
        PipeKey::new(Shader::Softcap, "main"),
        vec![x],
        vec![len, op.cap.to_bits()],
        groups_1d(op.len, 256),
    );
    Ok(())
}

pub(crate) fn add(r: &mut Recorder, op: &Add) -> Result<()> {
    const OP: &str = "add";
    let x = r.buf(OP, "x", op.x)?;
    let y = r.buf(OP, "y", op.y)?;
    if op.len == 0 {
        return Ok(());
    }
    let len = fits_u32(OP, "len", op.len)?;
    r.push(PipeKey::new(Shader::Add, "main"), vec![x, y], vec![len], groups_1d(op.len, 256));
    Ok(())
}

pub(crate) fn argmax(r: &mut Recorder, op: &Argmax) -> Result<()> {
    const OP: &str = "argmax";
    let len = op.n * op.width;
    let x = r.buf(OP, "x", op.x)?;
    let out = r.buf(OP, "out", op.out)?;
    r.written_u32.push(op.out);
    if op.n == 0 {
        return Ok(());
    }
    fits_u32(OP, "n * width", len)?;
    if op.n > 65535 {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: "n <= 65535 rows".into(),
            got: op.n.to_string(),
        });
    }
    r.push(
        PipeKey::new(Shader::Argmax, "main"),
        vec![x, out],
        vec![op.width as u32],
        [op.n as u32, 1, 1],
    );
    Ok(())
}

pub(crate) fn mask_logits(r: &mut Recorder, op: &MaskLogits) -> Result<()> {
    const OP: &str = "mask_logits";
    let x = r.buf(OP, "x", op.x)?;
    let rows = r.buf(OP, "rows", op.rows)?;
    let mask = r.buf(OP, "mask", op.mask)?;
    r.table
        .get(op.rows)
        .expect("checked")
        .shadow
        .check_indices(OP, "rows", op.n, op.x_rows, "x_rows")?;
    if op.n == 0 || op.width == 0 {
        return Ok(());
    }
    fits_u32(OP, "x_rows * width", op.x_rows * op.width)?;
    if op.n > 65535 || op.width.div_ceil(256) > 65535 {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: "n <= 65535 rows of at most 65535 * 256 logits".into(),
            got: format!("n = {}, width = {}", op.n, op.width),
        });
    }
    r.push(
        PipeKey::new(Shader::MaskLogits, "main"),
        vec![x, rows, mask],
        vec![op.n as u32, op.width as u32, op.words() as u32, f32::NEG_INFINITY.to_bits()],
        [op.width.div_ceil(256) as u32, op.n as u32, 1],
    );
    Ok(())
}

pub(crate) fn copy_rows(r: &mut Recorder, op: &CopyRows) -> Result<()> {
    const OP: &str = "copy_rows";
    let src_len = op.src_row.saturating_add(op.n_rows) * op.width;
    let dst_len = op.dst_row.saturating_add(op.n_rows) * op.width;
    let len = op.n_rows * op.width;
    let src = r.buf(OP, "src", op.src)?;
    let dst = r.buf(OP, "dst", op.dst)?;
    if len == 0 {
        return Ok(());
    }
    fits_u32(OP, "src rows * width", src_len)?;
    fits_u32(OP, "dst rows * width", dst_len)?;
    r.push(
        PipeKey::new(Shader::CopyRows, "main"),
        vec![src, dst],
        vec![(op.src_row * op.width) as u32, (op.dst_row * op.width) as u32, len as u32],
        groups_1d(len, 256),
    );
    Ok(())
}
