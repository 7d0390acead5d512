// Token embedding lookup, dequantizing the rows it touches.
// table: [rows, dim] (one part of a possibly split [vocab, dim] table, covering vocab rows
// row0..row0+rows) in DTYPE, read as u32 words; ids: [n]; out: [n, dim] f32.
// out = row * scale (1, or Gemma's sqrt(hidden): a correctly rounded product; x * 1 is x).
// One invocation per output element; ids outside this part are left to the part that has them.
//
// Quantized tables use tandem's layout: blocks of 32 over the flat element index, qs first,
// then f16 scales d at word d_off, then (Q4_1) f16 minimums m at word m_off.

struct Params {
    n: u32,
    dim: u32,
    row0: u32,
    rows: u32,
    d_off: u32,
    m_off: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// The weight's dtype, a DT_* number (shaders/kquant.wgsl, appended to this file, defines them
// and reads the GGUF block types). f16 and bf16: two per word, low half first.
override DTYPE: u32 = 0u;
override WG: u32 = 256u;

fn half_at(word_off: u32, i: u32) -> f32 {
    return unpack2x16float(table[word_off + i / 2u])[i & 1u];
}

fn kword(i: u32) -> u32 {
    return table[i];
}

fn value(e: u32) -> f32 {
    if DTYPE >= DT_Q4_K {
        return kvalue_at(e);
    }
    switch DTYPE {
        case DT_F32: {
            return bitcast<f32>(table[e]);
        }
        case DT_F16: {
            return half_at(0u, e);
        }
        case DT_BF16: {
            // A bf16 is the high half of an f32.
            let word = table[e / 2u];
            return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (e & 1u) == 1u));
        }
        case DT_Q8_0: {
            let w = table[e / 4u];
            let q = bitcast<i32>(w << (24u - 8u * (e % 4u))) >> 24u;
            return half_at(p.d_off, e / 32u) * f32(q);
        }
        case DT_Q4_0: {
            let q = (table[e / 8u] >> (4u * (e % 8u))) & 15u;
            return half_at(p.d_off, e / 32u) * (f32(q) - 8.0);
        }
        default: {
            let q = (table[e / 8u] >> (4u * (e % 8u))) & 15u;
            return half_at(p.d_off, e / 32u) * f32(q) + half_at(p.m_off, e / 32u);
        }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i >= p.n * p.dim {
        return;
    }
    let token = i / p.dim;
    let j = i % p.dim;
    let id = ids[token];
    if id < p.row0 || id - p.row0 >= p.rows {
        return;
    }
    out[i] = value((id - p.row0) * p.dim + j) * p.scale;
}
