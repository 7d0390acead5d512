// Rotary position embedding in place, rotate-half layout: in each head, element j < half
// pairs with j + half (half = rot_dim / 2), rotated by angle positions[token] * inv_freq[j],
// cos and sin multiplied by `scale` (LongRoPE's attention factor; 1 otherwise). Elements
// rot_dim..head_dim pass through (partial rotary).
// x: [n, heads, head_dim]; positions: [n]; inv_freq: [half].
// One invocation per (token, head, j < half); total = n * heads * half.

struct Params {
    total: u32,
    heads: u32,
    half: u32,
    head_dim: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;

override WG: u32 = 256u;

// sin and cos of `a` to about an ulp, not the GPU's builtins: those lose digits (SwiftShader's,
// Chrome's software WebGPU, by ~1e-4 relative), enough to miss rope's tolerance. Cody-Waite
// reduction by pi/2 in three parts (k * 1.5703125 is exact for the angles rope sees), then
// the Cephes sinf/cosf polynomials on [-pi/4, pi/4].
fn sin_cos(a: f32) -> vec2<f32> {
    let k = round(a * 0.6366197723675814);
    let r = ((a - k * 1.5703125) - k * 0.0004838267923332751) - k * 2.5632829192545614e-12;
    let z = r * r;
    let s = r + r * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * -1.9515295891e-4));
    let c = 1.0 - 0.5 * z + z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5));
    switch i32(k) & 3 {
        case 0: { return vec2<f32>(s, c); }
        case 1: { return vec2<f32>(c, -s); }
        case 2: { return vec2<f32>(-s, -c); }
        default: { return vec2<f32>(-c, s); }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i >= p.total {
        return;
    }
    let j = i % p.half;
    let head = i / p.half; // token * heads + h
    let token = head / p.heads;
    let angle = f32(positions[token]) * inv_freq[j];
    let sc = sin_cos(angle);
    let s = sc.x * p.scale;
    let c = sc.y * p.scale;
    let base = head * p.head_dim;
    let a = x[base + j];
    let b = x[base + j + p.half];
    x[base + j] = a * c - b * s;
    x[base + j + p.half] = a * s + b * c;
}
