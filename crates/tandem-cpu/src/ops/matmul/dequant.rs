//! Dequantization: a weight's elements as f32 with the reference formulas, a block at a time.

use half::slice::HalfFloatSliceExt;
use tandem_core::dtype::bf16_to_f32;
use tandem_core::{DType, QBLOCK};

use crate::table::Weight;

/// dst[j] = w[start + j], with the exact formula of `QuantView::get`, a block at a time;
/// `start` need not be block aligned.
#[inline(always)]
pub(crate) fn dequant_into(w: Weight, start: usize, dst: &mut [f32]) {
    match w {
        Weight::F32(v) => dst.copy_from_slice(&v[start..start + dst.len()]),
        Weight::F16(v) => v[start..start + dst.len()].convert_to_f32_slice(dst),
        Weight::BF16(v) => {
            let len = dst.len();
            for (o, &b) in dst.iter_mut().zip(&v[start..start + len]) {
                *o = bf16_to_f32(b);
            }
        }
        Weight::Blocks(b) => b.decode_range(start, dst),
        Weight::Q(q) => {
            let end = start + dst.len();
            let mut e = start;
            while e < end {
                let b = e / QBLOCK;
                let seg_end = end.min((b + 1) * QBLOCK);
                let d = q.d[b].to_f32();
                let seg = &mut dst[e - start..seg_end - start];
                match q.dtype {
                    DType::Q8_0 => {
                        for (o, &v) in seg.iter_mut().zip(&q.qs[e..seg_end]) {
                            *o = d * (v as i8) as f32;
                        }
                    }
                    DType::Q4_0 => {
                        for (j, o) in seg.iter_mut().enumerate() {
                            *o = d * (nibble(q.qs, e + j) as f32 - 8.0);
                        }
                    }
                    _ => {
                        let mn = q.m[b].to_f32();
                        for (j, o) in seg.iter_mut().enumerate() {
                            *o = d * nibble(q.qs, e + j) as f32 + mn;
                        }
                    }
                }
                e = seg_end;
            }
        }
    }
}

#[inline(always)]
fn nibble(qs: &[u8], e: usize) -> u8 {
    let byte = qs[e / 2];
    (byte >> ((e & 1) * 4)) & 0x0f
}
