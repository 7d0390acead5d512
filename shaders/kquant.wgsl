// GGUF block types, shared by embed.wgsl and matmul.wgsl (appended to each; they define
// DTYPE, 6 = Q4_K, 7 = Q6_K, 8 = Q5_0, 9 = Q5_1, 10 = Q5_K, and kword(i), the weight's word
// i).
//
// The blocks of tandem_core::quant::blocks: ggml's blocks padded to whole words, array of
// structs over the flat element index.
// Q4_K, 256 in 144 bytes: d f16, dmin f16, 12 bytes of 6-bit (scale, min) pairs, 128 bytes of
// nibbles (each 64 elements: 32 bytes, low nibbles first). Q6_K, 256 in 212 bytes: 128 bytes
// of low nibbles, 64 of 2-bit highs, 16 i8 scales, d f16. A value is dl * q - ml per
// sub-block. Q5_K, 256 in 176 bytes: Q4_K's d, dmin and scales, 32 bytes of fifth bits
// (element j's is bit j / 32 of byte j % 32), then Q4_K's nibbles. Q5_0 / Q5_1, 32 in 24 bytes: d f16, (Q5_1) m f16, qh u32 (element j's fifth bit
// is bit j), 16 bytes of nibbles (elements 0..16 low, 16..32 high); x = d (q - 16) / d q + m.
fn wbyte(b: u32) -> u32 {
    return (kword(b / 4u) >> (8u * (b % 4u))) & 0xffu;
}

fn whalf(b: u32) -> f32 {
    return unpack2x16float(kword(b / 4u))[(b / 2u) & 1u];
}

// (dl, ml) of the sub-block holding element j of the block at byte `base`, and where its
// levels lie: the byte of its 8-element run's first level and the bit shifts of its fields.
struct KSub {
    dl: f32,
    ml: f32,
    lo_byte: u32,
    lo_shift: u32,
    hi_byte: u32,
    hi_shift: u32,
}

fn kquant(base: u32, j: u32) -> KSub {
    var r: KSub;
    if DTYPE == 6u || DTYPE == 10u {
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
        let qs = select(16u, 48u, DTYPE == 10u);
        r.lo_byte = base + qs + (j / 64u) * 32u + j % 32u;
        r.lo_shift = 4u * ((j / 32u) % 2u);
        r.hi_byte = base + 16u + j % 32u;
        r.hi_shift = j / 32u;
    } else {
        let sc = bitcast<i32>(wbyte(base + 192u + j / 16u) << 24u) >> 24u;
        r.dl = whalf(base + 208u) * f32(sc);
        r.ml = 0.0;
        r.lo_byte = base + (j / 128u) * 64u + j % 64u;
        r.lo_shift = 4u * ((j % 128u) / 64u);
        r.hi_byte = base + 128u + (j / 128u) * 32u + j % 32u;
        r.hi_shift = 2u * ((j % 128u) / 32u);
    }
    return r;
}

fn kstride() -> u32 {
    switch DTYPE {
        case 6u: {
            return 144u;
        }
        case 7u: {
            return 212u;
        }
        case 10u: {
            return 176u;
        }
        default: {
            return 24u;
        }
    }
}

fn is_q5() -> bool {
    return DTYPE == 8u || DTYPE == 9u;
}

fn kelems() -> u32 {
    return select(256u, 32u, is_q5());
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
    let lo = (vec4<u32>(lw) >> (vec4<u32>(0u, 8u, 16u, 24u) + k.lo_shift)) & vec4<u32>(15u);
    if DTYPE == 6u {
        return vec4<f32>(lo);
    }
    if DTYPE == 10u {
        let hi = (vec4<u32>(hw) >> (vec4<u32>(0u, 8u, 16u, 24u) + k.hi_shift)) & vec4<u32>(1u);
        return vec4<f32>(lo | (hi << vec4<u32>(4u)));
    }
    let hi = (vec4<u32>(hw) >> (vec4<u32>(0u, 8u, 16u, 24u) + k.hi_shift)) & vec4<u32>(3u);
    return vec4<f32>(vec4<i32>(lo | (hi << vec4<u32>(4u))) - vec4<i32>(32));
}

// Flat element e, as the CPU reference computes it.
fn kvalue_at(e: u32) -> f32 {
    let base = (e / kelems()) * kstride();
    let j = e % kelems();
    if is_q5() {
        let q = q5_levels(base, j & ~3u)[j % 4u];
        if DTYPE == 8u {
            return whalf(base) * (q - 16.0);
        }
        return whalf(base) * q + whalf(base + 2u);
    }
    let k = kquant(base, j);
    var q = (wbyte(k.lo_byte) >> k.lo_shift) & 15u;
    if DTYPE == 7u {
        q = q | (((wbyte(k.hi_byte) >> k.hi_shift) & 3u) << 4u);
        return k.dl * (f32(q) - 32.0);
    }
    if DTYPE == 10u {
        q = q | (((wbyte(k.hi_byte) >> k.hi_shift) & 1u) << 4u);
    }
    return k.dl * f32(q) - k.ml;
}
