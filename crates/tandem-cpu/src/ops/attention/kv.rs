//! A KV cache as attention reads it: f32, f16 widened on load, or q8_0 / q4_0 blocks
//! dequantized on load. Every reader takes an element as `d * code` in f32, exactly
//! [`tandem_core::QuantView::get`], so the fast kernels sum the very values the reference
//! sums; no block table is ever expanded to floats, only the vectors a kernel is about to use.

use half::f16;
use half::slice::HalfFloatSliceExt;
use tandem_core::dtype::QBLOCK;

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
    #[inline(always)]
    fn get(&self, e: usize) -> f32 {
        self.d[e / QBLOCK].to_f32() * (self.qs[e] as i8) as f32
    }
    #[inline(always)]
    fn row<'a>(&'a self, off: usize, hd: usize, buf: &'a mut [f32]) -> &'a [f32] {
        let buf = &mut buf[..hd];
        // Blocks of 32 never straddle a row's start when hd >= 32 (rows are whole blocks);
        // shorter heads share their block with the next head, so go element by element.
        for (i, o) in buf.iter_mut().enumerate() {
            *o = self.get(off + i);
        }
        buf
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(&self, e: usize) -> __m256 {
        // SAFETY: the caller's contract: e..e + 8 is one block's (e % 8 == 0).
        unsafe {
            let q = _mm_loadl_epi64(self.qs.as_ptr().add(e) as *const __m128i);
            let d = self.d.get_unchecked(e / QBLOCK).to_f32();
            _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)))
        }
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
        for (i, o) in buf.iter_mut().enumerate() {
            *o = self.get(off + i);
        }
        buf
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(&self, e: usize) -> __m256 {
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
            let d = self.d.get_unchecked(e / QBLOCK).to_f32();
            _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(n))
        }
    }
}
