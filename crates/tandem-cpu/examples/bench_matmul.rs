//! Matmul timings, decode-shaped (n = 1) and prefill-shaped (n > 1), for each CPU mode:
//! `cargo run --release -p tandem-cpu --example bench_matmul [FILTER]`: FILTER (e.g. `q4_1 [1,`)
//! keeps the lines that contain it.
//! Prints time per call, GB/s of weight traffic (weight bytes / time) and GFLOP/s.

use std::time::Instant;

use tandem_core::ops::{Matmul, Op};
use tandem_core::quant::encode;
use tandem_core::{Backend, DType, Step};
use tandem_cpu::CpuBackend;

fn bench(b: &mut CpuBackend, label: &str, dtype: DType, n: usize, k: usize, m: usize, decode_rows: usize) {
    let filter = std::env::args().nth(1).unwrap_or_default();
    if !format!("{label:<16} {dtype} [{n},{k}]x[{m},{k}] decode {decode_rows}").contains(&filter) {
        return;
    }
    let w: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
        .collect();
    let x: Vec<f32> = (0..n * k)
        .map(|i| ((i * 104729 % 997) as f32 - 498.0) / 498.0)
        .collect();
    let wb = encode(&w, dtype);
    let wid = b.alloc(dtype, m * k).unwrap();
    b.write(wid, &wb).unwrap();
    let xid = b.alloc(DType::F32, n * k).unwrap();
    b.write(xid, bytemuck::cast_slice(&x)).unwrap();
    let out = b.alloc(DType::F32, n * m).unwrap();
    let step = Step {
        writes: vec![],
        read_back: vec![],
        ops: vec![Op::Matmul(Matmul {
            x: xid,
            w: wid,
            wdtype: dtype,
            bias: None,
            out,
            n,
            k,
            m,
            decode_rows,
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
    println!(
        "{label:<16} {dtype} [{n},{k}]x[{m},{k}] decode {decode_rows}: {:9.1} us/call  {:6.2} GB/s of weights  {:6.1} GFLOP/s",
        per * 1e6,
        wb.len() as f64 / per / 1e9,
        2.0 * (n * k * m) as f64 / per / 1e9
    );
    for id in [wid, xid, out] {
        b.free(id);
    }
}

fn main() {
    let shapes = [
        (DType::Q4_1, 1, 576, 1536),
        (DType::Q4_1, 1, 576, 576),
        // Past the last-level cache: streamed from memory.
        (DType::Q4_1, 1, 4096, 16384),
        (DType::Q8_0, 1, 576, 49152),
        // bf16 and f16 decode: the same bytes, the fused widening path against the general one.
        (DType::BF16, 1, 2048, 8192),
        (DType::F16, 1, 2048, 8192),
        (DType::BF16, 37, 576, 1536),
        (DType::Q4_1, 64, 576, 1536),
        (DType::Q4_1, 16, 576, 1536),
        (DType::Q8_0, 16, 576, 49152),
        // Prefill of the 37-token chat prompt: the ffn up and down projections.
        (DType::Q4_1, 37, 576, 1536),
        (DType::Q4_1, 37, 1536, 576),
        (DType::F32, 37, 576, 576),
    ];
    let mut modes: Vec<(String, CpuBackend)> = vec![("reference".into(), CpuBackend::reference())];
    for t in [1, 2] {
        modes.push((format!("fast {t} thread(s)"), CpuBackend::fast(t).unwrap()));
    }
    // One token is a decode; more are a prompt, and a batch of decodes (continuous batching)
    // once more.
    let runs = shapes.iter().flat_map(|&(dtype, n, k, m)| {
        let batch = (n > 1 && matches!(dtype, DType::Q4_1 | DType::Q8_0)).then_some((dtype, n, k, m, n));
        std::iter::once((dtype, n, k, m, usize::from(n == 1))).chain(batch)
    });
    for (dtype, n, k, m, decode_rows) in runs {
        for (label, b) in &mut modes {
            bench(b, label, dtype, n, k, m, decode_rows);
        }
    }
}
