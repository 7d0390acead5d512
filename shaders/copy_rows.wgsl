// dst[dst_off + i] = src[src_off + i] for i < len (whole rows: src_off = src_row * width,
// dst_off = dst_row * width, len = n_rows * width).

struct Params {
    src_off: u32,
    dst_off: u32,
    len: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i < p.len {
        dst[p.dst_off + i] = src[p.src_off + i];
    }
}
