//! Decode attention timings over a long context, with and without a sliding window and a
//! soft-cap (Gemma 2's shape: 8 query heads over 4 KV heads of 256, an f16 cache):
//! `cargo run --release -p tandem-cpu --example bench_attention [FILTER]`: FILTER (e.g.
//! `window=512`) keeps the lines that contain it. A windowed decode should cost about its
//! window's positions, not the context's.

use std::time::Instant;

use tandem_core::ops::{Attention, Op};
use tandem_core::quant::encode;
use tandem_core::{Backend, DType, Step};
use tandem_cpu::CpuBackend;

const HEADS: usize = 8;
const KV_HEADS: usize = 4;
const HD: usize = 256;
const BS: usize = 16;

fn bench(b: &mut CpuBackend, label: &str, ctx: usize, window: usize, softcap: f32) {
    let name = format!("{label:<16} ctx={ctx} window={window} softcap={softcap}");
    if !name.contains(&std::env::args().nth(1).unwrap_or_default()) {
        return;
    }
    let blocks = ctx.div_ceil(BS);
    let cache_len = blocks * BS * KV_HEADS * HD;
    let kv: Vec<f32> = (0..cache_len).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0).collect();
    let q: Vec<f32> =
        (0..HEADS * HD).map(|i| ((i * 104729 % 997) as f32 - 498.0) / 166.0).collect();
    let table: Vec<u32> = (0..blocks as u32).rev().collect();
    let upload = |b: &mut CpuBackend, dtype: DType, bytes: &[u8], numel: usize| {
        let id = b.alloc(dtype, numel).unwrap();
        b.write(id, bytes).unwrap();
        id
    };
    let kvb = encode(&kv, DType::F16);
    let ck = upload(b, DType::F16, &kvb, cache_len);
    let cv = upload(b, DType::F16, &kvb, cache_len);
    let qid = upload(b, DType::F32, bytemuck::cast_slice(&q), q.len());
    let pos = upload(b, DType::U32, bytemuck::cast_slice(&[ctx as u32 - 1]), 1);
    let starts = upload(b, DType::U32, bytemuck::cast_slice(&[0u32]), 1);
    let tables = upload(b, DType::U32, bytemuck::cast_slice(&table), table.len());
    let out = b.alloc(DType::F32, HEADS * HD).unwrap();
    let step = Step {
        writes: vec![],
        groups: vec![],
        read_back: vec![],
        ops: vec![Op::Attention(Attention {
            q: qid,
            cache_k: ck,
            cache_v: cv,
            kv_dtypes: DType::F16.into(),
            positions: pos,
            table_starts: starts,
            tables,
            tables_len: table.len(),
            out,
            n: 1,
            decode_rows: 1,
            max_ctx: ctx,
            heads: HEADS,
            kv_heads: KV_HEADS,
            head_dim: HD,
            block_size: BS,
            scale: 1.0 / (HD as f32).sqrt(),
            window,
            softcap,
        })],
    };
    b.execute(&step).unwrap(); // warm up
    let start = Instant::now();
    let mut iters = 0;
    while start.elapsed().as_secs_f64() < 0.5 || iters < 3 {
        b.execute(&step).unwrap();
        iters += 1;
    }
    let per = start.elapsed().as_secs_f64() / iters as f64;
    let read = if window == 0 { ctx } else { window.min(ctx) };
    println!(
        "{name}: {:9.1} us/call  {:6.2} GB/s of the window's K and V",
        per * 1e6,
        (2 * read * KV_HEADS * HD * 2) as f64 / per / 1e9
    );
    for id in [ck, cv, qid, pos, starts, tables, out] {
        b.free(id);
    }
}

fn main() {
    let mut modes: Vec<(String, CpuBackend)> = vec![("reference".into(), CpuBackend::reference())];
    for t in [1, 2] {
        modes.push((format!("fast {t} thread(s)"), CpuBackend::fast(t).unwrap()));
    }
    for (ctx, window, softcap) in
        [(8192, 0, 0.0), (8192, 0, 50.0), (8192, 4096, 50.0), (8192, 512, 0.0), (512, 0, 0.0)]
    {
        for (label, b) in &mut modes {
            bench(b, label, ctx, window, softcap);
        }
    }
}
