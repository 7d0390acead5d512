// Cache element loads, appended to attention_decode.wgsl and attention_prefill.wgsl (which
// bind cache_k and cache_v as u32 words and give, in p.k_scales and p.v_scales, the word
// offsets of a quantized cache's scales, and in p.head_dim the values of a head). K_DTYPE and
// V_DTYPE are the caches' DType::kernel_code: f32 bits, two f16 a word, or
// tandem_core::quant::kv's split layouts: the codes (q8_0 an i8 and q4_0 a nibble per element,
// then one f16 scale d per 32 elements; fp8 an e4m3 byte per element, then one f32 scale d per
// head vector). A quantized element is read as d * code where it is loaded, exactly as
// QuantView::get and Fp8View::get compute it.

const KV_F32: u32 = 0u;
const KV_F16: u32 = 1u;
const KV_Q8_0: u32 = 2u;
const KV_Q4_0: u32 = 3u;
const KV_FP8: u32 = 15u;

override K_DTYPE: u32 = KV_F32;
override V_DTYPE: u32 = KV_F32;

fn kv_word(is_k: bool, w: u32) -> u32 {
    if is_k {
        return cache_k[w];
    }
    return cache_v[w];
}

// Element e of cache_k (is_k) or cache_v.
fn kv_load(is_k: bool, e: u32) -> f32 {
    let dtype = select(V_DTYPE, K_DTYPE, is_k);
    switch dtype {
        case KV_F16: {
            return unpack2x16float(kv_word(is_k, e / 2u))[e & 1u];
        }
        case KV_Q8_0, KV_Q4_0: {
            let b = e / 32u;
            let scales = kv_word(is_k, select(p.v_scales, p.k_scales, is_k) + b / 2u);
            let d = f16_to_f32(extractBits(scales, 16u * (b & 1u), 16u));
            var code: i32;
            if dtype == KV_Q8_0 {
                code = extractBits(bitcast<i32>(kv_word(is_k, e / 4u)), 8u * (e & 3u), 8u);
            } else {
                code = i32(extractBits(kv_word(is_k, e / 8u), 4u * (e & 7u), 4u)) - 8;
            }
            return d * f32(code);
        }
        case KV_FP8: {
            let scales = select(p.v_scales, p.k_scales, is_k);
            let d = bitcast<f32>(kv_word(is_k, scales + e / p.head_dim));
            return d * e4m3_to_f32(extractBits(kv_word(is_k, e / 4u), 8u * (e & 3u), 8u));
        }
        default: {
            return bitcast<f32>(kv_word(is_k, e));
        }
    }
}

// f16 bits as f32, exactly: subnormal scales included (unpack2x16float may flush them), and
// a NaN scale (a block that held a NaN or an infinity) stays NaN.
fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let exp = (h >> 10u) & 0x1fu;
    let man = h & 0x3ffu;
    if exp == 0u {
        let x = ldexp(f32(man), -24);
        return select(x, -x, sign != 0u);
    }
    if exp == 31u {
        return bitcast<f32>(sign | 0x7f800000u | (man << 13u));
    }
    return bitcast<f32>(sign | ((exp + 112u) << 23u) | (man << 13u));
}

// An e4m3 code's value, exactly (the codes 0x7f and 0xff, NaN, are never written): subnormal
// codes are em * 2^-9 (an exact product); normal ones move their exponent and mantissa into
// f32's fields, the exponent rebiased from 7 to 127.
fn e4m3_to_f32(c: u32) -> f32 {
    let em = c & 0x7fu;
    var mag = f32(em) * (1.0 / 512.0);
    if em >= 8u {
        mag = bitcast<f32>((em << 20u) + (120u << 23u));
    }
    return bitcast<f32>(bitcast<u32>(mag) | ((c & 0x80u) << 24u));
}
