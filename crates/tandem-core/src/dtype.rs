//! Element types of backend buffers, and tandem's own quantized block formats.
//!
//! Quantized tensors are stored structure-of-arrays, blocked over the *flattened* row-major
//! element index in blocks of [`QBLOCK`] = 32 elements: first every quant (`qs`), then every
//! block scale (`d`, f16), then for Q4_1 every block minimum (`m`, f16). Each section starts on
//! a 4-byte boundary so GPU kernels can read it as `u32` words. Blocking the flat index (rather
//! than each row) keeps q8 at exactly 8.5 and q4_1 at exactly 5 bits per weight even when a
//! row length is not a multiple of 32 (stories260K's FFN is 172 wide); a kernel finds the
//! scale of element `e` at `d[e / 32]`.
//!
//! - `Q8_0`: `qs` is one i8 per element; x = d * q.
//! - `Q4_0`: `qs` packs two elements per byte, element `e` in byte `e / 2`, low nibble for even
//!   `e`; x = d * (q - 8).
//! - `Q4_1`: as Q4_0 for `qs`; x = d * q + m.
//!
//! The element count is padded with zeros up to a whole block.
//!
//! The GGUF types llama.cpp's K-quant files mix in (Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL, IQ4_XS)
//! are kept instead as ggml's own blocks, array of structs, each padded to a 4-byte multiple:
//! see [`crate::quant::blocks`] for the layout and the one formula every kernel computes.
//!
//! `F16` and `BF16` are plain row-major 2-byte floats (BF16 is the top half of an f32, so a
//! kernel widens it with a 16-bit shift: [`bf16_to_f32`]).

use half::f16;

/// Elements per quantization block.
pub const QBLOCK: usize = 32;

// The GGUF block types keep ggml's spelling (Q4_K, IQ4_XS), as users read it in file listings.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    /// bfloat16: the high 16 bits of an f32 (8 exponent bits, 7 mantissa bits).
    BF16,
    U32,
    Q8_0,
    Q4_0,
    Q4_1,
    // GGUF block types (see `crate::quant::blocks`), named as ggml names them.
    Q5_0,
    Q5_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    IQ4_NL,
    IQ4_XS,
    /// fp8 e4m3 (OCP's e4m3fn: 4 exponent bits, 3 mantissa bits, largest 448, no infinities):
    /// a KV cache type only, each head's vector of codes with an f32 scale beside them
    /// ([`crate::quant::kv`]). A buffer of it counts bytes, codes and scales alike.
    F8E4M3,
}

/// Every dtype kept as GGUF blocks (see [`crate::quant::blocks`]).
pub const BLOCK_DTYPES: [DType; 9] = [
    DType::Q5_0,
    DType::Q5_1,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::IQ4_NL,
    DType::IQ4_XS,
];

/// Geometry of a GGUF block type in tandem's buffers: ggml's block of `ggml_bytes` with
/// `stride - ggml_bytes` zero bytes inserted at byte `pad_at`, so that every block, and every
/// multi-byte field inside it, starts on a 4-byte boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLayout {
    /// Elements per block.
    pub elems: usize,
    /// Bytes of one block in a GGUF file.
    pub ggml_bytes: usize,
    /// Bytes of one block in tandem's buffers (a multiple of 4).
    pub stride: usize,
    /// Where the padding goes (meaningless when `stride == ggml_bytes`).
    pub pad_at: usize,
}

/// Byte offsets of the sections of a quantized tensor of `numel` elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantLayout {
    pub blocks: usize,
    pub qs_offset: usize,
    pub d_offset: usize,
    /// Only meaningful for Q4_1.
    pub m_offset: usize,
    pub total_bytes: usize,
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl DType {
    /// Whether a tensor of weights may be of this type: every float and quantized type, not
    /// u32 (indices) and not fp8 (a KV cache type only).
    pub fn is_weight(self) -> bool {
        !matches!(self, DType::U32 | DType::F8E4M3)
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Q8_0 | DType::Q4_0 | DType::Q4_1) || self.block_layout().is_some()
    }

    /// Elements of one block: 1 for the float types, 32 for Q8_0/Q4_0/Q4_1, the block of a
    /// GGUF block type. A tensor whose rows hold whole blocks can be cut between any rows.
    pub fn block_elems(self) -> usize {
        match self {
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => QBLOCK,
            d => d.block_layout().map_or(1, |l| l.elems),
        }
    }

    /// The block geometry of a GGUF block type; `None` for every other type.
    pub fn block_layout(self) -> Option<BlockLayout> {
        let (elems, ggml_bytes, stride, pad_at) = match self {
            // d (f16) is followed by 2 pad bytes, so qh (u32) and qs start word-aligned.
            DType::Q5_0 => (32, 22, 24, 2),
            DType::Q5_1 => (32, 24, 24, 24),
            DType::Q2_K => (256, 84, 84, 84),
            // d (f16) ends the block: pad after it.
            DType::Q3_K => (256, 110, 112, 110),
            DType::Q4_K => (256, 144, 144, 144),
            DType::Q5_K => (256, 176, 176, 176),
            DType::Q6_K => (256, 210, 212, 210),
            DType::IQ4_NL => (32, 18, 20, 2),
            DType::IQ4_XS => (256, 136, 136, 136),
            _ => return None,
        };
        Some(BlockLayout { elems, ggml_bytes, stride, pad_at })
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U32 => "u32",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q5_0 => "q5_0",
            DType::Q5_1 => "q5_1",
            DType::Q2_K => "q2_k",
            DType::Q3_K => "q3_k",
            DType::Q4_K => "q4_k",
            DType::Q5_K => "q5_k",
            DType::Q6_K => "q6_k",
            DType::IQ4_NL => "iq4_nl",
            DType::IQ4_XS => "iq4_xs",
            DType::F8E4M3 => "fp8",
        }
    }

    /// The type's number in every GPU kernel: WGSL's `DTYPE` (weights) and `K_DTYPE` /
    /// `V_DTYPE` (KV caches) override constants and CUDA's `DT_*` template argument
    /// (kernels/common.cuh), in one table. The GGUF block types follow the others, 6 to 14:
    /// weight kernels test `>= 6` for them; fp8 (15) is a KV cache type that no weight kernel
    /// sees. `None` for u32, which no kernel reads as a weight or a cache.
    pub fn kernel_code(self) -> Option<u32> {
        Some(match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q8_0 => 2,
            DType::Q4_0 => 3,
            DType::Q4_1 => 4,
            DType::BF16 => 5,
            DType::Q4_K => 6,
            DType::Q6_K => 7,
            DType::Q5_0 => 8,
            DType::Q5_1 => 9,
            DType::Q5_K => 10,
            DType::Q2_K => 11,
            DType::Q3_K => 12,
            DType::IQ4_NL => 13,
            DType::IQ4_XS => 14,
            DType::F8E4M3 => 15,
            DType::U32 => return None,
        })
    }

    /// Every dtype, in [`DType::kernel_code`] order, then u32.
    pub const ALL: [DType; 17] = [
        DType::F32,
        DType::F16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::BF16,
        DType::Q4_K,
        DType::Q6_K,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q5_K,
        DType::Q2_K,
        DType::Q3_K,
        DType::IQ4_NL,
        DType::IQ4_XS,
        DType::F8E4M3,
        DType::U32,
    ];

    /// Section layout of a Q8_0 / Q4_0 / Q4_1 tensor; `None` for every other type.
    pub fn quant_layout(self, numel: usize) -> Option<QuantLayout> {
        let blocks = numel.div_ceil(QBLOCK);
        let qs_bytes = match self {
            DType::Q8_0 => blocks * QBLOCK,
            DType::Q4_0 | DType::Q4_1 => blocks * QBLOCK / 2,
            _ => return None,
        };
        let d_offset = align4(qs_bytes);
        let m_offset = align4(d_offset + blocks * 2);
        let total_bytes = match self {
            DType::Q4_1 => align4(m_offset + blocks * 2),
            _ => m_offset,
        };
        Some(QuantLayout { blocks, qs_offset: 0, d_offset, m_offset, total_bytes })
    }

    /// Bytes a buffer of `numel` elements of this type occupies, rounded up to 4.
    pub fn storage_bytes(self, numel: usize) -> usize {
        match self {
            DType::F32 | DType::U32 => numel * 4,
            DType::F16 | DType::BF16 => align4(numel * 2),
            DType::F8E4M3 => align4(numel),
            q => match q.block_layout() {
                Some(b) => numel.div_ceil(b.elems) * b.stride,
                None => q.quant_layout(numel).map(|l| l.total_bytes).unwrap_or(0),
            },
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Read-only view of a quantized tensor's sections.
#[derive(Clone, Copy)]
pub struct QuantView<'a> {
    pub dtype: DType,
    pub qs: &'a [u8],
    pub d: &'a [f16],
    /// Empty unless Q4_1.
    pub m: &'a [f16],
    /// Whether the backend checked that every scale (d and m) is finite, so kernels may
    /// convert them without the infinity and NaN cases. `new` says false.
    pub finite_scales: bool,
}

impl<'a> QuantView<'a> {
    /// Splits the bytes of a quantized buffer (4-byte aligned, as backends allocate them).
    pub fn new(dtype: DType, numel: usize, bytes: &'a [u8]) -> Self {
        let l = dtype.quant_layout(numel).expect("quantized dtype");
        let qs_len = l.d_offset.min(if dtype == DType::Q8_0 {
            l.blocks * QBLOCK
        } else {
            l.blocks * QBLOCK / 2
        });
        let d = bytemuck::cast_slice(&bytes[l.d_offset..l.d_offset + l.blocks * 2]);
        let m = if dtype == DType::Q4_1 {
            bytemuck::cast_slice(&bytes[l.m_offset..l.m_offset + l.blocks * 2])
        } else {
            &[]
        };
        QuantView { dtype, qs: &bytes[..qs_len], d, m, finite_scales: false }
    }

    /// Whether every scale is finite (a pass over them; backends keep the answer per buffer).
    pub fn scales_are_finite(&self) -> bool {
        self.d.iter().chain(self.m).all(|h| h.is_finite())
    }

    /// The value of flat element `e`, exactly as every kernel must compute it.
    #[inline]
    pub fn get(&self, e: usize) -> f32 {
        let b = e / QBLOCK;
        let d = self.d[b].to_f32();
        match self.dtype {
            DType::Q8_0 => d * (self.qs[e] as i8) as f32,
            DType::Q4_0 => d * (nibble(self.qs, e) as f32 - 8.0),
            DType::Q4_1 => d * nibble(self.qs, e) as f32 + self.m[b].to_f32(),
            _ => unreachable!(),
        }
    }
}

/// The f32 a bf16 bit pattern stands for, exactly as every kernel must compute it (a shift:
/// NaN stays NaN, with its payload).
#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

#[inline]
pub fn nibble(qs: &[u8], e: usize) -> u8 {
    let byte = qs[e / 2];
    if e.is_multiple_of(2) {
        byte & 0x0f
    } else {
        byte >> 4
    }
}
