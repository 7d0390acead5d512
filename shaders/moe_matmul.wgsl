// The experts' matmuls, appended to shaders/matmul.wgsl (whose Params p, x, w, out and
// lane_dot / row_dot / lanes_sum it uses): out[i, r] = x_row(i) @ w[ids[i] * m + r]^T for the
// flattened (token, slot) rows i = t * slots + j, where x_row(i) is x[i] (x_per_slot) or
// x[t]. ids: [n, slots] u32; x: [n or n * slots, k]; w: the part of the stacked
// [experts * m, k] weight holding rows w_row0..w_row0 + w_rows; out: [n * slots, m]. Rows of
// other parts are left to their parts' dispatches; an id >= experts (checked on the host where
// it has the ids) writes nothing.
//
// Each row runs matvec's (lane_dot) or matvec_rows's (row_dot) arithmetic on its expert's
// matrix, the entry point chosen as for a decode row of a Matmul of that matrix, so a row's
// bits are a one-row decode product's whatever the other rows and their experts are (batch
// invariance). A dispatch computes rows row0..row0 + n.
// moe_matvec: dispatch (ceil(m / (256 / TPR)) folded, n); moe_matvec_rows: (ceil(m / RWG)
// folded, n).

@group(0) @binding(5) var<storage, read> ids: array<u32>;

// Row i's weight row r within this part (or w_rows when its expert's row is elsewhere) and
// its x offset.
struct MoeRow {
    local: u32,
    x0: u32,
}

fn moe_row(i: u32, r: u32) -> MoeRow {
    var o: MoeRow;
    o.local = p.w_rows;
    o.x0 = select(i / p.slots, i, p.x_per_slot != 0u) * p.k;
    let e = ids[i];
    if r < p.m && e < p.experts {
        let g = e * p.m + r;
        if g >= p.w_row0 && g - p.w_row0 < p.w_rows {
            o.local = g - p.w_row0;
        }
    }
    return o;
}

@compute @workgroup_size(WG)
fn moe_matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let rpw = WG / TPR;
    let r = (wid.x + wid.y * nwg.x) * rpw + lid / TPR;
    let lane = lid % TPR;
    let i = p.row0 + wid.z;
    let row = moe_row(i, r);
    let mine = row.local < p.w_rows;
    var acc = 0.0;
    if mine {
        acc = lane_dot(row.local, row.x0, lane);
    }
    let sum = lanes_sum(lid, acc);
    if lane == 0u && mine {
        out[i * p.m + r] = sum;
    }
}

@compute @workgroup_size(RWG)
fn moe_matvec_rows(@builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let r = (wid.x + wid.y * nwg.x) * RWG + lid;
    let i = p.row0 + wid.z;
    let row = moe_row(i, r);
    if row.local < p.w_rows {
        out[i * p.m + r] = row_dot(row.local, row.x0);
    }
}
