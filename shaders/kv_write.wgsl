// Writes the step's keys and values into their paged cache rows.
// k, v: [n, row] f32 (row = kv_heads * head_dim); cache_k, cache_v: [rows, row] as u32 words
// (f32 bits, or two f16 per word); slots: [n], token i goes to cache row slots[i].
// main_f32: one invocation per element (total = n * row).
// main_f16: one invocation per pair of elements (total = n * row / 2; row is even).
// main_q8_0, main_q4_0: one invocation per block of 32 elements (total = n * row / 32; row is
// whole blocks), quantized as tandem_core::quant::kv::quantize_block into its split layout:
// the codes (q8_0: an i8 per element, 4 a word; q4_0: a nibble, even elements low, 8 a word),
// then from word k_scales / v_scales one f16 scale per block, two a word.
// main_fp8: one invocation per head vector (total = n * row / head_dim), quantized as
// tandem_core::quant::kv::quantize_head: an e4m3 code per element, 4 a word (a head is a
// multiple of 4 values, so no two invocations share a word), then from word k_scales /
// v_scales one f32 scale per head vector.
// SIDES: which caches a dispatch writes (1 keys, 2 values, 3 both): caches of two dtypes are
// written by two dispatches, each with its own dtype's entry point.

struct Params {
    total: u32,
    row: u32,
    // Word offsets of the scales in cache_k and cache_v (quantized caches only).
    k_scales: u32,
    v_scales: u32,
    head_dim: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> cache_k: array<u32>;
@group(0) @binding(4) var<storage, read_write> cache_v: array<u32>;
@group(0) @binding(5) var<storage, read> slots: array<u32>;
// The caches as the quantized entry points see them (bindings may alias across entry points):
// the two blocks of a scale word may belong to rows written by different invocations, or one
// to a row not written at all, so each block sets its half of the word with atomics.
@group(0) @binding(3) var<storage, read_write> qcache_k: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> qcache_v: array<atomic<u32>>;

override WG: u32 = 256u;
override SIDES: u32 = 3u;

fn writes(is_k: bool) -> bool {
    return (SIDES & select(2u, 1u, is_k)) != 0u;
}

// f32 -> f16 bits, round to nearest even, exactly as the `half` crate converts (WGSL leaves the
// rounding of pack2x16float to the implementation, and the suite checks cache bytes exactly).
fn f16_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let exp = (b >> 23u) & 0xffu;
    let man = b & 0x7fffffu;
    if exp == 0xffu {
        // Inf stays Inf; NaN keeps its top mantissa bits and stays quiet.
        return sign | 0x7c00u | select(0u, 0x200u | (man >> 13u), man != 0u);
    }
    let e = i32(exp) - 127 + 15;
    if e >= 31 {
        return sign | 0x7c00u;
    }
    if e <= 0 {
        if 14 - e > 24 {
            return sign; // underflows to signed zero
        }
        let m = man | 0x800000u;
        let shift = u32(14 - e);
        let half_m = m >> shift;
        let rem = m & ((1u << shift) - 1u);
        let mid = 1u << (shift - 1u);
        var r = half_m;
        if rem > mid || (rem == mid && (half_m & 1u) == 1u) {
            r += 1u;
        }
        return sign | r;
    }
    let half_m = man >> 13u;
    let rem = man & 0x1fffu;
    var r = (u32(e) << 10u) | half_m;
    if rem > 0x1000u || (rem == 0x1000u && (half_m & 1u) == 1u) {
        r += 1u; // may carry into the exponent, up to Inf: still correct
    }
    return sign | r;
}

fn invocation(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn main_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = invocation(wid, nwg, lid);
    if i >= p.total {
        return;
    }
    let token = i / p.row;
    let dst = slots[token] * p.row + i % p.row;
    if writes(true) {
        cache_k[dst] = bitcast<u32>(k[i]);
    }
    if writes(false) {
        cache_v[dst] = bitcast<u32>(v[i]);
    }
}

@compute @workgroup_size(WG)
fn main_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = invocation(wid, nwg, lid);
    if i >= p.total {
        return;
    }
    let e = 2u * i;
    let token = e / p.row;
    let dst = (slots[token] * p.row + e % p.row) / 2u;
    if writes(true) {
        cache_k[dst] = f16_bits(k[e]) | (f16_bits(k[e + 1u]) << 16u);
    }
    if writes(false) {
        cache_v[dst] = f16_bits(v[e]) | (f16_bits(v[e + 1u]) << 16u);
    }
}

const QBLOCK: u32 = 32u;
const F16_NAN: u32 = 0x7e00u;

@compute @workgroup_size(WG)
fn main_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    write_block(invocation(wid, nwg, lid), false);
}

@compute @workgroup_size(WG)
fn main_q4_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    write_block(invocation(wid, nwg, lid), true);
}

// Block i of the step's keys and values into its cache row's block, in the SIDES caches.
fn write_block(i: u32, q4: bool) {
    if i >= p.total {
        return;
    }
    let e = i * QBLOCK;
    let dst = (slots[e / p.row] * p.row + e % p.row) / QBLOCK;
    if writes(true) {
        quantize(true, e, dst, q4);
    }
    if writes(false) {
        quantize(false, e, dst, q4);
    }
}

fn input(is_k: bool, e: u32) -> f32 {
    if is_k {
        return k[e];
    }
    return v[e];
}

fn store(is_k: bool, w: u32, x: u32) {
    if is_k {
        atomicStore(&qcache_k[w], x);
    } else {
        atomicStore(&qcache_v[w], x);
    }
}

// Block b's half of its scale word; the other half stays as it is.
fn store_scale(is_k: bool, b: u32, bits: u32) {
    let w = select(p.v_scales, p.k_scales, is_k) + b / 2u;
    let shift = 16u * (b & 1u);
    let keep = ~(0xffffu << shift);
    if is_k {
        atomicAnd(&qcache_k[w], keep);
        atomicOr(&qcache_k[w], bits << shift);
    } else {
        atomicAnd(&qcache_v[w], keep);
        atomicOr(&qcache_v[w], bits << shift);
    }
}

// Rust's f32::round (half away from zero; WGSL's round() is half to even). y - trunc(y) is
// exact, where floor(|y| + 0.5) would round 0.49999997 up.
fn round_away(y: f32) -> f32 {
    let t = trunc(y);
    return t + select(0.0, sign(y), abs(y - t) >= 0.5);
}

// Input elements e..e + 32 of k or v as cache block b: quantize_block's arithmetic, in its
// order (f32 throughout; the codes multiply by the reciprocal of d).
fn quantize(is_k: bool, e: u32, b: u32, q4: bool) {
    var amax = 0.0;
    var m = 0.0; // the value of largest magnitude, the first of equals
    var finite = true;
    for (var j = 0u; j < QBLOCK; j++) {
        let x = input(is_k, e + j);
        // An infinity or a NaN: every exponent bit set (WGSL has no isNan).
        finite = finite && (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
        amax = max(amax, abs(x));
        if abs(x) > abs(m) {
            m = x;
        }
    }
    // A non-finite value makes the whole block NaN (a NaN scale; codes 0, or 8 for q4_0).
    if q4 {
        let d = m / -8.0;
        let id = select(0.0, 1.0 / d, d != 0.0);
        for (var w = 0u; w < QBLOCK / 8u; w++) {
            var word = 0x88888888u;
            if finite {
                word = 0u;
                for (var c = 0u; c < 8u; c++) {
                    let x = input(is_k, e + 8u * w + c);
                    let q = clamp(i32(trunc(x * id + 8.5)), 0, 15);
                    word |= u32(q) << (4u * c);
                }
            }
            store(is_k, b * (QBLOCK / 8u) + w, word);
        }
        store_scale(is_k, b, select(F16_NAN, f16_bits(d), finite));
    } else {
        let d = amax / 127.0;
        let id = select(0.0, 1.0 / d, d > 0.0);
        for (var w = 0u; w < QBLOCK / 4u; w++) {
            var word = 0u;
            if finite {
                for (var c = 0u; c < 4u; c++) {
                    let x = input(is_k, e + 4u * w + c);
                    let q = i32(clamp(round_away(x * id), -127.0, 127.0));
                    word |= (bitcast<u32>(q) & 0xffu) << (8u * c);
                }
            }
            store(is_k, b * (QBLOCK / 4u) + w, word);
        }
        store_scale(is_k, b, select(F16_NAN, f16_bits(d), finite));
    }
}

const E4M3_MAX: f32 = 448.0;
const F32_NAN: u32 = 0x7fc00000u;

@compute @workgroup_size(WG)
fn main_fp8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = invocation(wid, nwg, lid);
    if i >= p.total {
        return;
    }
    let e = i * p.head_dim;
    let dst = slots[e / p.row] * p.row + e % p.row;
    if writes(true) {
        quantize_head(true, e, dst);
    }
    if writes(false) {
        quantize_head(false, e, dst);
    }
}

// Input elements e..e + head_dim of k or v as the cache head starting at element dst:
// quantize_head's arithmetic, in its order. The head is whole words of codes and its scale a
// word of its own, so plain stores suffice.
fn quantize_head(is_k: bool, e: u32, dst: u32) {
    var amax = 0.0;
    var finite = true;
    for (var j = 0u; j < p.head_dim; j++) {
        let x = input(is_k, e + j);
        finite = finite && (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
        amax = max(amax, abs(x));
    }
    // A non-finite value makes the whole head NaN: a NaN scale (f32::NAN's bits), codes 0.
    let s = div_rn(amax, E4M3_MAX);
    // A head so small that 1 / s overflows (or all zeros) gets zero codes: 0 * inf is NaN.
    var inv = 0.0;
    if s > 0.0 {
        inv = div_rn(1.0, s);
        if (bitcast<u32>(inv) & 0x7f800000u) == 0x7f800000u {
            inv = 0.0;
        }
    }
    for (var w = 0u; w < p.head_dim / 4u; w++) {
        var word = 0u;
        if finite {
            for (var c = 0u; c < 4u; c++) {
                word |= e4m3(input(is_k, e + 4u * w + c) * inv) << (8u * c);
            }
        }
        if is_k {
            cache_k[dst / 4u + w] = word;
        } else {
            cache_v[dst / 4u + w] = word;
        }
    }
    let scale = select(F32_NAN, bitcast<u32>(s), finite);
    let at = select(p.v_scales, p.k_scales, is_k) + dst / p.head_dim;
    if is_k {
        cache_k[at] = scale;
    } else {
        cache_v[at] = scale;
    }
}

// a / b correctly rounded (to nearest, ties to even) for positive normal a and b with a
// normal quotient: WGSL allows division 2.5 ulps of error, and the scale and its reciprocal
// must be the CPU's bit for bit (the codes are compared exactly). The significands are divided
// bit by bit in integers; zeros, subnormals and non-finite operands or quotients, which no
// head of ordinary magnitudes meets, fall back to `/`.
fn div_rn(a: f32, b: f32) -> f32 {
    let ea = bitcast<u32>(a) >> 23u;
    let eb = bitcast<u32>(b) >> 23u;
    var ma = (bitcast<u32>(a) & 0x7fffffu) | 0x800000u;
    let mb = (bitcast<u32>(b) & 0x7fffffu) | 0x800000u;
    var e = i32(ea) - i32(eb) + 127;
    if ma < mb {
        // The quotient's leading bit comes one place lower: ma / mb now lies in [1, 2).
        ma <<= 1u;
        e -= 1;
    }
    if ea == 0u || eb == 0u || ea >= 255u || eb >= 255u || e < 1 || e > 254 {
        return a / b;
    }
    // 24 quotient bits (the first is 1); r stays below 2 * mb < 2^25.
    var q = 0u;
    var r = ma;
    for (var i = 0u; i < 24u; i++) {
        q <<= 1u;
        if r >= mb {
            r -= mb;
            q |= 1u;
        }
        r <<= 1u;
    }
    // r is twice the remainder: above mb, more than half an ulp remains.
    if r > mb || (r == mb && (q & 1u) == 1u) {
        q += 1u;
    }
    // q = 2^24 after rounding carries into the exponent, as it must.
    return bitcast<f32>((u32(e) << 23u) + q - 0x800000u);
}

// y as an e4m3 code, round to nearest even, saturating at 0x7e (448) for the |y| a little
// over 448 that rounding the scale can leave: tandem_core's kernel_e4m3, bit for bit.
fn e4m3(y: f32) -> u32 {
    let b = bitcast<u32>(y);
    let sign = (b >> 24u) & 0x80u;
    let a = abs(y);
    if a < 1.0 / 64.0 {
        // Subnormal codes (and zero): steps of 2^-9 (a * 512 is exact; round() ties to even);
        // 8 steps is the least normal code, 0x08.
        return sign | u32(round(a * 512.0));
    }
    // Rebias the exponent (127 -> 7) and round the mantissa to 3 bits in one integer add.
    let m = b & 0x7fffffffu;
    let r = m + 0x7ffffu + ((m >> 20u) & 1u);
    return sign | min((r >> 20u) - (120u << 3u), 0x7eu);
}
