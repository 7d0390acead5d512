//! A KV cache as attention reads it: f32, f16 widened on load, or q8_0 / q4_0 blocks and fp8
//! heads dequantized on load. Every reader takes an element as `d * code` in f32, exactly
//! [`tandem_core::QuantView::get`] and [`tandem_core::quant::kv::Fp8View::get`], so the fast
//! kernels sum the very values the reference sums; no block table is ever expanded to floats,
//! only the vectors a kernel is about to use. Two AVX2 decode paths take a block's codes and
//! scale apart instead: V's weights times a block's scale, then its codes (one rounding more
//! per weight), and a q8_0 K cache's integer products (decode_q8.rs, its own precision class).

use half::f16;
use half::slice::HalfFloatSliceExt;
use tandem_core::dtype::QBLOCK;
use tandem_core::quant::kv::{e4m3_value, Fp8View};

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// A cache's elements (see the module).
pub(crate) trait KvSrc: Copy + Sync {
    /// Element `e`.
    fn get(&self, e: usize) -> f32;
    /// Elements off..off + hd as f32: the cache itself for f32, else decoded into `buf`.
    fn row<'a>(&'a self, off: usize, hd: usize, buf: &'a mut [f32]) -> &'a [f32];
    /// Elements e..e + 8 (e a multiple of 8) as f32.
    ///
    /// # Safety
    /// The CPU must have AVX2 and F16C, and the eight elements must be in the cache.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(&self, e: usize) -> __m256;
    /// Whether the cache is blocks of 32 values with a scale each, read by [`KvSrc::codes8`]
    /// and [`KvSrc::block_scale`].
    #[cfg(target_arch = "x86_64")]
    const BLOCKS: bool = false;
    /// Elements e..e + 8 (e a multiple of 8, inside one block) before their block's scale:
    /// `load8(e)` is `block_scale(e) * codes8(e)`, exactly, for a blocked cache.
    ///
    /// # Safety
    /// As [`KvSrc::load8`].
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn codes8(&self, e: usize) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { self.load8(e) }
    }
    /// The scale of element e's block (1 where the cache has none).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn block_scale(&self, e: usize) -> f32 {
        let _ = e;
        1.0
    }
    /// The cache as q8_0 blocks, where it is one.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn q8(&self) -> Option<Q8<'_>> {
        None
    }
    /// Asks for the cache lines of elements e..e + n (codes and scales) to be brought in:
    /// a hint, never a fault, whatever the addresses.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn prefetch(&self, e: usize, n: usize) {
        let _ = (e, n);
    }
}

/// Prefetches the lines of `bytes` bytes from `start` (a hint: any address is harmless).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_bytes(start: *const u8, bytes: usize) {
    if bytes > 0 {
        let mut o = 0;
        while o < bytes {
            // SAFETY: prefetching is a hint that never faults, for any address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(o) as *const i8) };
            o += 64;
        }
        // SAFETY: as above; the last byte's line when the span straddles one more.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(bytes - 1) as *const i8) };
    }
}

impl KvSrc for &[f32] {
    #[inline(always)]
    fn get(&self, e: usize) -> f32 {
        self[e]
    }
    #[inline(always)]
    fn row<'a>(&'a self, off: usize, hd: usize, _: &'a mut [f32]) -> &'a [f32] {
        &self[off..off + hd]
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(&self, e: usize) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_loadu_ps(self.as_ptr().add(e)) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn prefetch(&self, e: usize, n: usize) {
        prefetch_bytes(self.as_ptr().wrapping_add(e) as *const u8, n * 4);
    }
}

impl KvSrc for &[f16] {
    #[inline(always)]
    fn get(&self, e: usize) -> f32 {
        self[e].to_f32()
    }
    #[inline(always)]
    fn row<'a>(&'a self, off: usize, hd: usize, buf: &'a mut [f32]) -> &'a [f32] {
        let buf = &mut buf[..hd];
        self[off..off + hd].convert_to_f32_slice(buf);
        buf
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(&self, e: usize) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(self.as_ptr().add(e) as *const __m128i)) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn prefetch(&self, e: usize, n: usize) {
        prefetch_bytes(self.as_ptr().wrapping_add(e) as *const u8, n * 2);
    }
}

/// Element e's block scale in all eight lanes, widened by F16C (exact, as `f16::to_f32`).
///
/// # Safety
/// The CPU must have AVX2 and F16C; e / 32 indexes `d`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scale8(d: &[f16], e: usize) -> __m256 {
    // SAFETY: the caller's contract.
    unsafe { _mm256_cvtph_ps(_mm_set1_epi16(d.get_unchecked(e / QBLOCK).to_bits() as i16)) }
}

/// Calls `f(block, range)` for the runs of elements off..off + hd (as offsets from off) that
/// share a block scale: the whole row's blocks when heads are whole blocks, one block shared
/// with the neighbouring heads when they are shorter.
#[inline(always)]
fn for_blocks(off: usize, hd: usize, mut f: impl FnMut(usize, std::ops::Range<usize>)) {
    let mut i = 0;
    while i < hd {
        let b = (off + i) / QBLOCK;
        let end = ((b + 1) * QBLOCK - off).min(hd);
        f(b, i..end);
        i = end;
    }
}

/// A q8_0 cache: an i8 code per element, an f16 scale per 32.
#[derive(Clone, Copy)]
pub(crate) struct Q8<'a> {
    pub qs: &'a [u8],
    pub d: &'a [f16],
}

/// A q4_0 cache: a nibble per element (even elements low), minus 8; an f16 scale per 32.
#[derive(Clone, Copy)]
pub(crate) struct Q4<'a> {
    pub qs: &'a [u8],
    pub d: &'a [f16],
}

impl KvSrc for Q8<'_> {
    #[cfg(target_arch = "x86_64")]
    const BLOCKS: bool = true;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn codes8(&self, e: usize) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe {
            let q = _mm_loadl_epi64(self.qs.as_ptr().add(e) as *const __m128i);
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn block_scale(&self, e: usize) -> f32 {
        self.d[e / QBLOCK].to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn q8(&self) -> Option<Q8<'_>> {
        Some(*self)
    }
    #[inline(always)]
    fn get(&self, e: usize) -> f32 {
        self.d[e / QBLOCK].to_f32() * (self.qs[e] as i8) as f32
    }
    #[inline(always)]
    fn row<'a>(&'a self, off: usize, hd: usize, buf: &'a mut [f32]) -> &'a [f32] {
        let buf = &mut buf[..hd];
        for_blocks(off, hd, |b, r| {
            let d = self.d[b].to_f32();
            for (o, &q) in buf[r.clone()].iter_mut().zip(&self.qs[off + r.start..off + r.end]) {
                *o = d * (q as i8) as f32;
            }
        });
        buf
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(&self, e: usize) -> __m256 {
        // SAFETY: the caller's contract: e..e + 8 is one block's (e % 8 == 0).
        unsafe { _mm256_mul_ps(scale8(self.d, e), self.codes8(e)) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn prefetch(&self, e: usize, n: usize) {
        prefetch_bytes(self.qs.as_ptr().wrapping_add(e), n);
        prefetch_bytes(self.d.as_ptr().wrapping_add(e / QBLOCK) as *const u8, 2);
    }
}

impl KvSrc for Q4<'_> {
    #[inline(always)]
    fn get(&self, e: usize) -> f32 {
        let b = self.qs[e / 2];
        let n = if e.is_multiple_of(2) { b & 15 } else { b >> 4 };
        self.d[e / QBLOCK].to_f32() * (n as f32 - 8.0)
    }
    #[inline(always)]
    fn row<'a>(&'a self, off: usize, hd: usize, buf: &'a mut [f32]) -> &'a [f32] {
        let buf = &mut buf[..hd];
        for_blocks(off, hd, |b, r| {
            let d = self.d[b].to_f32();
            for i in r {
                let e = off + i;
                let n = self.qs[e / 2] >> (4 * (e % 2)) & 15;
                buf[i] = d * (n as f32 - 8.0);
            }
        });
        buf
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(&self, e: usize) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_mul_ps(scale8(self.d, e), self.codes8(e)) }
    }
    #[cfg(target_arch = "x86_64")]
    const BLOCKS: bool = true;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn codes8(&self, e: usize) -> __m256 {
        // SAFETY: the caller's contract: e..e + 8 is one block's four bytes (e % 8 == 0).
        unsafe {
            let four = (self.qs.as_ptr().add(e / 2) as *const u32).read_unaligned();
            // Each byte twice, as eight u32 lanes; even lanes keep the low nibble, odd the high.
            let bytes = _mm_shuffle_epi8(
                _mm_cvtsi32_si128(four as i32),
                _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1, -1, -1, -1, -1),
            );
            let lanes = _mm256_cvtepu8_epi32(bytes);
            let shifted = _mm256_srlv_epi32(lanes, _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4));
            let n = _mm256_sub_epi32(
                _mm256_and_si256(shifted, _mm256_set1_epi32(15)),
                _mm256_set1_epi32(8),
            );
            _mm256_cvtepi32_ps(n)
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn block_scale(&self, e: usize) -> f32 {
        self.d[e / QBLOCK].to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn prefetch(&self, e: usize, n: usize) {
        prefetch_bytes(self.qs.as_ptr().wrapping_add(e / 2), n.div_ceil(2));
        prefetch_bytes(self.d.as_ptr().wrapping_add(e / QBLOCK) as *const u8, 2);
    }
}

/// 2^120: e4m3's exponent bias (7) to f32's (127).
#[cfg(target_arch = "x86_64")]
const TWO_POW_120: f32 = f32::from_bits((127 + 120) << 23);

/// An fp8 cache: an e4m3 code per element, an f32 scale per head vector.
#[derive(Clone, Copy)]
pub(crate) struct Fp8<'a> {
    codes: &'a [u8],
    scales: &'a [f32],
    hd: usize,
    /// log2(hd) where hd is a power of two: a shift finds a head, not a division.
    shift: Option<u32>,
}

impl<'a> From<Fp8View<'a>> for Fp8<'a> {
    fn from(v: Fp8View<'a>) -> Self {
        let hd = v.head_dim;
        let shift = hd.is_power_of_two().then(|| hd.trailing_zeros());
        Fp8 { codes: v.codes, scales: v.scales, hd, shift }
    }
}

impl Fp8<'_> {
    /// The scale of element e's head.
    #[inline(always)]
    fn scale(&self, e: usize) -> f32 {
        self.scales[self.shift.map_or_else(|| e / self.hd, |s| e >> s)]
    }
}

impl KvSrc for Fp8<'_> {
    #[inline(always)]
    fn get(&self, e: usize) -> f32 {
        self.scale(e) * e4m3_value(self.codes[e])
    }
    #[inline(always)]
    fn row<'a>(&'a self, off: usize, hd: usize, buf: &'a mut [f32]) -> &'a [f32] {
        // off..off + hd is one head vector (readers pass head starts): one scale for it.
        let (buf, s) = (&mut buf[..hd], self.scale(off));
        for (o, &c) in buf.iter_mut().zip(&self.codes[off..off + hd]) {
            *o = s * e4m3_value(c);
        }
        buf
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(&self, e: usize) -> __m256 {
        // SAFETY: the caller's contract: e..e + 8 are codes of one head (heads are multiples
        // of 8 values on this path).
        unsafe {
            let q = _mm_loadl_epi64(self.codes.as_ptr().add(e) as *const __m128i);
            let c = _mm256_cvtepu8_epi32(q);
            // The code's exponent and mantissa moved up to an f32's (sign apart): as an f32
            // that is the value times 2^-120, exactly, subnormal codes included (they become
            // f32 subnormals); one exact multiply rebiases them all.
            let em = _mm256_slli_epi32(_mm256_and_si256(c, _mm256_set1_epi32(0x7F)), 20);
            let mag = _mm256_mul_ps(_mm256_castsi256_ps(em), _mm256_set1_ps(TWO_POW_120));
            let sign = _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_and_si256(c, _mm256_set1_epi32(0x80)),
                24,
            ));
            _mm256_mul_ps(_mm256_set1_ps(self.scale(e)), _mm256_or_ps(mag, sign))
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn prefetch(&self, e: usize, n: usize) {
        prefetch_bytes(self.codes.as_ptr().wrapping_add(e), n);
        let head = self.shift.map_or_else(|| e / self.hd, |s| e >> s);
        prefetch_bytes(self.scales.as_ptr().wrapping_add(head) as *const u8, 4);
    }
}
