//! Prompt rows, FlashAttention-style. A work unit is (KV head, tile of up to `BQ` queries of
//! one sequence): K and V come in tiles of `BT` positions, read once for the tile's queries
//! and every query head of the group, and each (query, head) keeps a running max, a running
//! sum and an accumulator rescaled whenever the max grows. The position tiles are fixed cuts
//! (multiples of `BT`) whatever the query tile, and a query reads of each only the positions
//! of its window (tiles wholly before every window of the query tile are never loaded), so a
//! row's arithmetic depends on its position and the window only.

use super::{axpy, Geom, KvSrc, Rows};
use crate::ops::{dot, exp_sub, max, sum};
use crate::Exec;

/// Queries per work unit: they share each K/V tile.
const BQ: usize = 8;
/// Positions per K/V tile.
const BT: usize = 32;

/// q: all rows [n, heads, head_dim]; out: the prompt rows' outputs [n - decode, heads, head_dim].
pub(super) fn run<K: KvSrc, V: KvSrc>(
    ex: Exec,
    q: &[f32],
    ck: K,
    cv: V,
    rows: &Rows,
    out: &mut [f32],
    g: Geom,
) {
    let (hd, d, n) = (g.hd, rows.decode, rows.positions.len());
    let group = g.heads / g.kv_heads;
    // Runs of one sequence's queries (same table start, increasing positions), cut into tiles.
    let mut tiles = vec![];
    let mut i = d;
    while i < n {
        let mut j = i + 1;
        while j < n
            && j - i < BQ
            && rows.starts[j] == rows.starts[i]
            && rows.positions[j] > rows.positions[j - 1]
        {
            j += 1;
        }
        tiles.push((i, j));
        i = j;
    }
    let work: usize = (d..n).map(|i| rows.pos(i) + 1 - g.first(rows.pos(i))).sum::<usize>();
    let work = work * g.heads * hd;
    let ex = ex.sized(work);
    let inputs = Inputs { q, ck, cv, qrows: rows, g };
    let parts: Vec<Vec<f32>> = ex.map_range(g.kv_heads * tiles.len(), |u| {
        let (kvh, (i0, i1)) = (u / tiles.len(), tiles[u % tiles.len()]);
        // [query, head of the group, head_dim]
        let mut acc = vec![0f32; (i1 - i0) * group * hd];
        #[cfg(target_arch = "x86_64")]
        if ex.avx2() {
            // SAFETY: `ex.avx2()` is true only for the AVX2 and AVX-512 ISAs, whose features
            // (AVX2 and FMA among them) were detected when the backend was made.
            unsafe { unit_avx2(&inputs, kvh, i0, &mut acc) };
            return acc;
        }
        unit::<K, V, false>(&inputs, kvh, i0, &mut acc);
        acc
    });
    for (u, acc) in parts.iter().enumerate() {
        let (kvh, (i0, _)) = (u / tiles.len(), tiles[u % tiles.len()]);
        for (r, heads) in acc.chunks_exact(group * hd).enumerate() {
            let at = ((i0 + r - d) * g.heads + kvh * group) * hd;
            out[at..at + group * hd].copy_from_slice(heads);
        }
    }
}

/// [`unit`] compiled for AVX2 + FMA (a closure would be compiled for the baseline).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn unit_avx2<K: KvSrc, V: KvSrc>(u: &Inputs<K, V>, kvh: usize, i0: usize, acc: &mut [f32]) {
    if u.g.hd.is_multiple_of(8) {
        unit::<K, V, true>(u, kvh, i0, acc)
    } else {
        unit::<K, V, false>(u, kvh, i0, acc)
    }
}

/// What every work unit reads (see [`run`]).
struct Inputs<'a, K, V> {
    q: &'a [f32],
    ck: K,
    cv: V,
    qrows: &'a Rows<'a>,
    g: Geom,
}

/// Queries i0.. (acc.len() / (group * head_dim) of them, one sequence's, in increasing
/// positions) for the query heads of KV head `kvh`. acc: [rows, group, head_dim]. `AVX`: use
/// the hand-written AVX2 dot and V sums (only inside [`unit_avx2`], with head_dim % 8 == 0).
#[inline(always)]
fn unit<K: KvSrc, V: KvSrc, const AVX: bool>(
    u: &Inputs<K, V>,
    kvh: usize,
    i0: usize,
    acc: &mut [f32],
) {
    let Inputs { q, ck, cv, qrows, g } = *u;
    let (hd, group) = (g.hd, g.heads / g.kv_heads);
    let rows = acc.len() / (group * hd);
    let table = qrows.table(i0);
    let last = qrows.pos(i0 + rows - 1);
    // The first query's window starts first (positions increase down the tile).
    let lo = g.first(qrows.pos(i0));
    let mut run_max = vec![f32::NEG_INFINITY; rows * group];
    let mut run_sum = vec![0f32; rows * group];
    let mut kbuf = vec![0f32; BT * hd];
    let mut vbuf = vec![0f32; BT * hd];
    let mut s = [0f32; BT];
    acc.fill(0.0);
    for t0 in (lo / BT * BT..=last).step_by(BT) {
        let t1 = (t0 + BT).min(last + 1);
        let mut ks: [&[f32]; BT] = [&[]; BT];
        let mut vs: [&[f32]; BT] = [&[]; BT];
        let bufs = kbuf.chunks_exact_mut(hd).zip(vbuf.chunks_exact_mut(hd));
        // Entries before `lo` stay empty: no query of the tile reads them.
        for ((j, (kb, vb)), t) in bufs.enumerate().zip(t0..t1).skip(lo.saturating_sub(t0)) {
            let off = g.kv_at(table, t, kvh);
            ks[j] = ck.row(off, hd, kb);
            vs[j] = cv.row(off, hd, vb);
        }
        for r in 0..rows {
            let pos = qrows.pos(i0 + r);
            let from = g.first(pos);
            if pos < t0 || from >= t1 {
                continue; // the whole tile is in this query's future, or before its window
            }
            // This query's positions of the tile: s[j0..cnt], t0 + j for j in j0..cnt.
            let (j0, cnt) = (from.saturating_sub(t0), (pos + 1).min(t1) - t0);
            for gi in 0..group {
                let h = kvh * group + gi;
                let qv = &q[((i0 + r) * g.heads + h) * hd..][..hd];
                #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
                let mut j = j0;
                #[cfg(target_arch = "x86_64")]
                while AVX && j + 8 <= cnt {
                    // SAFETY: AVX is only true inside `unit_avx2`, with head_dim % 8 == 0.
                    unsafe {
                        super::decode_avx2::scores8(qv, &ks[j..j + 8], g.scale, &mut s[j..j + 8])
                    };
                    j += 8;
                }
                for j in j..cnt {
                    s[j] = kdot::<AVX>(qv, ks[j]) * g.scale;
                }
                let s = &mut s[j0..cnt];
                g.cap_all(s);
                let (rm, rs) = (&mut run_max[r * group + gi], &mut run_sum[r * group + gi]);
                let new_max = rm.max(max(s));
                let a = &mut acc[(r * group + gi) * hd..][..hd];
                if new_max > *rm && *rm != f32::NEG_INFINITY {
                    let corr = (*rm - new_max).exp();
                    *rs *= corr;
                    for v in a.iter_mut() {
                        *v *= corr;
                    }
                }
                *rm = new_max;
                exp_sub(s, new_max);
                *rs += sum(s);
                let vs = &vs[j0..cnt];
                #[cfg(target_arch = "x86_64")]
                if AVX {
                    // SAFETY: AVX is only true inside `unit_avx2`, with head_dim % 8 == 0.
                    unsafe { super::decode_avx2::axpy_tile(a, s, vs) };
                    continue;
                }
                for (&e, v) in s.iter().zip(vs) {
                    axpy(a, e, v);
                }
            }
        }
    }
    for (a, rs) in acc.chunks_exact_mut(hd).zip(&run_sum) {
        let inv = 1.0 / rs;
        for v in a {
            *v *= inv;
        }
    }
}

/// q . k: by hand with AVX2 when `AVX` (see [`unit`]), else the portable lane loop.
#[inline(always)]
fn kdot<const AVX: bool>(q: &[f32], k: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: AVX is only true inside `unit_avx2`, with head_dim % 8 == 0.
        return unsafe { super::decode_avx2::dot(q, k) };
    }
    dot(q, k)
}
