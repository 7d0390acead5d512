// The orthonormal Walsh-Hadamard rotation, in place, of every run of `size` values of x: [len]
// (len a multiple of size, size a power of two <= TILE): y = H x * scale, scale the host's f32
// 1 / sqrt(size). A workgroup rotates one tile of TILE values in workgroup memory, TILE / size
// whole runs (the last tile may hold fewer: its missing values are zeros, never stored), with
// the CPU reference's butterflies stage by stage (pairs i, i + h for h = 1, 2, 4, ... < size:
// a + b, a - b), so its results are the reference's bits.
// Dispatch: ceil(len / TILE) workgroups, folded into x and y when above 65535.

struct Params {
    len: u32,
    size: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

const WG: u32 = 256u;
const TILE: u32 = 1024u;
var<workgroup> v: array<f32, TILE>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let base = (wid.x + wid.y * nwg.x) * TILE;
    for (var i = lid; i < TILE; i += WG) {
        var a = 0.0;
        if base + i < p.len {
            a = x[base + i];
        }
        v[i] = a;
    }
    workgroupBarrier();
    // p.size is uniform, so every invocation meets every barrier.
    for (var h = 1u; h < p.size; h *= 2u) {
        for (var t = lid; t < TILE / 2u; t += WG) {
            // The t-th pair of this stage: its low index has a 0 at bit log2(h).
            let i = ((t & ~(h - 1u)) << 1u) | (t & (h - 1u));
            let a = v[i];
            let b = v[i + h];
            v[i] = a + b;
            v[i + h] = a - b;
        }
        workgroupBarrier();
    }
    for (var i = lid; i < TILE; i += WG) {
        if base + i < p.len {
            x[base + i] = v[i] * p.scale;
        }
    }
}
