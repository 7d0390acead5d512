// out = gelu_tanh(gate) * up = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))) * up,
// elementwise over len values (Gemma's gated MLP, PyTorch's gelu(approximate="tanh")).
// tanh_f32: shaders/tanh.wgsl, appended to this file.
// Dispatch: ceil(len / WG) workgroups, folded into x and y when above 65535.

struct Params {
    len: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i < p.len {
        let g = gate[i];
        let inner = 0.7978846 * (g + 0.044715 * g * g * g);
        out[i] = 0.5 * g * (1.0 + tanh_f32(inner)) * up[i];
    }
}
