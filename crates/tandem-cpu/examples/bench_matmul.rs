//! Matmul timings, decode-shaped (n = 1) and prefill-shaped (n > 1), for each CPU mode:
//! `cargo run --release -p tandem-cpu --example bench_matmul [FILTER]`: FILTER (e.g. `q4_1 [1,`)
//! keeps the lines that contain it.
//! Prints time per call, GB/s of weight traffic (weight bytes / time) and GFLOP/s.

use std::time::Instant;

use tandem_core::ops::{Matmul, Op};
use tandem_core::quant::encode;
use tandem_core::{Backend, DType, Step};
use tandem_cpu::CpuBackend;

fn bench(
    b: &mut CpuBackend,
    label: &str,
    dtype: DType,
    n: usize,
    k: usize,
    m: usize,
    decode_rows: usize,
) {
    let filter = std::env::args().nth(1).unwrap_or_default();
    if !format!("{label:<16} {dtype} [{n},{k}]x[{m},{k}] decode {decode_rows}").contains(&filter) {
        return;
    }
    let w: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0).collect();
    let x: Vec<f32> = (0..n * k).map(|i| ((i * 104729 % 997) as f32 - 498.0) / 498.0).collect();
    let wb = match dtype.block_layout() {
        Some(_) => random_blocks(dtype, m * k),
        None => encode(&w, dtype),
    };
    let wid = b.alloc(dtype, m * k).unwrap();
    b.write(wid, &wb).unwrap();
    let xid = b.alloc(DType::F32, n * k).unwrap();
    b.write(xid, bytemuck::cast_slice(&x)).unwrap();
    let out = b.alloc(DType::F32, n * m).unwrap();
    let step = Step {
        writes: vec![],
        groups: vec![],
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
    let cpu0 = thread_cpu_secs();
    let mut iters = 0;
    while start.elapsed().as_secs_f64() < 0.5 || iters < 3 {
        b.execute(&step).unwrap();
        iters += 1;
    }
    // On a busy machine the calling thread's CPU time (one-thread modes run there) is a
    // steadier clock than the wall: BENCH_CLOCK=cpu.
    let per = match (std::env::var("BENCH_CLOCK").as_deref(), cpu0) {
        (Ok("cpu"), Some(c0)) if !label.contains('2') => {
            (thread_cpu_secs().unwrap() - c0) / iters as f64
        }
        _ => start.elapsed().as_secs_f64() / iters as f64,
    };
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

/// This thread's CPU time so far (Linux: /proc/thread-self/schedstat), in seconds.
fn thread_cpu_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<f64>().ok()? / 1e9)
}

/// `numel` weights of a GGUF block type (which tandem does not quantize to): pseudo-random
/// bits with finite f16 scales in [1e-3, 1e-2) of either sign.
fn random_blocks(dtype: DType, numel: usize) -> Vec<u8> {
    let l = dtype.block_layout().unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut bytes: Vec<u8> = (0..dtype.storage_bytes(numel)).map(|_| next() as u8).collect();
    for blk in bytes.chunks_exact_mut(l.stride) {
        for &f in tandem_core::quant::blocks::f16_fields(dtype) {
            let v = (1e-3 + 9e-3 * (next() % 1000) as f32 / 1000.0)
                * if next() % 2 == 0 { 1.0 } else { -1.0 };
            blk[f..f + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    bytes
}

fn main() {
    let shapes = [
        (DType::Q4_1, 1, 576, 1536),
        (DType::Q4_1, 1, 576, 576),
        // The types of llama.cpp's Q4_K_M / Q6_K files of SmolLM2 (576-wide rows fall back
        // to Q5_0 / Q8_0; the ffn down projection, 1536 wide, is Q4_K or Q6_K).
        (DType::Q5_0, 1, 576, 1536),
        (DType::Q4_K, 1, 1536, 576),
        (DType::Q6_K, 1, 1536, 576),
        (DType::Q5_K, 1, 1536, 576),
        (DType::Q3_K, 1, 1536, 576),
        (DType::Q2_K, 1, 1536, 576),
        (DType::IQ4_XS, 1, 1536, 576),
        (DType::IQ4_NL, 1, 576, 1536),
        (DType::Q5_1, 1, 576, 1536),
        (DType::Q5_0, 37, 576, 1536),
        (DType::Q6_K, 37, 1536, 576),
        // Past the last-level cache: streamed from memory.
        (DType::Q4_1, 1, 4096, 16384),
        // Phi-4-mini's ffn up (gate and up split) and down projections.
        (DType::Q4_1, 1, 3072, 8192),
        (DType::Q4_1, 1, 8192, 3072),
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
        // An f32 model's decode, and its 5-token verify step (speculative decoding).
        (DType::F32, 1, 576, 1536),
        (DType::F32, 5, 576, 1536),
    ];
    let mut modes: Vec<(String, CpuBackend)> = vec![("reference".into(), CpuBackend::reference())];
    for t in [1, 2] {
        modes.push((format!("fast {t} thread(s)"), CpuBackend::fast(t).unwrap()));
    }
    // One token is a decode; more are a prompt, and a batch of decodes (continuous batching)
    // once more.
    let runs = shapes.iter().flat_map(|&(dtype, n, k, m)| {
        let batch = (n > 1
            && matches!(dtype, DType::Q4_1 | DType::Q8_0 | DType::Q5_0 | DType::Q6_K | DType::F32))
        .then_some((dtype, n, k, m, n));
        std::iter::once((dtype, n, k, m, usize::from(n == 1))).chain(batch)
    });
    for (dtype, n, k, m, decode_rows) in runs {
        for (label, b) in &mut modes {
            bench(b, label, dtype, n, k, m, decode_rows);
        }
    }
}
