// GGUF block types, shared by embed.wgsl and matmul.wgsl (appended to each; they define
// DTYPE and kword(i), the weight's word i), and the weight dtype numbers DTYPE takes, which
// are tandem_core's DType::kernel_code (a test checks them) and CUDA's DT_*.

const DT_F32: u32 = 0u;
const DT_F16: u32 = 1u;
const DT_Q8_0: u32 = 2u;
const DT_Q4_0: u32 = 3u;
const DT_Q4_1: u32 = 4u;
const DT_BF16: u32 = 5u;
// The GGUF block types, from DT_Q4_K on.
const DT_Q4_K: u32 = 6u;
const DT_Q6_K: u32 = 7u;
const DT_Q5_0: u32 = 8u;
const DT_Q5_1: u32 = 9u;
const DT_Q5_K: u32 = 10u;
const DT_Q2_K: u32 = 11u;
const DT_Q3_K: u32 = 12u;
const DT_IQ4_NL: u32 = 13u;
const DT_IQ4_XS: u32 = 14u;
//
// The blocks of tandem_core::quant::blocks: ggml's blocks padded to whole words, array of
// structs over the flat element index. A value is dl * q - ml per sub-block (ml = 0 for the
// types without a minimum), dl and ml each one rounded f32 product, as the CPU reference.
// Q4_K, 256 in 144 bytes: d f16, dmin f16, 12 bytes of 6-bit (scale, min) pairs, 128 bytes of
// nibbles (each 64 elements: 32 bytes, low nibbles first). Q6_K, 256 in 212 bytes: 128 bytes
// of low nibbles, 64 of 2-bit highs, 16 i8 scales, d f16. Q5_K, 256 in 176 bytes: Q4_K's d,
// dmin and scales, 32 bytes of fifth bits (element j's is bit j / 32 of byte j % 32), then
// Q4_K's nibbles. Q5_0 / Q5_1, 32 in 24 bytes: d f16, (Q5_1) m f16, qh u32 (element j's
// fifth bit is bit j), 16 bytes of nibbles (elements 0..16 low, 16..32 high); x = d (q - 16)
// / d q + m.
// Q2_K, 256 in 84 bytes: 16 bytes of (scale, min) nibble pairs (one per 16 elements), 64
// bytes of 2-bit levels (each 128 elements: 32 bytes, element j in field (j % 128) / 32 of
// byte j % 32), d f16, dmin f16. Q3_K, 256 in 112 bytes: a 32-byte mask (element j's bit is
// bit j / 32 of byte j % 32; clear means level - 4), Q2_K's 64 bytes of 2-bit levels, 12
// bytes of 6-bit signed scales (stored + 32: low nibbles in bytes 0..8, top 2 bits in bytes
// 8..12), d f16. IQ4_NL, 32 in 20 bytes: d f16, 16 bytes of 4-bit indices into IQ4_LEVELS
// (elements 0..16 low nibbles, 16..32 high). IQ4_XS, 256 in 136 bytes: d f16, u16 of the
// scales' top 2 bits, 4 bytes of their low nibbles (6-bit, stored + 32, one per 32
// elements), then 8 IQ4_NL-style runs of 16 index bytes.
fn wbyte(b: u32) -> u32 {
    return (kword(b / 4u) >> (8u * (b % 4u))) & 0xffu;
}

fn whalf(b: u32) -> f32 {
    return unpack2x16float(kword(b / 4u))[(b / 2u) & 1u];
}

// tandem_core::quant::iq4::IQ4_LEVELS as i8 bytes, four a word, index i in byte i % 4 of
// word i / 4: a vector in registers rather than an array a GPU may spill to local memory.
// (-127, -104, -83, -65), (-49, -35, -22, -10), (1, 13, 25, 38), (53, 69, 89, 113).
const IQ4_PACKED = vec4<u32>(0xbfad9881u, 0xf6eaddcfu, 0x26190d01u, 0x71594535u);

// The IQ4 levels of four 4-bit indices.
fn iq4_levels(i: vec4<u32>) -> vec4<f32> {
    let t = IQ4_PACKED;
    let words = vec4<u32>(t[i.x / 4u], t[i.y / 4u], t[i.z / 4u], t[i.w / 4u]);
    return vec4<f32>(bitcast<vec4<i32>>(words << (vec4<u32>(24u) - 8u * (i % vec4<u32>(4u)))) >> vec4<u32>(24u));
}

// (dl, ml) of the sub-block holding element j of the block at byte `base`, and where its
// levels lie: the byte of its 8-element run's first level and the bit shifts of its fields
// (hi_*: the high bits of Q5_K, Q6_K and Q3_K; other types point it at the low bytes, which
// keeps its read inside the block).
struct KSub {
    dl: f32,
    ml: f32,
    lo_byte: u32,
    lo_shift: u32,
    hi_byte: u32,
    hi_shift: u32,
}

// A 6-bit scale stored + 32, as its signed value.
fn scale6(low: u32, high: u32) -> f32 {
    return f32(i32(low | (high << 4u)) - 32);
}

fn kquant(base: u32, j: u32) -> KSub {
    var r: KSub;
    r.ml = 0.0;
    switch DTYPE {
        case DT_Q4_K, DT_Q5_K: {
            let s = j / 32u;
            var sc: u32;
            var mn: u32;
            if s < 4u {
                sc = wbyte(base + 4u + s) & 63u;
                mn = wbyte(base + 8u + s) & 63u;
            } else {
                sc = (wbyte(base + 8u + s) & 15u) | ((wbyte(base + s) >> 6u) << 4u);
                mn = (wbyte(base + 8u + s) >> 4u) | ((wbyte(base + 4u + s) >> 6u) << 4u);
            }
            r.dl = whalf(base) * f32(sc);
            r.ml = whalf(base + 2u) * f32(mn);
            let qs = select(16u, 48u, DTYPE == DT_Q5_K);
            r.lo_byte = base + qs + (j / 64u) * 32u + j % 32u;
            r.lo_shift = 4u * ((j / 32u) % 2u);
            r.hi_byte = base + 16u + j % 32u;
            r.hi_shift = j / 32u;
        }
        case DT_Q2_K: {
            // Q2_K: scale in the low nibble, min in the high one.
            let sc = wbyte(base + j / 16u);
            r.dl = whalf(base + 80u) * f32(sc & 15u);
            r.ml = whalf(base + 82u) * f32(sc >> 4u);
            r.lo_byte = base + 16u + (j / 128u) * 32u + j % 32u;
            r.lo_shift = 2u * ((j % 128u) / 32u);
            r.hi_byte = r.lo_byte;
            r.hi_shift = 0u;
        }
        case DT_Q3_K: {
            // Q3_K: sub-block s's low nibble is nibble s / 8 of byte s % 8, its top 2 bits
            // field s / 4 of byte 8 + s % 4.
            let s = j / 16u;
            let low = (wbyte(base + 96u + s % 8u) >> (4u * (s / 8u))) & 15u;
            let high = (wbyte(base + 104u + s % 4u) >> (2u * (s / 4u))) & 3u;
            r.dl = whalf(base + 108u) * scale6(low, high);
            r.lo_byte = base + 32u + (j / 128u) * 32u + j % 32u;
            r.lo_shift = 2u * ((j % 128u) / 32u);
            r.hi_byte = base + j % 32u;
            r.hi_shift = j / 32u;
        }
        case DT_IQ4_NL: {
            r.dl = whalf(base);
            r.lo_byte = base + 4u + j % 16u;
            r.lo_shift = 4u * (j / 16u);
            r.hi_byte = r.lo_byte;
            r.hi_shift = 0u;
        }
        case DT_IQ4_XS: {
            // IQ4_XS: sub-block s's low nibble is nibble s % 2 of byte 4 + s / 2, its top 2
            // bits field s of the u16 at byte 2 (the high half of word 0).
            let s = j / 32u;
            let low = (wbyte(base + 4u + s / 2u) >> (4u * (s % 2u))) & 15u;
            let high = (kword(base / 4u) >> (16u + 2u * s)) & 3u;
            r.dl = whalf(base) * scale6(low, high);
            r.lo_byte = base + 8u + 16u * s + j % 16u;
            r.lo_shift = 4u * ((j % 32u) / 16u);
            r.hi_byte = r.lo_byte;
            r.hi_shift = 0u;
        }
        default: {
            // Q6_K.
            let sc = bitcast<i32>(wbyte(base + 192u + j / 16u) << 24u) >> 24u;
            r.dl = whalf(base + 208u) * f32(sc);
            r.lo_byte = base + (j / 128u) * 64u + j % 64u;
            r.lo_shift = 4u * ((j % 128u) / 64u);
            r.hi_byte = base + 128u + (j / 128u) * 32u + j % 32u;
            r.hi_shift = 2u * ((j % 128u) / 32u);
        }
    }
    return r;
}

fn kstride() -> u32 {
    switch DTYPE {
        case DT_Q4_K: {
            return 144u;
        }
        case DT_Q6_K: {
            return 212u;
        }
        case DT_Q5_K: {
            return 176u;
        }
        case DT_Q2_K: {
            return 84u;
        }
        case DT_Q3_K: {
            return 112u;
        }
        case DT_IQ4_NL: {
            return 20u;
        }
        case DT_IQ4_XS: {
            return 136u;
        }
        default: {
            return 24u;
        }
    }
}

fn is_q5() -> bool {
    return DTYPE == DT_Q5_0 || DTYPE == DT_Q5_1;
}

fn kelems() -> u32 {
    return select(256u, 32u, is_q5() || DTYPE == DT_IQ4_NL);
}

// Q5_0 / Q5_1: the levels of elements j..j + 4 of the block at byte `base` (j % 4 == 0, all
// in one half), before Q5_0's offset.
fn q5_levels(base: u32, j: u32) -> vec4<f32> {
    let lw = kword((base + 8u + j % 16u) / 4u);
    let qh = kword(base / 4u + 1u);
    let lo = (vec4<u32>(lw) >> (vec4<u32>(0u, 8u, 16u, 24u) + 4u * (j / 16u))) & vec4<u32>(15u);
    let hi = (vec4<u32>(qh) >> (vec4<u32>(0u, 1u, 2u, 3u) + j)) & vec4<u32>(1u);
    return vec4<f32>(lo | (hi << vec4<u32>(4u)));
}

// The levels of the 4 elements whose low fields are in word lw (and high fields in hw).
fn klevels(lw: u32, hw: u32, k: KSub) -> vec4<f32> {
    let bytes = vec4<u32>(0u, 8u, 16u, 24u);
    let lo4 = (vec4<u32>(lw) >> (bytes + k.lo_shift)) & vec4<u32>(15u);
    switch DTYPE {
        case DT_Q4_K: {
            return vec4<f32>(lo4);
        }
        case DT_Q5_K: {
            let hi = (vec4<u32>(hw) >> (bytes + k.hi_shift)) & vec4<u32>(1u);
            return vec4<f32>(lo4 | (hi << vec4<u32>(4u)));
        }
        case DT_Q2_K: {
            return vec4<f32>(lo4 & vec4<u32>(3u));
        }
        case DT_Q3_K: {
            // A clear mask bit lowers the 2-bit level by 4.
            let hi = (vec4<u32>(hw) >> (bytes + k.hi_shift)) & vec4<u32>(1u);
            return vec4<f32>(vec4<i32>((lo4 & vec4<u32>(3u)) | (hi << vec4<u32>(2u))) - vec4<i32>(4));
        }
        case DT_IQ4_NL, DT_IQ4_XS: {
            return iq4_levels(lo4);
        }
        default: {
            let hi = (vec4<u32>(hw) >> (bytes + k.hi_shift)) & vec4<u32>(3u);
            return vec4<f32>(vec4<i32>(lo4 | (hi << vec4<u32>(4u))) - vec4<i32>(32));
        }
    }
}

// Flat element e, as the CPU reference computes it.
fn kvalue_at(e: u32) -> f32 {
    let base = (e / kelems()) * kstride();
    let j = e % kelems();
    if is_q5() {
        let q = q5_levels(base, j & ~3u)[j % 4u];
        if DTYPE == DT_Q5_0 {
            return whalf(base) * (q - 16.0);
        }
        return whalf(base) * q + whalf(base + 2u);
    }
    // The run of 4 holding j: its fields start on a word in every type.
    let k = kquant(base, j & ~3u);
    let q = klevels(kword(k.lo_byte / 4u), kword(k.hi_byte / 4u), k)[j % 4u];
    return k.dl * q - k.ml;
}
