// Forbidding the tokens a row's constraint rejects: x[rows[i] * width + j] = -inf where bit
// j % 32 of mask[i * words + j / 32] is clear. Set bits and unlisted rows keep their bits.
// Dispatch: (ceil(width / WG), n) workgroups; one invocation per (listed row, token).

struct Params {
    n: u32,
    width: u32,
    words: u32,
    // -inf's bits (0xff800000), from the host: WGSL has no infinity literal, and a constant
    // expression that evaluates to one is a shader-creation error in browsers.
    neg_inf: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read> mask: array<u32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = wid.x * WG + lid;
    let i = wid.y;
    if j >= p.width || i >= p.n {
        return;
    }
    if ((mask[i * p.words + j / 32u] >> (j % 32u)) & 1u) == 0u {
        x[rows[i] * p.width + j] = bitcast<f32>(p.neg_inf);
    }
}
