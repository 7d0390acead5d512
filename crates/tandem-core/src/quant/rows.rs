//! Rows of stored tensors cut out and laid together, in any dtype: how a fused projection is
//! split (Phi-3's qkv_proj) and a stack of experts made of one tensor per expert.

use crate::dtype::{DType, QuantView, QBLOCK};

/// Rows start..start + rows of a [.., cols] tensor of `numel` elements of `dtype` stored in
/// `bytes`, as a tensor of its own; `None` when a row does not hold whole blocks of the dtype
/// (it cannot be cut there) or the rows are not all there.
pub fn slice_rows(
    dtype: DType,
    bytes: &[u8],
    numel: usize,
    cols: usize,
    start: usize,
    rows: usize,
) -> Option<Vec<u8>> {
    stack_rows(dtype, &[(bytes, numel, start * cols, (start + rows) * cols)], cols)
}

/// Pieces of tensors of `dtype` laid one after another as one tensor: each part is (bytes,
/// the stored tensor's element count, first element, end element), cut between rows of
/// `cols` elements. `None` when a cut falls inside a block or outside its tensor.
pub fn stack_rows(
    dtype: DType,
    parts: &[(&[u8], usize, usize, usize)],
    cols: usize,
) -> Option<Vec<u8>> {
    let per = dtype.block_elems();
    let bad = |&(b, n, a, e): &(&[u8], usize, usize, usize)| {
        a > e || e > n || b.len() != dtype.storage_bytes(n) || !a.is_multiple_of(per)
    };
    if !cols.is_multiple_of(per) || parts.iter().any(bad) {
        return None;
    }
    let total: usize = parts.iter().map(|&(_, _, a, e)| e - a).sum();
    let mut out = vec![0u8; dtype.storage_bytes(total)];
    match dtype {
        DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => {
            // Sections (every quant, then every scale, then every minimum): each part's
            // pieces go into the sections of the whole.
            let l = dtype.quant_layout(total)?;
            let q_bytes = |n: usize| if dtype == DType::Q8_0 { n } else { n / 2 };
            let (mut qs, mut blk) = (0, 0);
            for &(b, n, a, e) in parts {
                let v = QuantView::new(dtype, n, b);
                let (a_blk, e_blk) = (a / QBLOCK, e / QBLOCK);
                let q = &v.qs[q_bytes(a)..q_bytes(e)];
                out[qs..qs + q.len()].copy_from_slice(q);
                qs += q.len();
                let d: &[u8] = bytemuck::cast_slice(&v.d[a_blk..e_blk]);
                out[l.d_offset + 2 * blk..][..d.len()].copy_from_slice(d);
                if dtype == DType::Q4_1 {
                    let m: &[u8] = bytemuck::cast_slice(&v.m[a_blk..e_blk]);
                    out[l.m_offset + 2 * blk..][..m.len()].copy_from_slice(m);
                }
                blk += e_blk - a_blk;
            }
        }
        _ => {
            // Elements (floats) or whole blocks, contiguous: bytes per `per` elements.
            let (unit, unit_bytes) = match dtype.block_layout() {
                Some(l) => (l.elems, l.stride),
                None => (1, if matches!(dtype, DType::F16 | DType::BF16) { 2 } else { 4 }),
            };
            let mut at = 0;
            for &(b, _, a, e) in parts {
                let piece = &b[a / unit * unit_bytes..e / unit * unit_bytes];
                out[at..at + piece.len()].copy_from_slice(piece);
                at += piece.len();
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{decode, encode};

    /// Stacking two tensors and slicing the rows back gives each one's values, in every dtype
    /// tandem quantizes to.
    #[test]
    fn stacked_rows_slice_back() {
        let cols = 64;
        let a: Vec<f32> = (0..3 * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..2 * cols).map(|i| (i as f32 * 0.91).cos()).collect();
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1] {
            let (ea, eb) = (encode(&a, dtype), encode(&b, dtype));
            let parts = [(&ea[..], a.len(), 0, a.len()), (&eb[..], b.len(), 0, b.len())];
            let both = stack_rows(dtype, &parts, cols).unwrap();
            let n = a.len() + b.len();
            let mut want = decode(&ea, dtype, a.len());
            want.extend(decode(&eb, dtype, b.len()));
            assert_eq!(decode(&both, dtype, n), want, "{dtype} stacked");
            let mid = slice_rows(dtype, &both, n, cols, 2, 2).unwrap();
            assert_eq!(decode(&mid, dtype, 2 * cols), want[2 * cols..4 * cols], "{dtype} sliced");
        }
        assert!(slice_rows(DType::Q8_0, &encode(&a, DType::Q8_0), a.len(), 48, 0, 1).is_none());
    }
}
