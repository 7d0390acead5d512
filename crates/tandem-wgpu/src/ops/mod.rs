//! Recording: each op, its operands checked by the engine, turned into dispatches; nothing
//! touches the GPU until the whole step is recorded.

use tandem_core::ops::Op;
use tandem_core::{BufId, DType, Error, Result};

use crate::buffers::{Gpu, Table};
use crate::pipelines::PipeKey;

mod attention;
mod elementwise;
mod embed;
mod hadamard;
mod kv_write;
mod lora;
mod matmul;
mod moe;
mod rms_norm;
mod sample;

pub(crate) use attention::{hd_max as attention_hd_max, scratch_floats as attention_scratch};
pub(crate) use hadamard::TILE as HADAMARD_TILE;

/// One compute dispatch: its pipeline, storage buffers (bindings 1..), uniform parameters.
pub(crate) struct Dispatch {
    pub pipe: PipeKey,
    pub bufs: Vec<(u64, wgpu::Buffer)>,
    pub params: Vec<u32>,
    pub groups: [u32; 3],
}

pub(crate) struct Recorder<'a> {
    pub table: &'a Table,
    pub uses_f16: bool,
    /// Decode rows of whole blocks take the row-per-invocation matrix-vector kernel (a CPU
    /// rasterizer's fastest) rather than the lanes-per-row one (coalesced: a GPU's).
    pub row_matvec: bool,
    /// Attention-decode partials, sized for the step before recording.
    pub scratch: &'a Gpu,
    pub out: Vec<Dispatch>,
    /// u32 buffers a kernel writes: their host copies go stale.
    pub written_u32: Vec<BufId>,
}

impl Recorder<'_> {
    pub fn record(&mut self, op: &Op) -> Result<()> {
        match op {
            Op::Embed(o) => embed::record(self, o),
            Op::RmsNorm(o) => rms_norm::record(self, o),
            Op::Matmul(o) => matmul::record(self, o),
            Op::Rope(o) => elementwise::rope(self, o),
            Op::KvWrite(o) => kv_write::record(self, o),
            Op::Attention(o) => attention::record(self, o),
            Op::Swiglu(o) => elementwise::swiglu(self, o),
            Op::Geglu(o) => elementwise::geglu(self, o),
            Op::Softcap(o) => elementwise::softcap(self, o),
            Op::Hadamard(o) => hadamard::record(self, o),
            Op::MoeRoute(o) => moe::route(self, o),
            Op::MoeMatmul(o) => moe::matmul(self, o),
            Op::MoeSum(o) => moe::sum(self, o),
            Op::Add(o) => elementwise::add(self, o),
            Op::Argmax(o) => elementwise::argmax(self, o),
            Op::CopyRows(o) => elementwise::copy_rows(self, o),
            Op::Sample(o) => sample::record(self, o),
            Op::MaskLogits(o) => elementwise::mask_logits(self, o),
            Op::LoraShrink(o) => lora::shrink(self, o),
            Op::LoraExpand(o) => lora::expand(self, o),
        }
    }

    /// The single buffer of `id`, an operand the engine checked.
    pub fn buf(&self, op: &'static str, role: &str, id: BufId) -> Result<(u64, wgpu::Buffer)> {
        let e = self.table.entry(op, role, id)?;
        let g = e.whole().expect("checked: unsplit");
        Ok((g.uid, g.buffer.clone()))
    }

    pub fn push(
        &mut self,
        pipe: PipeKey,
        bufs: Vec<(u64, wgpu::Buffer)>,
        params: Vec<u32>,
        groups: [u32; 3],
    ) {
        self.out.push(Dispatch { pipe, bufs, params, groups });
    }
}

/// Workgroups for `total` invocations in groups of `wg`, folded into y above 65535 in x
/// (kernels compute their index as (wid.x + wid.y * nwg.x) * WG + lid).
pub(crate) fn groups_1d(total: usize, wg: usize) -> [u32; 3] {
    let g = total.div_ceil(wg).max(1);
    if g <= 65535 {
        [g as u32, 1, 1]
    } else {
        let y = g.div_ceil(65535);
        [g.div_ceil(y) as u32, y as u32, 1]
    }
}

/// Shapes beyond what 32-bit shader indexing can address.
pub(crate) fn fits_u32(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::ShapeMismatch {
        op,
        expected: format!("{what} < 2^32"),
        got: v.to_string(),
    })
}

pub(crate) fn bad_dtype(op: &'static str, role: &str, allowed: &str, got: DType) -> Error {
    Error::ShapeMismatch {
        op,
        expected: format!("{role} of dtype {allowed}"),
        got: got.to_string(),
    }
}

/// The weight dtypes [`dtype_code`] maps, as the embed and matmul errors list them.
pub(crate) const WEIGHT_DTYPES: &str =
    "f32/f16/bf16/q8_0/q4_0/q4_1/q5_0/q5_1/q2_k/q3_k/q4_k/q5_k/q6_k/iq4_nl/iq4_xs";

/// The DTYPE override constant of embed.wgsl and matmul.wgsl: [`DType::kernel_code`].
pub(crate) fn dtype_code(d: DType) -> Option<u32> {
    d.kernel_code()
}

/// The word offset of a `d` KV cache's scales (`numel` elements of `kv_heads` heads of
/// `head_dim` values): after the codes, as [`quant_offsets`] for q8_0 and q4_0 and
/// [`fp8_scales`](tandem_core::quant::kv::fp8_scales) for fp8; 0 for f32 and f16.
pub(crate) fn kv_scales(d: DType, numel: usize, kv_heads: usize, head_dim: usize) -> u32 {
    if d == DType::F8E4M3 {
        (tandem_core::quant::kv::fp8_scales(numel, kv_heads, head_dim) / 4) as u32
    } else {
        quant_offsets(d, numel).0
    }
}

/// Word offsets of the d and m sections of a quantized part of `numel` elements (0 otherwise).
pub(crate) fn quant_offsets(d: DType, numel: usize) -> (u32, u32) {
    d.quant_layout(numel).map_or((0, 0), |l| ((l.d_offset / 4) as u32, (l.m_offset / 4) as u32))
}
