//! out = x @ w^T (+ bias) with the weight dequantized inside the kernel.
//!
//! Tokens 0..decode_rows of an op are its decode rows and take the one-token kernels, the
//! rest are prompt rows and take the prompt kernel; each row's arithmetic is the same whatever
//! n is (batch invariance). Several decode rows run the one-token kernels over the same
//! cache-resident chunk of weight rows, token after token, so the weights are still read from
//! memory once per step.
//!
//! Glossary (the verbs of this module and its kernels):
//! - *rows*: a kernel's rows r0..r0 + out.len() of one token's product.
//! - *tokens*: the same rows for several tokens at once (out: [tokens, rows], token-major),
//!   each token's bits what *rows* gives it alone.
//! - *decode* / *prompt*: all of an op's decode rows / prompt rows, parallel over chunks of
//!   weight rows.
//! - *group*: decode matmuls the model recorded as sharing their input, run as one parallel
//!   section ([`group`]).
//! - *split*: the activation rearranged for the quantized kernels ([`prep`]).
//!
//! Which kernels run is the backend's [`Kernels`] table, one per instruction set, taken when
//! the backend is made. The decode rows go by the weight ([`Route`]):
//! - Q8_0 / Q4_0 / Q4_1 with k % 32 == 0: every row starts on a block boundary, so each weight
//!   byte is streamed once and dequantized in registers, against the activation's split.
//! - bf16: each row widened 16 lanes at a time (a shift) and dotted in the same pass; see
//!   [`bf16`].
//! - GGUF block types (Q4_K, Q6_K, ...) with rows of whole blocks: each block decoded to f32 on
//!   the stack and dotted at once; see [`blocks`].
//! - general (f32/f16 weights, or k % 32 != 0): a tile of rows dequantized into an f32 scratch
//!   and dotted against the tokens; see [`general`].
//!
//! Prompt rows take a register-tiled f32 micro-kernel over dequantized panels of rows, so
//! weight work is shared by all tokens ([`prefill`]), or on AVX-512 VNNI and simd128 a 16-bit
//! integer kernel for some quantized weights. The prompt and general paths dequantize with
//! [`dequant::dequant_into`], which handles rows that start mid-block.

mod bf16;
mod blocks;
#[cfg(target_arch = "x86_64")]
mod blocks_avx2;
#[cfg(target_arch = "x86_64")]
mod decode_avx2;
#[cfg(target_arch = "x86_64")]
mod decode_avx512;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod decode_simd128;
mod dequant;
mod dot;
mod general;
mod group;
mod kernels;
mod prefill;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod prefill_i16_simd128;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod prefill_simd128;
#[cfg(target_arch = "x86_64")]
mod prefill_vnni;
pub(crate) mod prep;

use tandem_core::ops::Matmul;
use tandem_core::quant::BlockView;
use tandem_core::{DType, QuantView, Result, QBLOCK};

use super::chunk_rows;
use crate::table::{Table, Weight};
use crate::Exec;
use dequant::dequant_into;
#[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
use prep::{int_split, Order};
use prep::{with_prep, Split, XPrep};

pub(crate) use group::{joins, run as run_group};
pub(crate) use kernels::Kernels;

const OP: &str = "matmul";

/// One matmul's operands: x: [n, k]; w: [m, k]; bias: [m].
#[derive(Clone, Copy)]
pub(crate) struct Operands<'a> {
    pub x: &'a [f32],
    pub w: Weight<'a>,
    pub bias: Option<&'a [f32]>,
    pub n: usize,
    pub k: usize,
    pub m: usize,
}

impl<'a> Operands<'a> {
    /// Tokens 0..d and d..n as two operands.
    fn split_tokens(self, d: usize) -> (Self, Self) {
        let (xd, xp) = self.x.split_at(d * self.k);
        (Operands { x: xd, n: d, ..self }, Operands { x: xp, n: self.n - d, ..self })
    }
}

pub(crate) fn run(t: &mut Table, ex: Exec, op: &Matmul) -> Result<()> {
    // `Backend::execute` checked the operands (dtypes, sizes without overflow) and `supports`
    // the weight dtype.
    let (n, k, m) = (op.n, op.k, op.m);
    let (x_len, out_len) = (n * k, n * m);
    t.with_out(OP, "out", op.out, |t, out| {
        let x = &t.arg(OP, "x", op.x)?.f32()[..x_len];
        let w = t.arg(OP, "w", op.w)?.weight();
        let bias = match op.bias {
            Some(b) => Some(&t.arg(OP, "bias", b)?.f32()[..m]),
            None => None,
        };
        let a = Operands { x, w, bias, n, k, m };
        let out = &mut out.f32_mut()[..out_len];
        if !ex.fast {
            reference(&a, out);
            return Ok(());
        }
        let d = op.decode_rows.min(n);
        let (ad, ap) = a.split_tokens(d);
        let (od, op_) = out.split_at_mut(d * m);
        decode(ex, &ad, od);
        if ap.n > 0 && m > 0 {
            (ex.kernels.prompt)(ex, &ap, op_);
        }
        Ok(())
    })
}

/// Checks of the wasm kernels' parts that the shared conformance cases do not reach (see
/// `tandem_cpu::wasm_self_check`).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(crate) fn wasm_self_check() -> std::result::Result<(), String> {
    decode_simd128::check_scale_conversion()
}

/// Whether fast mode with `kernels` computes some of the op's rows with activations rounded
/// to 16 bits: the `I16Activations` precision class. Q8_0/Q4 decode rows where the kernels
/// read the integer split (AVX2, AVX-512, simd128), and the prompt rows the kernels' `prompt`
/// takes in integers (Q8_0 on AVX-512 VNNI, Q8_0/Q4 on simd128).
pub(crate) fn i16_class(op: &Matmul, kernels: &Kernels) -> bool {
    let blocks = matches!(op.wdtype, DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
        && op.k.is_multiple_of(QBLOCK)
        && op.k > 0;
    let decode = blocks && kernels.split != Split::Floats && op.decode_rows > 0;
    let prompt = op.n > op.decode_rows.min(op.n) && (kernels.prompt_i16)(op.wdtype, op.k);
    decode || prompt
}

/// x: [n, k]; w: [m, k]; bias: [m]; out: [n, m].
pub(crate) fn reference(a: &Operands, out: &mut [f32]) {
    let Operands { x, w, bias, n, k, m } = *a;
    for i in 0..n {
        for r in 0..m {
            let mut acc = 0f32;
            for j in 0..k {
                acc += x[i * k + j] * w.get(r * k + j);
            }
            if let Some(b) = bias {
                acc += b[r];
            }
            out[i * m + r] = acc;
        }
    }
}

/// The one-token kernels a weight's decode rows take, alone or batched (so a row's
/// arithmetic never depends on the batch).
enum Route<'a> {
    /// Q8_0 / Q4_0 / Q4_1 with rows of whole blocks.
    Quant(QuantView<'a>),
    Bf16(&'a [u16]),
    /// A GGUF block type with rows of whole blocks.
    Blocks(BlockView<'a>),
    /// Everything else: rows widened to f32 a tile at a time ([`general`]).
    General,
}

impl<'a> Route<'a> {
    fn of(w: Weight<'a>, k: usize) -> Self {
        match w {
            Weight::Q(q) if k.is_multiple_of(QBLOCK) && k > 0 => Route::Quant(q),
            Weight::BF16(v) => Route::Bf16(v),
            Weight::Blocks(b) if blocks::row_aligned(b, k) => Route::Blocks(b),
            _ => Route::General,
        }
    }
}

/// The op's decode rows (a.n of them; out: [n, m]). One row takes the one-token kernels
/// directly; several run them chunk by chunk of weight rows (see the module doc).
pub(crate) fn decode(ex: Exec, a: &Operands, out: &mut [f32]) {
    let Operands { x, w, bias, n: d, k, m } = *a;
    if d == 0 || m == 0 {
        return;
    }
    let kern = ex.kernels;
    let route = Route::of(w, k);
    match route {
        // The block kernels schedule one and several rows themselves.
        Route::Blocks(b) => return (kern.blocks_decode)(ex, a, b, out),
        Route::Quant(q) if d == 1 => return decode_quant(ex, x, q, bias, out),
        Route::Bf16(v) if d == 1 => return bf16::decode(ex, a, v, out),
        // This one runs on the pool if there is one (the others schedule themselves, see
        // `par_chunks_caller`).
        Route::General if d == 1 => return general::decode(ex, a, out),
        _ => {}
    }
    let ex = ex.sized(d * k * m);
    let preps: Vec<XPrep> =
        x.chunks_exact(k.max(1)).map(|xi| XPrep::for_weight(w, xi, kern.split)).collect();
    let c = chunk_rows(m, ex.threads(), 16);
    let parts: Vec<(usize, Vec<f32>)> = ex.map_range(m.div_ceil(c), |ci| {
        let r0 = ci * c;
        let rows = c.min(m - r0);
        let mut local = vec![0f32; d * rows];
        match route {
            Route::Quant(q) => {
                (kern.quant_tokens)(q, x, &preps, r0, &mut local);
                for o in local.chunks_exact_mut(rows) {
                    add_bias(o, bias, r0);
                }
            }
            // Each tile of rows widened once for all the tokens.
            Route::General => (kern.general_tokens)(a, r0, &mut local),
            Route::Bf16(v) => {
                for (i, o) in local.chunks_exact_mut(rows).enumerate() {
                    (kern.bf16_rows)(&x[i * k..(i + 1) * k], &v[r0 * k..(r0 + rows) * k], o);
                    add_bias(o, bias, r0);
                }
            }
            Route::Blocks(_) => unreachable!("taken above"),
        }
        (r0, local)
    });
    scatter_strips(parts, out, d, m);
}

/// One token's Q8_0 / Q4 rows: a group of one part (see [`group`]), from a split made in
/// buffers the thread keeps.
fn decode_quant(ex: Exec, x: &[f32], q: QuantView, bias: Option<&[f32]>, out: &mut [f32]) {
    let part = [Some(group::Part { q, bias, start: 0, m: out.len() })];
    let q8 = q.dtype == DType::Q8_0;
    with_prep(x, q.dtype, ex.kernels.split, |prep| {
        let prep = std::slice::from_ref(prep);
        group::decode_parts(ex, x, &part, [(!q8).then_some(prep), q8.then_some(prep)], out);
    })
}

/// Writes strips computed apart into out: [n, m]. Each part is (r0, [n, rows]): rows
/// r0..r0 + rows of every token's output (a chunk of weight rows, computed on one thread).
fn scatter_strips(parts: Vec<(usize, Vec<f32>)>, out: &mut [f32], n: usize, m: usize) {
    for (r0, local) in parts {
        let rows = local.len() / n;
        for (i, strip) in local.chunks_exact(rows.max(1)).enumerate() {
            out[i * m + r0..i * m + r0 + rows].copy_from_slice(strip);
        }
    }
}

/// v += bias[r0..]: a matmul's bias on rows r0.. of one token, added after the product.
fn add_bias(v: &mut [f32], bias: Option<&[f32]>, r0: usize) {
    if let Some(b) = bias {
        for (v, bv) in v.iter_mut().zip(&b[r0..]) {
            *v += bv;
        }
    }
}
