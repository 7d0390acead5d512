//! The conformance cases: deterministic (seeded per op), odd sizes, every weight and KV dtype,
//! random non-contiguous block tables with NaN poison in every cache row outside the context.

use tandem_core::ops::*;
use tandem_core::quant::encode;
use tandem_core::{BufId, DType};

use crate::harness::Tol;
use crate::rng::Rng;

mod attention;
mod lora;
mod matmul;
mod moe;
mod rows;
mod sample;

pub use attention::AttnBatch;

/// Every op the suite covers, by the name shared with kernels and tests.
pub const OPS: [&str; 21] = [
    "embed",
    "rms_norm",
    "matmul",
    "rope",
    "kv_write",
    "attention_prefill",
    "attention_decode",
    "swiglu",
    "geglu",
    "softcap",
    "hadamard",
    "moe_route",
    "moe_matmul",
    "moe_sum",
    "add",
    "argmax",
    "sample",
    "mask_logits",
    "copy_rows",
    "lora_shrink",
    "lora_expand",
];

pub const WEIGHT_DTYPES: [DType; 6] =
    [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1];
/// The GGUF block types: their cases come after every other dtype's, so the other dtypes'
/// cases draw the same random streams with or without them.
pub use tandem_core::dtype::BLOCK_DTYPES;

/// Every weight dtype, block types last.
fn all_weight_dtypes() -> impl Iterator<Item = DType> {
    WEIGHT_DTYPES.into_iter().chain(BLOCK_DTYPES)
}

/// `numel` weights of `dtype`: `v` values of scale `scale` encoded, or for a GGUF block type
/// (which tandem does not quantize to) random blocks: random bits everywhere, padding
/// included (kernels must ignore it), with finite f16 scales of either sign in [1e-3, 1e-2).
fn weights(rng: &mut Rng, numel: usize, scale: f32, dtype: DType) -> Vec<u8> {
    let Some(l) = dtype.block_layout() else {
        return encode(&rng.vec(numel, scale), dtype);
    };
    let mut bytes: Vec<u8> =
        (0..dtype.storage_bytes(numel)).map(|_| rng.next_u64() as u8).collect();
    for blk in bytes.chunks_exact_mut(l.stride) {
        for &f in tandem_core::quant::blocks::f16_fields(dtype) {
            let v = (1e-3 + 9e-3 * rng.unit()) * if rng.below(2) == 0 { 1.0 } else { -1.0 };
            blk[f..f + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    bytes
}
pub const KV_DTYPES: [DType; 2] = [DType::F32, DType::F16];
/// The quantized KV dtypes: their cases come after the float ones'.
pub use tandem_core::quant::kv::KV_QUANT;

pub enum Init {
    /// Bytes written at the start of the buffer.
    Data(Vec<u8>),
    /// All bits set: NaN as f32/f16, 0xFFFFFFFF as u32. Outputs start like this so that an
    /// element a backend forgets to write fails the comparison.
    Poison,
}

pub struct BufSpec {
    pub dtype: DType,
    pub numel: usize,
    pub init: Init,
}

/// One op on freshly allocated buffers. `op` names buffers by their index in `bufs`
/// (`BufId(i)`); `checks` lists the buffers compared after the run and how.
pub struct Case {
    pub name: String,
    pub bufs: Vec<BufSpec>,
    pub op: Op,
    pub checks: Vec<(usize, Tol)>,
}

#[derive(Default)]
struct Bufs(Vec<BufSpec>);

impl Bufs {
    fn add(&mut self, dtype: DType, numel: usize, init: Init) -> BufId {
        self.0.push(BufSpec { dtype, numel, init });
        BufId(self.0.len() as u32 - 1)
    }
    fn f32(&mut self, v: &[f32]) -> BufId {
        self.add(DType::F32, v.len(), Init::Data(bytemuck::cast_slice(v).to_vec()))
    }
    fn u32(&mut self, v: &[u32]) -> BufId {
        self.add(DType::U32, v.len(), Init::Data(bytemuck::cast_slice(v).to_vec()))
    }
    fn encoded(&mut self, v: &[f32], dtype: DType) -> BufId {
        self.add(dtype, v.len(), Init::Data(encode(v, dtype)))
    }
    fn poison(&mut self, dtype: DType, numel: usize) -> BufId {
        self.add(dtype, numel, Init::Poison)
    }
    fn case(self, name: String, op: Op, checks: &[(BufId, Tol)]) -> Case {
        Case {
            name,
            bufs: self.0,
            op,
            checks: checks.iter().map(|(b, t)| (b.0 as usize, *t)).collect(),
        }
    }
}

/// The cases of one op ("attention_prefill" and "attention_decode" are separate lists).
pub fn cases_for(op: &str) -> Vec<Case> {
    // Seeded by op so adding cases to one op leaves the others unchanged.
    let seed = op.bytes().fold(0xC0FFEEu64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let rng = &mut Rng::new(seed);
    match op {
        "embed" => matmul::embed(rng),
        "rms_norm" => rows::rms_norm(rng),
        "matmul" => matmul::matmul(rng),
        "rope" => rows::rope(rng),
        "kv_write" => attention::kv_write(rng),
        "attention_prefill" => attention::attention(rng, false),
        "attention_decode" => attention::attention(rng, true),
        "swiglu" => rows::swiglu(rng),
        "geglu" => rows::geglu(rng),
        "softcap" => rows::softcap(rng),
        "hadamard" => rows::hadamard(rng),
        "moe_route" => moe::route(rng),
        "moe_matmul" => moe::matmul(rng),
        "moe_sum" => moe::sum(rng),
        "add" => rows::add(rng),
        "argmax" => sample::argmax(rng),
        "sample" => sample::sample(rng),
        "mask_logits" => sample::mask_logits(rng),
        "copy_rows" => rows::copy_rows(rng),
        "lora_shrink" => lora::shrink(rng),
        "lora_expand" => lora::expand(rng),
        _ => vec![],
    }
}

/// One op over a batch, and each of its requests alone: the rows each request gets inside the
/// batch must equal, bit for bit, what it gets alone (batch invariance).
pub struct Invariance {
    pub batch: Case,
    /// (the request alone, its first output row in the batch); outputs are f32 rows of
    /// `row_len` elements in the first checked buffer.
    pub alone: Vec<(Case, usize)>,
    pub row_len: usize,
}

/// The batch-invariance cases of "matmul", "attention", "moe_matmul" and "lora".
pub fn invariance_cases(op: &str) -> Vec<Invariance> {
    let rng = &mut Rng::new(0x1A7A);
    match op {
        "matmul" => matmul::matmul_invariance(rng),
        "moe_matmul" => moe::matmul_invariance(rng),
        "attention" => attention::attention_invariance(rng),
        "lora" => lora::invariance(rng),
        _ => vec![],
    }
}
