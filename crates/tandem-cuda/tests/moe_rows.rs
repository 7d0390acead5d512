//! On the kernel emulator, and on a GPU where there is one: every row of an expert product (MoeMatmul) has exactly the bits a
//! one-row decode Matmul of its expert's matrix gives, for each decode kernel such a product
//! can take (the one-token kernel, the warp-per-row kernels for long or unaligned rows and
//! for the GGUF block types). The conformance suite compares both ops with the CPU reference
//! within a tolerance; this is the bit-for-bit promise of `MoeMatmul`'s doc. No C++ compiler
//! (or no F16C), or no GPU: that half prints SKIP.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tandem_core::ops::{Matmul, MoeMatmul, Op};
use tandem_core::quant::encode;
use tandem_core::{Backend, BufId, DType, Step};
use tandem_cuda::emu::EmuBackend;
use tandem_cuda::CudaBackend;

/// Both backends' reads are ready at once (they wait for the device inside).
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the emulator's read was not ready"),
    }
}

/// Values in (-scale, scale) from a fixed seed.
fn values(seed: &mut u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn upload<B: Backend>(b: &mut B, dtype: DType, numel: usize, bytes: &[u8]) -> BufId {
    let id = b.alloc(dtype, numel).expect("alloc");
    b.write(id, bytes).expect("write");
    id
}

fn run<B: Backend>(b: &mut B, op: Op, out: BufId, len: usize) -> Vec<u32> {
    b.execute(&Step { ops: vec![op], ..Default::default() }).expect("the op runs");
    let bytes = ready(b.read(out, 0, 4 * len)).expect("read");
    bytemuck::pod_collect_to_vec(&bytes)
}

/// (dtype, k): each dtype through the kernel its k selects.
const SHAPES: [(DType, usize); 12] = [
    (DType::F32, 64),
    (DType::F32, 40),       // k % 32 != 0: element by element
    (DType::F16, 32 * 520), // longer than the one-token kernel takes
    (DType::BF16, 96),
    (DType::Q8_0, 64),
    (DType::Q4_0, 32 * 520),
    (DType::Q4_1, 128),
    (DType::Q4_1, 32 * 520),
    (DType::Q4_K, 256),
    (DType::Q6_K, 512),
    (DType::Q5_0, 96),
    (DType::Q8_0, 32 * 520),
];

#[test]
fn every_row_is_its_experts_one_row_product_emu() {
    match EmuBackend::new() {
        Ok(mut b) => check(&mut b),
        Err(why) => eprintln!("SKIP every_row_is_its_experts_one_row_product_emu: {why}"),
    }
}

#[test]
fn every_row_is_its_experts_one_row_product_gpu() {
    match CudaBackend::new(Default::default()) {
        Ok(mut b) => check(&mut b),
        Err(why) => eprintln!("SKIP every_row_is_its_experts_one_row_product_gpu: {why}"),
    }
}

fn check<B: Backend>(b: &mut B) {
    let mut seed = 0x5eed;
    let (n, slots, m, experts) = (3, 2, 7, 3);
    for (dtype, k) in SHAPES {
        for x_per_slot in [false, true] {
            let x_rows = if x_per_slot { n * slots } else { n };
            let xv = values(&mut seed, x_rows * k, 1.0);
            let wv = values(&mut seed, experts * m * k, 0.5);
            let ids: Vec<u32> = vec![2, 0, 1, 2, 0, 1];
            let x = upload(b, DType::F32, xv.len(), bytemuck::cast_slice(&xv));
            let w = upload(b, dtype, wv.len(), &encode(&wv, dtype));
            let idb = upload(b, DType::U32, ids.len(), bytemuck::cast_slice(&ids));
            let out = b.alloc(DType::F32, n * slots * m).expect("alloc");
            let (wdtype, out_len) = (dtype, n * slots * m);
            let moe =
                MoeMatmul { x, w, wdtype, ids: idb, out, n, slots, k, m, experts, x_per_slot };
            let got = run(b, Op::MoeMatmul(moe), out, out_len);
            for (r, &e) in ids.iter().enumerate() {
                let xr = if x_per_slot { r } else { r / slots };
                let x1 = &xv[xr * k..(xr + 1) * k];
                let w1 = &wv[e as usize * m * k..(e as usize + 1) * m * k];
                let x1 = upload(b, DType::F32, k, bytemuck::cast_slice(x1));
                let w1 = upload(b, dtype, m * k, &encode(w1, dtype));
                let o1 = b.alloc(DType::F32, m).expect("alloc");
                let one = Matmul {
                    x: x1,
                    w: w1,
                    wdtype,
                    bias: None,
                    out: o1,
                    n: 1,
                    k,
                    m,
                    decode_rows: 1,
                };
                let want = run(b, Op::Matmul(one), o1, m);
                assert_eq!(
                    &got[r * m..(r + 1) * m],
                    &want[..],
                    "{dtype} k={k} per_slot={x_per_slot}: row {r} (expert {e}) differs from its \
                     one-row product"
                );
                for id in [x1, w1, o1] {
                    b.free(id);
                }
            }
            for id in [x, w, idb, out] {
                b.free(id);
            }
        }
    }
}
