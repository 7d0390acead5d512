//! One table of matmul kernels per instruction set (ggml's `type_traits_cpu`): the backend
//! takes its table once, when it is made, and the matmul paths call through it, never asking
//! the CPU again.
//!
//! The x86 entries wrap `#[target_feature]` functions. They are sound because [`Kernels::of`]
//! is the only way to a table and hands out AVX2's and AVX-512's only where
//! [`Isa::supported`] found their features.

use tandem_core::quant::BlockView;
use tandem_core::{DType, QuantView};

use super::prep::{Split, XPrep};
use super::{blocks, dot, general, prefill, Operands};
use crate::{Exec, Isa};

/// A matmul's kernels for one instruction set. Verbs as in the module glossary.
pub(crate) struct Kernels {
    pub isa: Isa,
    /// What the Q8_0 / Q4 decode kernels read of the activation.
    pub split: Split,
    /// Q8_0 / Q4 rows of whole blocks, one token: (q, x: [k], x's split, r0, out: [rows]).
    pub quant_rows: fn(QuantView, &[f32], &XPrep, usize, &mut [f32]),
    /// The same for several tokens: (q, x: [tokens, k], their splits, r0, out: [tokens, rows]),
    /// each token's bits what `quant_rows` gives it.
    pub quant_tokens: fn(QuantView, &[f32], &[XPrep], usize, &mut [f32]),
    /// The general path's rows r0.. for every token of the operands (out: [n, rows]).
    pub general_tokens: fn(&Operands, usize, &mut [f32]),
    /// bf16 rows, one token: (x: [k], w: [rows, k], out: [rows]).
    pub bf16_rows: fn(&[f32], &[u16], &mut [f32]),
    /// All decode rows of a GGUF block type with rows of whole blocks (out: [n, m]).
    pub blocks_decode: fn(Exec, &Operands, BlockView, &mut [f32]),
    /// All prompt rows (out: [n, m]; n > 0, m > 0).
    pub prompt: fn(Exec, &Operands, &mut [f32]),
    /// Whether `prompt` takes rows of this weight dtype and k in 16-bit integers.
    pub prompt_i16: fn(DType, usize) -> bool,
}

impl Kernels {
    /// The portable table without asking the machine: for the reference mode, which runs its
    /// own scalar loops and none of these kernels (a simd128 build has no portable fast mode,
    /// yet its oracle must still be made).
    pub fn portable() -> &'static Kernels {
        &PORTABLE
    }

    /// The table for `isa`, or why this machine cannot run it.
    pub fn of(isa: Isa) -> Result<&'static Kernels, String> {
        if !isa.supported() {
            return Err(format!(
                "this CPU (or build) cannot run the {isa} kernels; it runs {:?}",
                Isa::supported_all().iter().map(|i| i.name()).collect::<Vec<_>>()
            ));
        }
        Ok(match isa {
            Isa::Portable => &PORTABLE,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => &AVX2,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => &AVX512,
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Isa::Simd128 => &SIMD128,
            #[allow(unreachable_patterns)]
            _ => unreachable!("{isa} is supported only where its table is built"),
        })
    }
}

fn never(_: DType, _: usize) -> bool {
    false
}

static PORTABLE: Kernels = Kernels {
    isa: Isa::Portable,
    split: Split::Floats,
    quant_rows: dot::quant_rows,
    quant_tokens: dot::quant_tokens,
    general_tokens: general::tokens_portable,
    bf16_rows: super::bf16::rows,
    blocks_decode: blocks::decode_portable,
    prompt: prefill::prompt::<prefill::Portable>,
    prompt_i16: never,
};

#[cfg(target_arch = "x86_64")]
static AVX2: Kernels = Kernels {
    isa: Isa::Avx2,
    split: Split::Ints { q4: super::prep::Order::Nibbles, pairs: false },
    quant_rows: x86::quant_rows_avx2,
    quant_tokens: x86::quant_tokens_avx2,
    general_tokens: general::tokens_avx2,
    bf16_rows: super::bf16::rows_avx2,
    blocks_decode: blocks::decode_avx2,
    prompt: prefill::prompt::<prefill::Avx2>,
    prompt_i16: never,
};

/// AVX2's kernels where AVX-512 has none; the decode kernels give AVX2's bits.
#[cfg(target_arch = "x86_64")]
static AVX512: Kernels = Kernels {
    isa: Isa::Avx512,
    // The AVX-512 decode kernel reads two blocks' parts per load.
    split: Split::Ints { q4: super::prep::Order::Nibbles, pairs: true },
    quant_rows: x86::quant_rows_avx512,
    quant_tokens: x86::quant_tokens_avx512,
    general_tokens: general::tokens_avx512,
    bf16_rows: super::bf16::rows_avx2,
    blocks_decode: blocks::decode_avx2,
    prompt: x86::prompt_avx512,
    prompt_i16: super::prefill_vnni::applies,
};

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
static SIMD128: Kernels = Kernels {
    isa: Isa::Simd128,
    split: Split::Ints { q4: super::prep::Order::Quads, pairs: false },
    quant_rows: wasm::quant_rows,
    quant_tokens: wasm::quant_tokens,
    general_tokens: general::tokens_portable,
    bf16_rows: super::bf16::rows,
    blocks_decode: blocks::decode_portable,
    prompt: wasm::prompt,
    prompt_i16: super::prefill_i16_simd128::applies,
};

/// The safe entries of the x86 tables. SAFETY (every `unsafe` here): a function of this module
/// is reached only through the table it sits in, handed out by [`Kernels::of`] only where the
/// table's features were detected (AVX2, FMA and F16C; AVX-512's besides for `*_avx512`).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use tandem_core::{QuantView, QBLOCK};

    use super::super::prefill_vnni;
    use super::super::{decode_avx2, decode_avx512, prefill, Operands, XPrep};
    use crate::table::Weight;
    use crate::Exec;

    pub fn quant_rows_avx2(q: QuantView, x: &[f32], p: &XPrep, r0: usize, out: &mut [f32]) {
        // SAFETY: see the module doc.
        unsafe { decode_avx2::rows(q, p, x.len() / QBLOCK, r0, out) }
    }

    pub fn quant_rows_avx512(q: QuantView, x: &[f32], p: &XPrep, r0: usize, out: &mut [f32]) {
        // SAFETY: see the module doc; p was split by pairs (the AVX-512 table's `split`).
        unsafe { decode_avx512::rows(q, p, x.len() / QBLOCK, r0, out) }
    }

    pub fn quant_tokens_avx2(q: QuantView, x: &[f32], ps: &[XPrep], r0: usize, out: &mut [f32]) {
        let ps: Vec<&XPrep> = ps.iter().collect();
        // SAFETY: see the module doc.
        unsafe { decode_avx2::tokens(q, &ps, x.len() / ps.len() / QBLOCK, r0, out) }
    }

    pub fn quant_tokens_avx512(q: QuantView, x: &[f32], ps: &[XPrep], r0: usize, out: &mut [f32]) {
        let ps: Vec<&XPrep> = ps.iter().collect();
        // SAFETY: see the module doc.
        unsafe { decode_avx512::tokens(q, &ps, x.len() / ps.len() / QBLOCK, r0, out) }
    }

    /// Q8_0 rows in 16-bit integers with VNNI where they apply, else AVX2's f32 tile.
    pub fn prompt_avx512(ex: Exec, a: &Operands, out: &mut [f32]) {
        match a.w {
            Weight::Q(q) if prefill_vnni::applies(q.dtype, a.k) => prefill_vnni::q8(ex, a, q, out),
            _ => prefill::prompt::<prefill::Avx2>(ex, a, out),
        }
    }
}

/// The simd128 build's entries (its kernels need no run-time check: the build has simd128).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use tandem_core::{QuantView, QBLOCK};

    use super::super::{decode_simd128, prefill_i16_simd128, prefill_simd128, Operands, XPrep};
    use crate::table::Weight;
    use crate::Exec;

    pub fn quant_rows(q: QuantView, x: &[f32], p: &XPrep, r0: usize, out: &mut [f32]) {
        decode_simd128::rows(q, p, x.len() / QBLOCK, r0, out)
    }

    pub fn quant_tokens(q: QuantView, x: &[f32], ps: &[XPrep], r0: usize, out: &mut [f32]) {
        decode_simd128::quant_batch(q, ps, x.len() / ps.len(), r0, out)
    }

    pub fn prompt(ex: Exec, a: &Operands, out: &mut [f32]) {
        match a.w {
            Weight::Q(q) if prefill_i16_simd128::applies(q.dtype, a.k) => {
                prefill_i16_simd128::prefill(ex, a, q, out)
            }
            _ => prefill_simd128::prefill(ex, a, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Kernels;
    use crate::Isa;

    /// Every ISA this machine has gets its own table; the others are refused.
    #[test]
    fn tables_only_for_the_isas_this_machine_has() {
        for isa in Isa::ALL {
            match Kernels::of(isa) {
                Ok(k) => assert!(isa.supported() && k.isa == isa),
                Err(e) => assert!(!isa.supported() && e.contains(isa.name()), "{e}"),
            }
        }
        assert!(Kernels::of(Isa::Portable).is_ok());
    }
}
