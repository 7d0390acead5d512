//! The expert matmul on the WebGPU backend beyond the shared cases: its rows are bit for bit
//! the rows a one-row decode Matmul of the expert's own matrix gives (on each matrix-vector
//! kernel, packed and native f16), and a stacked weight split across bindings, with experts
//! straddling the parts, matches the CPU reference.

use tandem_core::ops::{Matmul, MoeMatmul, Op};
use tandem_core::quant::encode;
use tandem_core::{Backend, BackendExt, DType, Step};
use tandem_cpu::CpuBackend;
use tandem_wgpu::{WgpuBackend, WgpuOptions};

mod common;
use common::{upload, values};

const DTYPES: [DType; 6] =
    [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1];
/// Tokens, slots per token, k, rows per expert, experts.
const N: usize = 3;
const SLOTS: usize = 2;
const K: usize = 64;
const M: usize = 20;
const EXPERTS: usize = 5;
/// Each token's experts: some shared, expert 1 (rows 20..40) straddles two parts of 24 rows.
const IDS: [u32; N * SLOTS] = [1, 4, 0, 1, 3, 2];

/// The expert matmul of x ([N, K]) with the stacked weight `w` ([EXPERTS * M, K] encoded), on
/// `b`, allocated with alloc_weight (so split where the backend's binding limit says).
fn moe<B: Backend>(b: &mut B, dtype: DType, w: &[u8], x: &[f32]) -> Vec<f32> {
    let wb = b.alloc_weight(dtype, EXPERTS * M, K).unwrap();
    b.write(wb, w).unwrap();
    let xb = upload(b, DType::F32, x.len(), bytemuck::cast_slice(x));
    let ids = upload(b, DType::U32, IDS.len(), bytemuck::cast_slice(&IDS));
    let out = upload(b, DType::F32, N * SLOTS * M, &[0xFF; N * SLOTS * M * 4]);
    let op = MoeMatmul {
        x: xb,
        w: wb,
        wdtype: dtype,
        ids,
        out,
        n: N,
        slots: SLOTS,
        k: K,
        m: M,
        experts: EXPERTS,
        x_per_slot: false,
    };
    b.execute(&Step { ops: vec![Op::MoeMatmul(op)], ..Default::default() }).unwrap();
    pollster::block_on(b.read_f32(out, 0, N * SLOTS * M)).unwrap()
}

/// One decode row: x_row ([K]) times expert e's own matrix, uploaded alone.
fn decode_row(b: &mut WgpuBackend, dtype: DType, w_e: &[u8], x_row: &[f32]) -> Vec<f32> {
    let wb = b.alloc_weight(dtype, M, K).unwrap();
    b.write(wb, w_e).unwrap();
    let xb = upload(b, DType::F32, K, bytemuck::cast_slice(x_row));
    let out = upload(b, DType::F32, M, &[0xFF; M * 4]);
    let op =
        Matmul { x: xb, w: wb, wdtype: dtype, bias: None, out, n: 1, k: K, m: M, decode_rows: 1 };
    b.execute(&Step { ops: vec![Op::Matmul(op)], ..Default::default() }).unwrap();
    pollster::block_on(b.read_f32(out, 0, M)).unwrap()
}

fn backend(allow_f16: bool, row_matvec: bool, max_binding: Option<u64>) -> Option<WgpuBackend> {
    let opts = WgpuOptions {
        allow_f16,
        row_matvec: Some(row_matvec),
        max_binding_override: max_binding,
        ..Default::default()
    };
    match pollster::block_on(WgpuBackend::new(opts)) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("SKIP moe: {e}");
            None
        }
    }
}

#[test]
fn expert_rows_are_decode_rows_of_the_expert() {
    let vals = values(EXPERTS * M * K, 1);
    let x = values(N * K, 2);
    for dtype in DTYPES {
        for (allow_f16, row_matvec) in [(true, true), (false, true), (true, false), (false, false)]
        {
            let Some(mut gpu) = backend(allow_f16, row_matvec, None) else { return };
            let got = moe(&mut gpu, dtype, &encode(&vals, dtype), &x);
            for (r, &e) in IDS.iter().enumerate() {
                let e = e as usize;
                let w_e = encode(&vals[e * M * K..(e + 1) * M * K], dtype);
                let want = decode_row(&mut gpu, dtype, &w_e, &x[r / SLOTS * K..][..K]);
                let row = &got[r * M..(r + 1) * M];
                let same = want.iter().zip(row).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{dtype} f16={allow_f16} rows={row_matvec}: row {r} (expert {e}) differs from \
                     its decode row:\n{row:?}\n{want:?}"
                );
            }
        }
    }
}

#[test]
fn split_stacked_weight_matches_the_reference() {
    let vals = values(EXPERTS * M * K, 3);
    let x = values(N * K, 4);
    for dtype in DTYPES {
        // 24 rows per part: five parts, expert boundaries (every 20 rows) inside parts.
        let limit = dtype.storage_bytes(24 * K) as u64;
        let w = encode(&vals, dtype);
        let want = moe(&mut CpuBackend::reference(), dtype, &w, &x);
        for row_matvec in [true, false] {
            let Some(mut gpu) = backend(false, row_matvec, Some(limit)) else { return };
            let got = moe(&mut gpu, dtype, &w, &x);
            assert!(got.iter().all(|v| v.is_finite()), "{dtype}: unwritten (NaN) outputs");
            let (mut num, mut den) = (0f64, 0f64);
            for (&a, &b) in want.iter().zip(&got) {
                num += (a as f64 - b as f64).powi(2);
                den += (a as f64).powi(2);
            }
            let e = num / den;
            assert!(e <= 1e-9, "{dtype} rows={row_matvec}: NMSE {e:.3e}");
        }
    }
}
