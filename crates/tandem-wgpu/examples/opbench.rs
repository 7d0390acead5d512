//! Times single ops on the WebGPU backend (each op repeated in one step, then a 4-byte read).
//!
//! cargo run --release -p tandem-wgpu --example opbench

use std::time::Instant;

use tandem_core::ops::{Attention, Matmul, Op};
use tandem_core::quant::encode;
use tandem_core::{Backend, BufId, DType, Step};
use tandem_wgpu::{WgpuBackend, WgpuOptions};

fn time(b: &mut WgpuBackend, ops: Vec<Op>, sync: BufId, reps: usize) -> f64 {
    let step = Step { writes: vec![], read_back: vec![], groups: vec![], ops };
    b.execute(&step).unwrap();
    pollster::block_on(b.read(sync, 0, 4)).unwrap();
    let t = Instant::now();
    for _ in 0..reps {
        b.execute(&step).unwrap();
    }
    pollster::block_on(b.read(sync, 0, 4)).unwrap();
    t.elapsed().as_secs_f64() / (reps * step.ops.len()) as f64
}

fn main() {
    let packed = std::env::args().any(|a| a == "--packed");
    let mut b = pollster::block_on(WgpuBackend::new(WgpuOptions {
        allow_f16: !packed,
        ..Default::default()
    }))
    .expect("adapter");
    println!("{}", b.adapter_info());
    for (n, k, m) in
        [(1, 576, 49152), (1, 576, 1536), (1, 1536, 576), (32, 576, 1536), (32, 576, 49152)]
    {
        for dtype in [DType::F32, DType::F16, DType::Q8_0, DType::Q4_0, DType::Q4_1] {
            let w = b.alloc_weight(dtype, m, k).unwrap();
            b.write(w, &encode(&vec![0.01; m * k], dtype)).unwrap();
            let x = b.alloc(DType::F32, n * k).unwrap();
            let out = b.alloc(DType::F32, n * m).unwrap();
            let op = Op::Matmul(Matmul {
                x,
                w,
                wdtype: dtype,
                bias: None,
                out,
                n,
                k,
                m,
                // One token: a decode; more: a prompt.
                decode_rows: (n == 1) as usize,
            });
            let s = time(&mut b, vec![op; 4], out, 3);
            let bytes = dtype.storage_bytes(m * k) as f64;
            println!(
                "matmul {dtype:5} n={n:3} k={k} m={m:6}: {:8.2} ms  {:6.2} GB/s",
                s * 1e3,
                bytes / s / 1e9
            );
            for id in [w, x, out] {
                b.free(id);
            }
        }
    }
    for (n, ctx) in [(1usize, 64usize), (1, 512), (1, 2048), (32, 32), (256, 256)] {
        let (heads, kvh, hd, bs) = (9, 3, 64, 16);
        let blocks = ctx.div_ceil(bs);
        let q = b.alloc(DType::F32, n * heads * hd).unwrap();
        let ck = b.alloc(DType::F32, blocks * bs * kvh * hd).unwrap();
        let cv = b.alloc(DType::F32, blocks * bs * kvh * hd).unwrap();
        let bt = b.alloc(DType::U32, blocks).unwrap();
        b.write(bt, bytemuck::cast_slice(&(0..blocks as u32).collect::<Vec<_>>())).unwrap();
        // The last n positions of one sequence: a decode for n = 1, a prompt otherwise.
        let positions = b.alloc(DType::U32, n).unwrap();
        b.write(
            positions,
            bytemuck::cast_slice(&((ctx - n) as u32..ctx as u32).collect::<Vec<_>>()),
        )
        .unwrap();
        let starts = b.alloc(DType::U32, n).unwrap();
        b.write(starts, bytemuck::cast_slice(&vec![0u32; n])).unwrap();
        let out = b.alloc(DType::F32, n * heads * hd).unwrap();
        let op = Op::Attention(Attention {
            q,
            cache_k: ck,
            cache_v: cv,
            kv_dtypes: DType::F32.into(),
            positions,
            table_starts: starts,
            tables: bt,
            tables_len: blocks,
            out,
            n,
            decode_rows: (n == 1) as usize,
            max_ctx: ctx,
            heads,
            kv_heads: kvh,
            head_dim: hd,
            block_size: bs,
            scale: 0.125,
            window: 0,
            softcap: 0.0,
        });
        let s = time(&mut b, vec![op; 4], out, 3);
        println!("attention n={n:3} ctx={ctx:5}: {:8.3} ms", s * 1e3);
        for id in [q, ck, cv, bt, positions, starts, out] {
            b.free(id);
        }
    }
}
