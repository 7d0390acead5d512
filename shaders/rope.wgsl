// Rotary position embedding in place, rotate-half layout: in each head, element j pairs with
// j + head_dim/2, rotated by angle positions[token] * inv_freq[j].
// x: [n, heads, head_dim]; positions: [n]; inv_freq: [head_dim / 2].
// One invocation per (token, head, j < head_dim/2); total = n * heads * half.

struct Params {
    total: u32,
    heads: u32,
    half: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;

override WG: u32 = 256u;

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
    let s = sin(angle);
    let c = cos(angle);
    let base = head * 2u * p.half;
    let a = x[base + j];
    let b = x[base + j + p.half];
    x[base + j] = a * c - b * s;
    x[base + j + p.half] = a * s + b * c;
}
