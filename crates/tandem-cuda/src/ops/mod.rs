//! One file per op: each checks its op against its buffers (as the CPU backend checks them)
//! and records its kernel launches.

use std::ops::Range;

use tandem_core::ops::{Matmul, Op};
use tandem_core::quant::kv::fp8_scales;
use tandem_core::{DType, Result};

use crate::launch::Recorder;

pub(crate) mod attention;
mod elementwise;
mod embed;
mod hadamard;
mod kv_write;
mod lora;
mod matmul;
mod moe;
mod rms_norm;
mod sample;

#[cfg(test)]
pub(crate) use attention::{decode_grid, part_len};
pub(crate) use attention::{decode_scratch_floats, DECODE_HD_MAX, PREFILL_HD_MAX};
pub(crate) use hadamard::MAX_SIZE as HADAMARD_MAX_SIZE;
pub(crate) use matmul::tensor_cores;
#[cfg(test)]
pub(crate) use matmul::TC_ROWS;
pub(crate) use moe::MAX_EXPERTS as MOE_MAX_EXPERTS;

/// Byte offset of the scales in a quantized KV cache of `numel` elements in heads of
/// `head_dim` values: q8_0's and q4_0's f16s (the split layout of [`DType::quant_layout`]),
/// fp8's f32s ([`fp8_scales`]); 0 for the float caches, whose kernels ignore it.
pub(crate) fn kv_scales(dtype: DType, numel: usize, kv_heads: usize, head_dim: usize) -> u64 {
    if dtype == DType::F8E4M3 {
        return fp8_scales(numel, kv_heads, head_dim) as u64;
    }
    dtype.quant_layout(numel).map_or(0, |l| l.d_offset as u64)
}

pub(crate) fn record(r: &mut Recorder, op: &Op) -> Result<()> {
    match op {
        Op::Embed(o) => embed::record(r, o),
        Op::RmsNorm(o) => rms_norm::record(r, o),
        Op::Matmul(o) => matmul::record(r, o),
        Op::Rope(o) => elementwise::rope(r, o),
        Op::KvWrite(o) => kv_write::record(r, o),
        Op::Attention(o) => attention::record(r, o),
        Op::Swiglu(o) => elementwise::swiglu(r, o),
        Op::Geglu(o) => elementwise::geglu(r, o),
        Op::Softcap(o) => elementwise::softcap(r, o),
        Op::Hadamard(o) => hadamard::record(r, o),
        Op::MaskLogits(o) => elementwise::mask_logits(r, o),
        Op::MoeRoute(o) => moe::route(r, o),
        Op::MoeSum(o) => moe::sum(r, o),
        Op::MoeMatmul(o) => moe::matmul(r, o),
        Op::Add(o) => elementwise::add(r, o),
        Op::Argmax(o) => elementwise::argmax(r, o),
        Op::Sample(o) => sample::record(r, o),
        Op::CopyRows(o) => elementwise::copy_rows(r, o),
        Op::LoraShrink(o) => lora::shrink(r, o),
        Op::LoraExpand(o) => lora::expand(r, o),
    }
}

/// Records a step's ops in order, each group the model recorded ([`tandem_core::Step::groups`]:
/// q, k and v; gate and up; checked by the engine) as runs of products sharing a decode launch
/// where the kernel takes them (see `matmul::fusable`), the other ops one by one.
pub(crate) fn record_all(r: &mut Recorder, ops: &[Op], groups: &[Range<usize>]) -> Result<()> {
    let (mut i, mut groups) = (0, groups.iter().peekable());
    while i < ops.len() {
        let Some(g) = groups.next_if(|g| g.start == i) else {
            record(r, &ops[i])?;
            i += 1;
            continue;
        };
        let mut run: Vec<&Matmul> = Vec::with_capacity(3);
        for op in &ops[g.clone()] {
            let Op::Matmul(m) = op else { unreachable!("a group holds matmuls only") };
            if run.len() == 3 || run.first().is_some_and(|first| !matmul::fusable(first, m)) {
                matmul::record_run(r, &run)?;
                run.clear();
            }
            run.push(m);
        }
        matmul::record_run(r, &run)?;
        i = g.end;
    }
    Ok(())
}

/// Bytes of scratch a step needs beyond its buffers: attention-decode partials, and the
/// operands of tensor-core products when `tc` (ops use it one after the other on the one
/// stream, so they share it).
pub(crate) fn scratch_bytes(ops: &[Op], tc: bool) -> usize {
    let mut scratch = 0;
    for op in ops {
        match op {
            Op::Matmul(m) if tc && matmul::tensor_cores(m) => {
                scratch = scratch.max(matmul::tc_scratch_bytes(m))
            }
            Op::Attention(a) => scratch = scratch.max(decode_scratch_floats(a).saturating_mul(4)),
            _ => {}
        }
    }
    scratch
}

/// A weight dtype's index into every weight kernel's entry list ([`weight_entries!`]): its
/// [`DType::kernel_code`], the number kernels/common.cuh gives it as `DT_*`. `None` for types
/// no weight kernel reads.
pub(crate) fn weight_index(d: DType) -> Option<usize> {
    d.kernel_code().filter(|_| d.is_weight()).map(|c| c as usize)
}

/// The entry names of a weight kernel, in [`DType::kernel_code`] order: the six tandem types
/// (bf16 last of them), then the GGUF block types, which only the element-wise kernels (embed,
/// matmul_prefill, matmul_decode_any) and matmul_decode_kq have.
macro_rules! weight_entries {
    ($prefix:literal) => {
        [
            concat!($prefix, "_f32"),
            concat!($prefix, "_f16"),
            concat!($prefix, "_q8_0"),
            concat!($prefix, "_q4_0"),
            concat!($prefix, "_q4_1"),
            concat!($prefix, "_bf16"),
            concat!($prefix, "_q4_k"),
            concat!($prefix, "_q6_k"),
            concat!($prefix, "_q5_0"),
            concat!($prefix, "_q5_1"),
            concat!($prefix, "_q5_k"),
            concat!($prefix, "_q2_k"),
            concat!($prefix, "_q3_k"),
            concat!($prefix, "_iq4_nl"),
            concat!($prefix, "_iq4_xs"),
        ]
    };
}
pub(crate) use weight_entries;

/// Byte offsets of the d and m sections of a quantized tensor of `numel` elements (0 else).
pub(crate) fn quant_offsets(d: DType, numel: usize) -> (u64, u64) {
    d.quant_layout(numel).map_or((0, 0), |l| (l.d_offset as u64, l.m_offset as u64))
}

/// The weight kernels' dtype list for messages.
pub(crate) const WEIGHT_DTYPES: &str =
    "f32/f16/bf16/q8_0/q4_0/q4_1/q5_0/q5_1/q2_k/q3_k/q4_k/q5_k/q6_k/iq4_nl/iq4_xs";
