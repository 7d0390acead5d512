//! One file per op: each checks its op against its buffers (as the CPU backend checks them)
//! and records its kernel launches.

use tandem_core::ops::Op;
use tandem_core::{DType, Result};

use crate::launch::Recorder;

mod attention;
mod elementwise;
mod embed;
mod kv_write;
mod matmul;
mod rms_norm;
mod sample;

pub(crate) use attention::{decode_scratch_floats, DECODE_HD_MAX, PREFILL_HD_MAX};
pub(crate) use matmul::tensor_cores;

pub(crate) fn record(r: &mut Recorder, op: &Op) -> Result<()> {
    match op {
        Op::Embed(o) => embed::record(r, o),
        Op::RmsNorm(o) => rms_norm::record(r, o),
        Op::Matmul(o) => matmul::record(r, o),
        Op::Rope(o) => elementwise::rope(r, o),
        Op::KvWrite(o) => kv_write::record(r, o),
        Op::Attention(o) => attention::record(r, o),
        Op::Swiglu(o) => elementwise::swiglu(r, o),
        Op::Add(o) => elementwise::add(r, o),
        Op::Argmax(o) => elementwise::argmax(r, o),
        Op::Sample(o) => sample::record(r, o),
        Op::CopyRows(o) => elementwise::copy_rows(r, o),
    }
}

/// What a step needs beyond its buffers: dyn slots, and bytes of scratch (attention-decode
/// partials, or the bf16 operands of tensor-core products when `tc`: ops use it one after
/// the other on the one stream, so they share it).
pub(crate) fn step_memory(table: &crate::buffers::Table, ops: &[Op], tc: bool) -> (usize, usize) {
    let (mut slots, mut scratch) = (0, 0);
    for op in ops {
        slots += dyn_slots(op);
        if let (Op::Matmul(m), true) = (op, tc) {
            if matmul::tensor_cores(m) {
                scratch = scratch.max(matmul::tc_scratch_bytes(m));
            }
        }
        if let Op::Attention(a) = op {
            let table_numel = table.get(a.block_table).map_or(0, |e| e.numel);
            scratch = scratch.max(decode_scratch_floats(a, table_numel).saturating_mul(4));
        }
    }
    (slots, scratch)
}

/// Per-step values an op's kernels read from device memory rather than from their arguments
/// (so a captured graph stays valid when they change): how many dyn slots it uses.
pub(crate) fn dyn_slots(op: &Op) -> usize {
    match op {
        Op::Attention(_) | Op::Sample(_) => 1,
        _ => 0,
    }
}

/// A weight dtype's index into every weight kernel's entry list ([`weight_entries!`]):
/// f32, f16, bf16, q8_0, q4_0, q4_1. `None` for types no weight kernel reads.
pub(crate) fn weight_index(d: DType) -> Option<usize> {
    match d {
        DType::F32 => Some(0),
        DType::F16 => Some(1),
        DType::BF16 => Some(2),
        DType::Q8_0 => Some(3),
        DType::Q4_0 => Some(4),
        DType::Q4_1 => Some(5),
        _ => None,
    }
}

/// The six entry names of a weight kernel, in [`weight_index`] order.
macro_rules! weight_entries {
    ($prefix:literal) => {
        [
            concat!($prefix, "_f32"),
            concat!($prefix, "_f16"),
            concat!($prefix, "_bf16"),
            concat!($prefix, "_q8_0"),
            concat!($prefix, "_q4_0"),
            concat!($prefix, "_q4_1"),
        ]
    };
}
pub(crate) use weight_entries;

/// Byte offsets of the d and m sections of a quantized tensor of `numel` elements (0 else).
pub(crate) fn quant_offsets(d: DType, numel: usize) -> (u64, u64) {
    d.quant_layout(numel).map_or((0, 0), |l| (l.d_offset as u64, l.m_offset as u64))
}

/// The weight kernels' dtype list for messages.
pub(crate) const WEIGHT_DTYPES: &str = "f32/f16/bf16/q8_0/q4_0/q4_1";
