// Writes the step's keys and values into their paged cache rows.
// k, v: [n, row] f32 (row = kv_heads * head_dim); cache_k, cache_v: [rows, row] as u32 words
// (f32 bits, or two f16 per word); slots: [n], token i goes to cache row slots[i].
// main_f32: one invocation per element (total = n * row).
// main_f16: one invocation per pair of elements (total = n * row / 2; row is even).

struct Params {
    total: u32,
    row: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> cache_k: array<u32>;
@group(0) @binding(4) var<storage, read_write> cache_v: array<u32>;
@group(0) @binding(5) var<storage, read> slots: array<u32>;

override WG: u32 = 256u;

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
    cache_k[dst] = bitcast<u32>(k[i]);
    cache_v[dst] = bitcast<u32>(v[i]);
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
    cache_k[dst] = f16_bits(k[e]) | (f16_bits(k[e + 1u]) << 16u);
    cache_v[dst] = f16_bits(v[e]) | (f16_bits(v[e + 1u]) << 16u);
}
