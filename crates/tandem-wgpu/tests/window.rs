//! Sliding-window attention with NaN in every cache row before the windows: both kernels
//! (decode rows, split into partitions, and prompt rows, tiled) must skip those positions,
//! never weight them by zero, and match the CPU reference.

use tandem_core::ops::{Attention, Op};
use tandem_core::{Backend, BackendExt, DType, Step};
use tandem_cpu::CpuBackend;
use tandem_wgpu::{WgpuBackend, WgpuOptions};

mod common;
use common::{upload, values};

const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HD: usize = 16;
const BS: usize = 4;
/// One sequence of CTX positions; the queries are its last ROWS positions.
const CTX: usize = 150;
const ROWS: usize = 20;
/// Wider than a decode partition (64 positions), so a decode row's window starts mid-partition
/// after whole partitions of NaN.
const WINDOW: usize = 70;

/// The last ROWS queries attending over the cache, as decode rows or as prompt rows.
fn attend<B: Backend>(b: &mut B, decode: bool, softcap: f32) -> Vec<f32> {
    let blocks = CTX.div_ceil(BS);
    let row = KV_HEADS * HD;
    // Blocks in reverse order; every position before the first query's window is NaN.
    let table: Vec<u32> = (0..blocks as u32).rev().collect();
    let first = CTX - ROWS + 1 - WINDOW;
    let (mut ck, mut cv) = (vec![f32::NAN; blocks * BS * row], vec![f32::NAN; blocks * BS * row]);
    let (kv, vv) = (values(CTX * row, 1), values(CTX * row, 2));
    for t in first..CTX {
        let r = table[t / BS] as usize * BS + t % BS;
        ck[r * row..(r + 1) * row].copy_from_slice(&kv[t * row..(t + 1) * row]);
        cv[r * row..(r + 1) * row].copy_from_slice(&vv[t * row..(t + 1) * row]);
    }
    let q: Vec<f32> = values(ROWS * HEADS * HD, 3).iter().map(|v| v * 3.0).collect();
    let positions: Vec<u32> = (CTX - ROWS..CTX).map(|p| p as u32).collect();
    let op = Attention {
        q: upload(b, DType::F32, q.len(), bytemuck::cast_slice(&q)),
        cache_k: upload(b, DType::F32, ck.len(), bytemuck::cast_slice(&ck)),
        cache_v: upload(b, DType::F32, cv.len(), bytemuck::cast_slice(&cv)),
        kv_dtypes: DType::F32.into(),
        positions: upload(b, DType::U32, ROWS, bytemuck::cast_slice(&positions)),
        table_starts: upload(b, DType::U32, ROWS, &[0; ROWS * 4]),
        tables: upload(b, DType::U32, blocks, bytemuck::cast_slice(&table)),
        tables_len: blocks,
        out: upload(b, DType::F32, ROWS * HEADS * HD, &[0xFF; ROWS * HEADS * HD * 4]),
        n: ROWS,
        decode_rows: if decode { ROWS } else { 0 },
        max_ctx: CTX,
        heads: HEADS,
        kv_heads: KV_HEADS,
        head_dim: HD,
        block_size: BS,
        scale: 1.0 / (HD as f32).sqrt(),
        window: WINDOW,
        softcap,
    };
    let out = op.out;
    b.execute(&Step { ops: vec![Op::Attention(op)], ..Default::default() }).unwrap();
    pollster::block_on(b.read_f32(out, 0, ROWS * HEADS * HD)).unwrap()
}

#[test]
fn positions_before_the_window_are_skipped() {
    let mut gpu = match pollster::block_on(WgpuBackend::new(WgpuOptions::default())) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIP window: {e}");
            return;
        }
    };
    for decode in [true, false] {
        for softcap in [0.0, 2.5] {
            let want = attend(&mut CpuBackend::reference(), decode, softcap);
            let got = attend(&mut gpu, decode, softcap);
            assert!(want.iter().all(|v| v.is_finite()), "the reference leaked NaN");
            let what = format!("decode={decode} softcap={softcap}");
            assert!(got.iter().all(|v| v.is_finite()), "{what}: NaN leaked or unwritten");
            let (mut num, mut den) = (0f64, 0f64);
            for (&a, &b) in want.iter().zip(&got) {
                num += (a as f64 - b as f64).powi(2);
                den += (a as f64).powi(2);
            }
            assert!(num / den <= 1e-8, "{what}: NMSE {:.3e}", num / den);
        }
    }
}
