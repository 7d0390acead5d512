//! out = x @ w^T (+ bias) with the weight dequantized inside the kernel.
//!
//! Rows 0..decode_rows take the one-token (decode) kernels, the rest the prompt kernel, each
//! row's arithmetic the same whatever n is (batch invariance): several decode rows run the
//! one-token kernels over the same cache-resident chunk of weight rows, token after token, so
//! the weights are still read from memory once per step.
//!
//! Fast mode has four paths:
//! - bf16 decode (n = 1, bf16 weights): each row widened 16 lanes at a time (a shift) and
//!   dotted in the same pass; see [`bf16`].
//! - decode (n = 1, quantized, k % 32 == 0): every row starts on a block boundary, so each
//!   weight byte is streamed once and dequantized in registers. The activation is prepared
//!   once: split into even/odd elements (matching the nibble order of Q4 bytes) and summed per
//!   block, so Q4_0 is d * (sum(q * x) - 8 * sum(x)) and Q4_1 is d * sum(q * x) + m * sum(x).
//! - prefill (n > 1, any weight dtype and k): a register-tiled f32 micro-kernel over
//!   dequantized panels of rows, so weight work is shared by all n tokens; see [`prefill`].
//! - GGUF block types (Q4_K, Q6_K, ...) with rows of whole blocks, decode: each block decoded
//!   to f32 on the stack and dotted at once; see [`blocks`].
//! - general (n = 1 with odd k or f32/f16 weights): a tile of rows is dequantized into an f32
//!   scratch and dotted against the token.
//!
//! The prefill and general paths dequantize with [`dequant_into`], which handles rows that
//! start mid-block (blocks run over the flat index) segment by segment.
//!
//! All are parallel over chunks of output rows.

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
mod group;
#[cfg_attr(all(target_arch = "wasm32", target_feature = "simd128"), allow(dead_code))]
mod prefill;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod prefill_i16_simd128;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod prefill_simd128;
#[cfg(target_arch = "x86_64")]
mod prefill_vnni;

use half::slice::HalfFloatSliceExt;
use tandem_core::dtype::bf16_to_f32;
use tandem_core::ops::Matmul;
use tandem_core::quant::BlockView;
use tandem_core::{DType, QuantView, Result, QBLOCK};

use super::{chunk_rows, dot, dots, par_chunks_caller};
use crate::table::{bad_dtype, numel, Table, Weight};
use crate::{is_weight_dtype, Exec};

pub(crate) use group::{group_len, run as run_group};

const OP: &str = "matmul";

pub(crate) fn run(t: &mut Table, ex: Exec, op: &Matmul) -> Result<()> {
    if !is_weight_dtype(op.wdtype) {
        return Err(bad_dtype(OP, "w", crate::WEIGHT_DTYPES, op.wdtype));
    }
    let (n, k, m) = (op.n, op.k, op.m);
    let x_len = numel(OP, &[n, k])?;
    let w_len = numel(OP, &[m, k])?;
    let out_len = numel(OP, &[n, m])?;
    t.with_output(OP, "out", op.out, DType::F32, out_len, |t, out| {
        let x = &t.input(OP, "x", op.x, DType::F32, x_len)?.f32()[..x_len];
        let w = t.input(OP, "w", op.w, op.wdtype, w_len)?.weight();
        let bias = match op.bias {
            Some(b) => Some(&t.input(OP, "bias", b, DType::F32, m)?.f32()[..m]),
            None => None,
        };
        let out = &mut out.f32_mut()[..out_len];
        match ex.fast {
            false => reference(x, w, bias, out, n, k, m),
            true => {
                let d = op.decode_rows.min(n);
                let (xd, xp) = x.split_at(d * k);
                let (od, op_) = out.split_at_mut(d * m);
                decode(ex, xd, w, bias, od, d, k, m);
                if n > d && m > 0 {
                    #[cfg(target_arch = "x86_64")]
                    if let (Weight::Q(q), true) = (w, vnni_prompt_rows(op, ex.avx2)) {
                        prefill_vnni::q8(ex, xp, q, bias, op_, n - d, k, m);
                        return Ok(());
                    }
                    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                    match w {
                        Weight::Q(q) if prefill_i16_simd128::applies(q.dtype, k) => {
                            prefill_i16_simd128::prefill(ex, xp, q, bias, op_, n - d, k, m)
                        }
                        _ => prefill_simd128::prefill(ex, xp, w, bias, op_, n - d, k, m),
                    }
                    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
                    prefill::prefill(ex, xp, w, bias, op_, n - d, k, m);
                }
            }
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

/// Whether fast mode (with its SIMD kernels where `avx2`) computes some of the op's rows with
/// activations rounded to 16 bits: the `I16Activations` precision class. The wasm build's
/// Q8_0/Q4 decode and prompt rows (`decode_simd128`, `prefill_i16_simd128`), x86's Q8_0/Q4
/// decode rows (`decode_avx2`) and Q8_0 prompt rows on AVX-512 VNNI ([`vnni_prompt_rows`]).
pub(crate) fn i16_class(op: &Matmul, avx2: bool) -> bool {
    let blocks = matches!(op.wdtype, DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
        && op.k % QBLOCK == 0
        && op.k > 0;
    let x86_decode = cfg!(target_arch = "x86_64") && avx2 && op.decode_rows > 0;
    // wasm: all of such an op's rows, decode and prompt.
    (blocks && (SIMD128 || x86_decode)) || vnni_prompt_rows(op, avx2)
}

/// Whether fast mode (with its SIMD kernels, `avx2`) computes the op's prompt rows in 16-bit
/// integers (`prefill_vnni`): the `I16Activations` precision class.
pub(crate) fn vnni_prompt_rows(op: &Matmul, avx2: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    let vnni = prefill_vnni::applies(op.wdtype, op.k);
    #[cfg(not(target_arch = "x86_64"))]
    let vnni = false;
    avx2 && vnni && op.n > op.decode_rows.min(op.n)
}

/// x: [n, k]; w: [m, k]; bias: [m]; out: [n, m].
pub(crate) fn reference(
    x: &[f32],
    w: Weight,
    bias: Option<&[f32]>,
    out: &mut [f32],
    n: usize,
    k: usize,
    m: usize,
) {
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

/// d decode rows: x: [d, k]; out: [d, m]. One row takes the one-token kernels directly;
/// several run them chunk by chunk of weight rows (see the module doc).
#[allow(clippy::too_many_arguments)]
fn decode(
    ex: Exec,
    x: &[f32],
    w: Weight,
    bias: Option<&[f32]>,
    out: &mut [f32],
    d: usize,
    k: usize,
    m: usize,
) {
    if d == 0 || m == 0 {
        return;
    }
    if d == 1 {
        return match Route::of(w, k) {
            Route::Quant(q) => decode_quant(ex, x, q, bias, out, k, m),
            Route::Bf16(v) => bf16::decode(ex, x, v, bias, out, k, m),
            Route::Blocks(b) => blocks::decode(ex, x, b, bias, out, k, m),
            // The decode paths schedule themselves (see `par_chunks_caller`); this one runs
            // on the pool if there is one.
            Route::General => general(ex, x, w, bias, out, k, m),
        };
    }
    let ex = ex.sized(d * k * m);
    #[cfg(target_arch = "x86_64")]
    if let (true, Weight::Blocks(b)) = (ex.avx2, w) {
        if blocks::row_aligned(b, k) && blocks_avx2::supported(b.dtype) {
            return blocks::decode_batch(ex, x, b, bias, out, d, k, m);
        }
    }
    let preps: Vec<XPrep> =
        x.chunks_exact(k.max(1)).map(|xi| XPrep::for_weight(w, xi, ex.avx2)).collect();
    // `general`'s rows are the same dot products for any number of tokens.
    let general_route = matches!(Route::of(w, k), Route::General);
    let c = chunk_rows(m, ex.threads(), 16);
    let parts: Vec<(usize, Vec<f32>)> = ex.map_range(m.div_ceil(c), |ci| {
        let r0 = ci * c;
        let rows = c.min(m - r0);
        let mut local = vec![0f32; d * rows];
        if let Route::Quant(q) = Route::of(w, k) {
            quant_tokens(ex.avx2, q, x, &preps, k, r0, &mut local);
            for o in local.chunks_exact_mut(rows) {
                add_bias(o, bias, r0);
            }
            return (r0, local);
        }
        if general_route {
            // Each tile of rows widened once for all the tokens (per token, it was a copy of
            // the whole matrix: an f32 model's 5-row verify step cost 5 decode steps).
            general_dispatch(ex.avx2, x, w, bias, &mut local, d, k, r0);
            return (r0, local);
        }
        for (i, o) in local.chunks_exact_mut(rows).enumerate() {
            token_rows(ex.avx2, &x[i * k..(i + 1) * k], &preps[i], w, bias, k, r0, o);
        }
        (r0, local)
    });
    scatter_strips(parts, out, d, m);
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

/// Rows r0.. of every token's product for quantized weights: the AVX2 one-token kernel's
/// arithmetic, with each block unpacked once for up to `decode_avx2::TOKENS` tokens.
/// out: [tokens, rows], token-major.
#[cfg(target_arch = "x86_64")]
fn quant_batch(q: QuantView, preps: &[XPrep], k: usize, r0: usize, out: &mut [f32]) {
    let rows = out.len() / preps.len();
    for (g, o) in out.chunks_mut(decode_avx2::TOKENS * rows).enumerate() {
        let t0 = g * decode_avx2::TOKENS;
        let nt = o.len() / rows;
        let ps: Vec<&XPrep> = preps[t0..t0 + nt].iter().collect();
        // SAFETY: callers pass `ex.avx2`, true only when AVX2, FMA and F16C were detected.
        unsafe { decode_avx2::rows_batch(q, &ps, k / QBLOCK, r0, o) };
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
            Weight::Q(q) if k % QBLOCK == 0 && k > 0 => Route::Quant(q),
            Weight::BF16(v) => Route::Bf16(v),
            Weight::Blocks(b) if blocks::row_aligned(b, k) => Route::Blocks(b),
            _ => Route::General,
        }
    }
}

/// Rows r0..r0 + out.len() of one token's product, with the one-token kernels' arithmetic.
#[allow(clippy::too_many_arguments)]
fn token_rows(
    avx2: bool,
    x: &[f32],
    prep: &XPrep,
    w: Weight,
    bias: Option<&[f32]>,
    k: usize,
    r0: usize,
    out: &mut [f32],
) {
    match Route::of(w, k) {
        Route::Quant(q) => quant_rows(avx2, q, x, prep, k, r0, out),
        Route::Bf16(v) => bf16::rows_dispatch(avx2, x, &v[r0 * k..(r0 + out.len()) * k], out),
        Route::Blocks(b) => blocks::rows_dispatch(avx2, b, x, r0, out),
        Route::General => return general_dispatch(avx2, x, w, bias, out, 1, k, r0),
    }
    add_bias(out, bias, r0);
}

/// The activation row rearranged for quantized dot products.
struct XPrep {
    /// x[2j] and x[2j + 1]: the low and high nibble partners of Q4 byte j. [k / 2] each.
    even: Vec<f32>,
    odd: Vec<f32>,
    /// Sum of x over each block of 32. [k / 32, zero padded to a multiple of 8].
    sums: Vec<f32>,
    /// Each block of 32 as 16-bit integers, for integer dot products with the weights whose
    /// products and sums are exact: x ~ s * hi, s = max |x| / 32767 of the block (`scales`),
    /// each element within 2^-16 of its block's largest (the 16-bit activation class). 32
    /// values a block, in the kernel's `Order` (AVX-512: by pairs of blocks, see `int_split`).
    #[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
    ints: Vec<i16>,
    /// s of each block. [k / 32, zero padded to a multiple of 8] (as `sums`).
    #[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
    scales: Vec<f32>,
}

impl XPrep {
    /// What the one-token kernel for `w` reads (only Q4 rearranges the activation).
    fn for_weight(w: Weight, x: &[f32], avx2: bool) -> Self {
        match w {
            Weight::Q(q) if x.len() % QBLOCK == 0 => XPrep::new(x, q.dtype, avx2),
            _ => XPrep::empty(),
        }
    }

    fn empty() -> Self {
        XPrep {
            even: vec![],
            odd: vec![],
            sums: vec![],
            #[cfg(any(
                target_arch = "x86_64",
                all(target_arch = "wasm32", target_feature = "simd128")
            ))]
            ints: vec![],
            #[cfg(any(
                target_arch = "x86_64",
                all(target_arch = "wasm32", target_feature = "simd128")
            ))]
            scales: vec![],
        }
    }

    /// What the kernels of this CPU read for `dtype` (Q8_0, Q4_0 or Q4_1): the integer
    /// kernels (AVX2 where `avx2`, and wasm's simd128) the 16-bit split, the portable one
    /// Q4's even/odd copies (its Q8_0 reads x itself).
    fn new(x: &[f32], dtype: DType, avx2: bool) -> Self {
        let mut p = XPrep::empty();
        p.fill(x, dtype, avx2);
        p
    }

    /// [`XPrep::new`] in this one's buffers (their capacity kept: see [`with_prep`]).
    fn fill(&mut self, x: &[f32], dtype: DType, avx2: bool) {
        let (q8, int) = (dtype == DType::Q8_0, avx2 || SIMD128);
        self.even.clear();
        self.odd.clear();
        self.sums.clear();
        if !int && !q8 {
            self.even.extend(x.iter().step_by(2));
            self.odd.extend(x.iter().skip(1).step_by(2));
        }
        let nb = x.len() / QBLOCK;
        // Zero padded to whole groups of 8 blocks, which the AVX2 kernel loads at once.
        if !q8 {
            self.sums.extend(x.chunks_exact(QBLOCK).map(|b| b.iter().sum::<f32>()));
            self.sums.resize(nb.next_multiple_of(8), 0.0);
        }
        #[cfg(any(
            target_arch = "x86_64",
            all(target_arch = "wasm32", target_feature = "simd128")
        ))]
        {
            self.ints.clear();
            self.scales.clear();
            if int {
                // Q8_0's bytes are in element order, Q4's nibbles even then odd.
                // The AVX-512 kernel reads two blocks' parts per load.
                #[cfg(target_arch = "x86_64")]
                let pairs = decode_avx512::available();
                #[cfg(not(target_arch = "x86_64"))]
                let pairs = false;
                // hi alone, the 16-bit class, for wasm (see `decode_simd128`) and Q8_0 (see
                // `decode_avx2`).
                let order = match (q8, SIMD128) {
                    (true, _) => Order::Natural,
                    (false, true) => Order::Quads,
                    (false, false) => Order::Nibbles,
                };
                int_split_into(x, order, pairs, false, &mut self.ints, &mut self.scales);
            }
        }
    }
}

thread_local! {
    /// Activation splits' buffers, kept between calls: a decode step makes one per matmul
    /// input, and their allocations were most of a step's.
    static PREPS: std::cell::RefCell<Vec<XPrep>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with the split of x for `dtype` ([`XPrep::new`]) made in buffers this thread
/// reuses, so a one-token step allocates none for it.
fn with_prep<R>(x: &[f32], dtype: DType, avx2: bool, f: impl FnOnce(&XPrep) -> R) -> R {
    let mut p = PREPS.with_borrow_mut(|v| v.pop()).unwrap_or_else(XPrep::empty);
    p.fill(x, dtype, avx2);
    let r = f(&p);
    PREPS.with_borrow_mut(|v| v.push(p));
    r
}

/// The browser's CPU fallback is built with simd128 (its integer kernels read `XPrep::ints`).
const SIMD128: bool = cfg!(all(target_arch = "wasm32", target_feature = "simd128"));

/// Where a block's 32 activation values sit, to meet the weights as the kernel unpacks them.
#[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Order {
    /// Element order: Q8_0's bytes and the block types' kernels.
    Natural,
    /// Even elements, then odd: Q4's low then high nibbles of its 16 bytes (x86).
    Nibbles,
    /// Element i at (i % 4) * 8 + i / 4: Q4's bytes read as eight 16-bit lanes, whose four
    /// nibbles are elements 4l..4l + 4 of lane l (wasm, where a 16-bit shift and mask take a
    /// nibble without widening bytes).
    Quads,
}

/// [`XPrep::ints`] and [`XPrep::scales`] of x (the integer kernels read them).
/// Per block of 32, the 32 hi then (with `lo`) the 32 lo, in `order`. Without `lo` (the 16-bit class: every decode
/// and wasm kernel, Q8_0's prompt rows) a block is its 32 hi alone; the K-quants' rows take
/// both. A block's values are parts of 16; with `pairs` (the
/// AVX-512 kernel's layout) blocks 2p and 2p + 1 interleave by part (block 2p's 16 values,
/// then block 2p + 1's), so one 512-bit load takes a part of both (zeros after a last,
/// unpaired block).
#[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
fn int_split(x: &[f32], order: Order, pairs: bool, lo: bool) -> (Vec<i16>, Vec<f32>) {
    let (mut ints, mut scales) = (Vec::new(), Vec::new());
    int_split_into(x, order, pairs, lo, &mut ints, &mut scales);
    (ints, scales)
}

/// [`int_split`] into `ints` and `scales` (replacing their contents, keeping their capacity).
#[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
fn int_split_into(
    x: &[f32],
    order: Order,
    pairs: bool,
    lo: bool,
    ints: &mut Vec<i16>,
    scales: &mut Vec<f32>,
) {
    match lo {
        true => split::<true>(x, order, pairs, ints, scales),
        false => split::<false>(x, order, pairs, ints, scales),
    }
}

/// [`int_split`], with or without the lo half.
#[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
fn split<const LO: bool>(
    x: &[f32],
    order: Order,
    pairs: bool,
    ints: &mut Vec<i16>,
    scales: &mut Vec<f32>,
) {
    let nb = x.len() / QBLOCK;
    let per = if LO { 64 } else { 32 };
    let len = if pairs { nb.next_multiple_of(2) * per } else { nb * per };
    // Zeros: a zero or non-finite block is skipped below.
    ints.clear();
    ints.resize(len, 0);
    scales.clear();
    scales.resize(nb.next_multiple_of(8), 0.0);
    // Where element j's value goes within its block's 32.
    let at: [usize; QBLOCK] = std::array::from_fn(|j| match order {
        Order::Natural => j,
        Order::Nibbles => (j % 2) * 16 + j / 2,
        Order::Quads => (j % 4) * 8 + j / 4,
    });
    for (b, (xb, s)) in x.chunks_exact(QBLOCK).zip(scales.iter_mut()).enumerate() {
        let amax = block_amax(xb);
        if !(amax > 0.0 && amax.is_finite()) {
            // Zero blocks stay zero; a non-finite one gives NaN through its scale, as the
            // f32 product would.
            *s = if amax == 0.0 { 0.0 } else { f32::NAN };
            continue;
        }
        // A normal scale even for a block of subnormals (whose f32 products are subnormal,
        // and as coarse, in the reference too): it then uses fewer of hi's bits. 1 / s, not
        // 32767 / amax, which overflows f32 for a subnormal amax.
        *s = (amax / 32767.0).max(f32::MIN_POSITIVE);
        // In f32 lanes the compiler vectorizes (per element in f64, the split was a tenth of a
        // Q8_0 prefill): 1 / s <= 2^126 is finite and |r| <= 32767, so r is within 1.5 ulps
        // of x / s, and r - hi is exact.
        let inv = (1.0 / *s as f64) as f32;
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if !LO && !pairs {
            // The same values in simd128 (rustc leaves the loop below scalar in wasm).
            ints[b * 32..b * 32 + 32].copy_from_slice(&decode_simd128::split_block(xb, inv, order));
            continue;
        }
        let (mut his, mut los) = ([0i32; QBLOCK], [0i32; QBLOCK]);
        for ((h, l), &v) in his.iter_mut().zip(&mut los).zip(xb) {
            let r = (v * inv).clamp(-32767.0, 32767.0);
            // A NaN element (amax skips it) counts 0, as a saturating cast would.
            let r = if r.is_nan() { 0.0 } else { r };
            let hi = round_even(r);
            // SAFETY: integers in -32767..=32767 and -16384..=16384 (a plain `as` saturates,
            // which keeps the loop scalar).
            unsafe {
                *h = hi.to_int_unchecked::<i32>();
                if LO {
                    *l = round_even((r - hi) * 32768.0).to_int_unchecked::<i32>();
                }
            }
        }
        // The block in its order (hi, then lo), then where the layout puts it.
        let mut blk = [0i16; 64];
        for j in 0..QBLOCK {
            blk[at[j] % 32] = his[j] as i16;
            if LO {
                blk[32 + at[j] % 32] = los[j] as i16;
            }
        }
        match pairs {
            // Blocks 2p and 2p + 1 interleave by parts of 16.
            true => {
                for (part, vals) in blk[..per].chunks_exact(16).enumerate() {
                    let at = (b / 2) * 2 * per + part * 32 + (b % 2) * 16;
                    ints[at..at + 16].copy_from_slice(vals);
                }
            }
            false => ints[b * per..(b + 1) * per].copy_from_slice(&blk[..per]),
        }
    }
}

fn decode_quant(
    ex: Exec,
    x: &[f32],
    q: QuantView,
    bias: Option<&[f32]>,
    out: &mut [f32],
    k: usize,
    m: usize,
) {
    debug_assert_eq!(x.len(), k);
    let part = [Some(group::Part { q, bias, start: 0, m })];
    let q8 = q.dtype == DType::Q8_0;
    with_prep(x, q.dtype, ex.avx2, |prep| {
        let prep = std::slice::from_ref(prep);
        group::rows_of(ex, x, &part, [(!q8).then_some(prep), q8.then_some(prep)], out);
    })
}

/// Rows r0.. of every token's product (out: [tokens, rows], token-major) for Q8_0 / Q4 weights
/// of rows of whole blocks, from each token's split: the batched decode kernels where there
/// are some, the one-token rows token by token otherwise; either way each token's result is
/// what the one-token kernel gives it (as [`decode`]'s rows).
fn quant_tokens(
    avx2: bool,
    q: QuantView,
    x: &[f32],
    preps: &[XPrep],
    k: usize,
    r0: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        return quant_batch(q, preps, k, r0, out);
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        let _ = (avx2, x);
        decode_simd128::quant_batch(q, preps, k, r0, out)
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        let rows = out.len() / preps.len();
        for (t, o) in out.chunks_exact_mut(rows).enumerate() {
            quant_rows(avx2, q, &x[t * k..(t + 1) * k], &preps[t], k, r0, o);
        }
    }
}

/// out[ri] = dot(row r0 + ri of w, x) for a chunk of rows; k % 32 == 0.
fn quant_rows(
    avx2: bool,
    q: QuantView,
    x: &[f32],
    prep: &XPrep,
    k: usize,
    r0: usize,
    out: &mut [f32],
) {
    let nb = k / QBLOCK;
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is true only when AVX2, FMA and F16C were detected at run time.
        return unsafe { decode_avx2::rows(q, prep, nb, r0, out) };
    }
    let _ = avx2;
    // The browser's CPU fallback (nb > 0 always: callers have k % 32 == 0, k > 0).
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if nb > 0 {
        return decode_simd128::rows(q, prep, nb, r0, out);
    }
    let (b_start, b_end) = (r0 * nb, (r0 + out.len()) * nb);
    // Scales of the chunk's blocks as f32 once, rather than one f16 conversion per block.
    let mut d = vec![0f32; b_end - b_start];
    q.d[b_start..b_end].convert_to_f32_slice(&mut d);
    let mut mins = vec![0f32; if q.dtype == DType::Q4_1 { b_end - b_start } else { 0 }];
    if q.dtype == DType::Q4_1 {
        q.m[b_start..b_end].convert_to_f32_slice(&mut mins);
    }
    for (ri, o) in out.iter_mut().enumerate() {
        let b0 = (r0 + ri) * nb;
        let ds = &d[ri * nb..(ri + 1) * nb];
        let mins = (q.dtype == DType::Q4_1).then(|| &mins[ri * nb..(ri + 1) * nb]);
        *o = match q.dtype {
            DType::Q8_0 => {
                let qs = &q.qs[b0 * QBLOCK..(b0 + nb) * QBLOCK];
                dot_q8(qs, ds, x)
            }
            _ => {
                let qs = &q.qs[b0 * 16..(b0 + nb) * 16];
                dot_q4(qs, ds, mins, prep)
            }
        };
    }
}

/// sum_b d[b] * sum_j q[b, j] * x[b, j] over whole blocks; qs: [nb * 32] i8, x: [nb * 32].
#[inline(always)]
fn dot_q8(qs: &[u8], d: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for ((q, xs), &dv) in qs.chunks_exact(QBLOCK).zip(x.chunks_exact(QBLOCK)).zip(d) {
        // Fixed-size views: no bounds checks, so the block loop unrolls into SIMD lanes.
        let q: &[u8; QBLOCK] = q.try_into().unwrap();
        let xs: &[f32; QBLOCK] = xs.try_into().unwrap();
        let mut s = [0f32; 8];
        for j in 0..4 {
            for l in 0..8 {
                s[l] += (q[j * 8 + l] as i8) as f32 * xs[j * 8 + l];
            }
        }
        for l in 0..8 {
            acc[l] += dv * s[l];
        }
    }
    hsum8(acc)
}

/// Q4_0 (`mins` = None): sum_b d * (sum q x - 8 sum x); Q4_1: sum_b d * sum q x + m * sum x.
/// qs: [nb * 16] bytes, two elements each, low nibble first.
#[inline(always)]
fn dot_q4(qs: &[u8], d: &[f32], mins: Option<&[f32]>, p: &XPrep) -> f32 {
    let mut acc = [0f32; 8];
    let mut offset = 0f32;
    for (b, ((q, e), o)) in
        qs.chunks_exact(16).zip(p.even.chunks_exact(16)).zip(p.odd.chunks_exact(16)).enumerate()
    {
        let (q, e, o): (&[u8; 16], &[f32; 16], &[f32; 16]) =
            (q.try_into().unwrap(), e.try_into().unwrap(), o.try_into().unwrap());
        let mut s = [0f32; 8];
        for j in 0..2 {
            for l in 0..8 {
                let byte = q[j * 8 + l];
                s[l] += (byte & 15) as f32 * e[j * 8 + l] + (byte >> 4) as f32 * o[j * 8 + l];
            }
        }
        let dv = d[b];
        for l in 0..8 {
            acc[l] += dv * s[l];
        }
        offset += match mins {
            None => -8.0 * dv * p.sums[b],
            Some(m) => m[b] * p.sums[b],
        };
    }
    hsum8(acc) + offset
}

/// max |x| over a block, NaN elements skipped (as `f32::max` does): in 8 lanes of compares the
/// compiler vectorizes (`f32::max` is a libm call in wasm, whose own max keeps NaN, and was a
/// fifth of the split there); the maximum is the same in any order.
#[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
fn block_amax(xb: &[f32]) -> f32 {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if xb.len() == QBLOCK {
        // (rustc leaves the loop below scalar in wasm)
        return decode_simd128::block_amax(xb);
    }
    let mut m = [0f32; 8];
    for c in xb.chunks_exact(8) {
        for (mi, v) in m.iter_mut().zip(c) {
            let a = v.abs();
            *mi = if a > *mi { a } else { *mi };
        }
    }
    m.iter().fold(0f32, |a, &v| if v > a { v } else { a })
}

/// v rounded to the nearest integer (ties to even) for |v| < 2^22: adding 1.5 * 2^23 leaves
/// no fraction bits, so the addition rounds. `f32::round` is a library call on baseline
/// x86-64 (no SSE4.1), once per element of every decode matmul's input.
#[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
#[inline(always)]
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12582912.0;
    (v + MAGIC) - MAGIC
}

#[inline(always)]
fn hsum8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

/// Rows dequantized per tile and shared by all tokens in the tile loop.
const TILE: usize = 4;

/// The n = 1 case the decode kernels do not cover; out: [m].
fn general(
    ex: Exec,
    x: &[f32],
    w: Weight,
    bias: Option<&[f32]>,
    out: &mut [f32],
    k: usize,
    m: usize,
) {
    let ex = ex.sized(k * m);
    let c = chunk_rows(m, ex.threads(), TILE);
    ex.for_chunks(out, c, |ci, o| general_dispatch(ex.avx2, x, w, bias, o, 1, k, ci * c));
}

#[allow(clippy::too_many_arguments)]
fn general_dispatch(
    avx2: bool,
    x: &[f32],
    w: Weight,
    bias: Option<&[f32]>,
    out: &mut [f32],
    n: usize,
    k: usize,
    r0: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is true only when AVX2 and FMA were detected at run time.
        return unsafe { general_rows_avx2(x, w, bias, out, n, k, r0) };
    }
    let _ = avx2;
    general_rows(x, w, bias, out, n, k, r0, |xs, rows, res| {
        for (x, r) in xs.iter().zip(res) {
            *r = dots::<TILE>(x, rows);
        }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn general_rows_avx2(
    x: &[f32],
    w: Weight,
    bias: Option<&[f32]>,
    out: &mut [f32],
    n: usize,
    k: usize,
    r0: usize,
) {
    if decode_avx512::available() {
        // SAFETY: the AVX-512 features were detected.
        return unsafe { general_rows_avx512(x, w, bias, out, n, k, r0) };
    }
    // SAFETY: this function runs only where AVX2 was detected.
    general_rows(x, w, bias, out, n, k, r0, |xs, rows, res| {
        for (x, r) in xs.iter().zip(res) {
            *r = unsafe { super::dots4_avx2(x, rows) };
        }
    })
}

/// [`general_rows`] with a tile of up to 4 tokens x 4 rows in AVX-512 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn general_rows_avx512(
    x: &[f32],
    w: Weight,
    bias: Option<&[f32]>,
    out: &mut [f32],
    n: usize,
    k: usize,
    r0: usize,
) {
    use super::dots_avx512 as dots;
    general_rows(x, w, bias, out, n, k, r0, |xs, rows, res| {
        // SAFETY (every arm): the caller detected AVX-512F.
        match *xs {
            [a, b, c, d, e] => res.copy_from_slice(&unsafe { dots::<5>([a, b, c, d, e], rows) }),
            [a, b, c, d] => res.copy_from_slice(&unsafe { dots::<4>([a, b, c, d], rows) }),
            [a, b, c] => res.copy_from_slice(&unsafe { dots::<3>([a, b, c], rows) }),
            [a, b] => res.copy_from_slice(&unsafe { dots::<2>([a, b], rows) }),
            [a] => res.copy_from_slice(&unsafe { dots::<1>([a], rows) }),
            _ => unreachable!("token groups of 1 to TOKEN_TILE"),
        }
    })
}

/// Tokens whose dots with a tile of rows are taken at once: a verify step's K + 1 = 5 (the
/// AVX-512 tile's 20 accumulators fit its 32 registers).
const TOKEN_TILE: usize = 5;

/// out: [n, rows] for weight rows r0..r0 + rows (rows = out.len() / n). `tile(xs, rows, res)`
/// is [`dots`] for up to [`TOKEN_TILE`] tokens and a tile of rows, res[t][j] = dot(xs[t],
/// rows[j]), the same bits however the CPU's form of it groups the work.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn general_rows(
    x: &[f32],
    w: Weight,
    bias: Option<&[f32]>,
    out: &mut [f32],
    n: usize,
    k: usize,
    r0: usize,
    tile: impl Fn(&[&[f32]], [&[f32]; TILE], &mut [[f32; TILE]]),
) {
    let rows = out.len() / n;
    // f32 rows are read where they are; the others are widened a tile at a time.
    let dense = match w {
        Weight::F32(v) => Some(v),
        _ => None,
    };
    let mut scratch = vec![0f32; if dense.is_some() { 0 } else { TILE * k }];
    for t0 in (0..rows).step_by(TILE) {
        let t1 = (t0 + TILE).min(rows);
        if dense.is_none() {
            for r in t0..t1 {
                dequant_into(w, (r0 + r) * k, &mut scratch[(r - t0) * k..(r - t0 + 1) * k]);
            }
        }
        let row = |r: usize| match dense {
            Some(v) => &v[(r0 + r) * k..(r0 + r + 1) * k],
            None => &scratch[(r - t0) * k..(r - t0 + 1) * k],
        };
        let b = |r: usize| bias.map_or(0.0, |b| b[r0 + r]);
        if t1 - t0 < TILE {
            for i in 0..n {
                for r in t0..t1 {
                    out[i * rows + r] = dot(&x[i * k..(i + 1) * k], row(r)) + b(r);
                }
            }
            continue;
        }
        // The tile's rows with a group of tokens at once (each the same bits as `dot` alone).
        for i0 in (0..n).step_by(TOKEN_TILE) {
            let g = TOKEN_TILE.min(n - i0);
            let xs: [&[f32]; TOKEN_TILE] = std::array::from_fn(|t| {
                let i = (i0 + t).min(n - 1);
                &x[i * k..(i + 1) * k]
            });
            let mut res = [[0f32; TILE]; TOKEN_TILE];
            tile(&xs[..g], std::array::from_fn(|j| row(t0 + j)), &mut res[..g]);
            for (i, v) in (i0..i0 + g).zip(res) {
                for (j, v) in v.into_iter().enumerate() {
                    out[i * rows + t0 + j] = v + b(t0 + j);
                }
            }
        }
    }
}

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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The 16-bit split carries each block to within 2^-30 of its largest magnitude (about 2^-6
    /// of an f32 ulp of that element), whatever the spread of magnitudes in the block (blocks
    /// of subnormals to within 2^-142, below f32's own subnormal spacing), and zero and
    /// non-finite blocks come out as zero and NaN.
    #[test]
    fn int_split_reconstructs_the_activation() {
        let mut x: Vec<f32> = (0..256).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 1e-3).collect();
        x[3] = 250.0; // an outlier channel
        x[40] = -1e-9;
        x[64..96].fill(0.0);
        // A block of subnormals: still carried to within 2^-30 of its largest.
        for (i, v) in x[128..160].iter_mut().enumerate() {
            *v = (i as f32 - 16.0) * 1e-40;
        }
        let (ints, scales) = int_split(&x, Order::Nibbles, false, true);
        for (b, xb) in x.chunks_exact(QBLOCK).enumerate() {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let ints = &ints[b * 64..(b + 1) * 64];
            for (j, &v) in xb.iter().enumerate() {
                let at = (j % 2) * 16 + j / 2;
                let back = scales[b] as f64 * (ints[at] as f64 + ints[32 + at] as f64 / 32768.0);
                let err = (back - v as f64).abs();
                let bound = amax as f64 * 2f64.powi(-30)
                    + (v.abs() as f64) * 2f64.powi(-23)
                    + 2f64.powi(-142);
                assert!(err <= bound, "block {b} element {j}: {v} -> {back}");
            }
        }
        assert_eq!(scales[2], 0.0);
        // hi alone (the 16-bit class): within half a step (s / 2, amax / 65534 for a normal
        // block) of each element, element order, 32 a block; the pairs layout holds the same
        // values.
        let (hi, s16) = int_split(&x, Order::Natural, false, false);
        assert_eq!(s16, scales);
        for (b, xb) in x.chunks_exact(QBLOCK).enumerate() {
            for (j, &v) in xb.iter().enumerate() {
                let back = s16[b] as f64 * hi[b * 32 + j] as f64;
                let bound = s16[b] as f64 / 2.0 * (1.0 + 1e-6) + (v.abs() as f64) * 2f64.powi(-22);
                assert!(
                    (back - v as f64).abs() <= bound,
                    "hi alone, block {b} element {j}: {v} -> {back}"
                );
            }
        }
        let (paired, _) = int_split(&x, Order::Natural, true, false);
        for (b, i) in (0..x.len() / QBLOCK).flat_map(|b| (0..QBLOCK).map(move |i| (b, i))) {
            assert_eq!(
                paired[(b / 2) * 64 + (i / 16) * 32 + (b % 2) * 16 + i % 16],
                hi[b * 32 + i]
            );
        }
        // wasm's Q4 order: the same values, element i of a block at (i % 4) * 8 + i / 4.
        let (quads, _) = int_split(&x, Order::Quads, false, false);
        for (b, i) in (0..x.len() / QBLOCK).flat_map(|b| (0..QBLOCK).map(move |i| (b, i))) {
            assert_eq!(quads[b * 32 + (i % 4) * 8 + i / 4], hi[b * 32 + i]);
        }
        let mut bad = x.clone();
        bad[5] = f32::INFINITY;
        assert!(int_split(&bad, Order::Nibbles, false, true).1[0].is_nan());
    }
}
