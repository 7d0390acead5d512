//! Weights larger than a storage binding are stored as several buffers of whole rows. A small
//! artificial binding limit forces that with small tensors; Matmul (matrix-vector and tiled
//! kernels, with a bias) and Embed on the split weight must match the CPU reference.

use tandem_core::ops::{Embed, Matmul, Op};
use tandem_core::quant::encode;
use tandem_core::{Backend, BackendExt, BufId, DType, Step};
use tandem_cpu::CpuBackend;
use tandem_wgpu::{WgpuBackend, WgpuOptions};

mod common;
use common::values;

fn nmse(want: &[f32], got: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in want.iter().zip(got) {
        num += (a as f64 - b as f64).powi(2);
        den += (a as f64).powi(2);
    }
    num / den.max(1e-30)
}

/// Uploads the case to `b`: the weight, f32 inputs, ids, and poisoned outputs of these sizes.
#[allow(clippy::too_many_arguments)]
fn run<B: Backend>(
    b: &mut B,
    dtype: DType,
    rows: usize,
    cols: usize,
    w: &[u8],
    f32s: &[(Vec<f32>, bool)],
    ids: &[u32],
    outs: &[usize],
) -> (BufId, Vec<BufId>, BufId, Vec<BufId>) {
    let wbuf = b.alloc_weight(dtype, rows, cols).expect("alloc_weight");
    b.write(wbuf, w).expect("write weight");
    let bufs: Vec<BufId> = f32s
        .iter()
        .map(|(v, _)| {
            let id = b.alloc(DType::F32, v.len()).unwrap();
            b.write(id, bytemuck::cast_slice(v)).unwrap();
            id
        })
        .collect();
    let idb = b.alloc(DType::U32, ids.len()).unwrap();
    b.write(idb, bytemuck::cast_slice(ids)).unwrap();
    let outs = outs
        .iter()
        .map(|&n| {
            let id = b.alloc(DType::F32, n).unwrap();
            b.write(id, &vec![0xFF; n * 4]).unwrap(); // poison: unwritten outputs fail
            id
        })
        .collect();
    (wbuf, bufs, idb, outs)
}

#[test]
fn split_weights_match_the_reference() {
    let probe = pollster::block_on(WgpuBackend::new(WgpuOptions::default()));
    if let Err(e) = probe {
        eprintln!("SKIP split_weights: {e}");
        return;
    }
    let (rows, cols) = (100usize, 100usize);
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1] {
        // 24 rows per part (100 * 24 is a multiple of 32): five parts, the last of 4 rows.
        let limit = dtype.storage_bytes(24 * cols) as u64;
        for allow_f16 in [true, false] {
            let opts =
                WgpuOptions { allow_f16, max_binding_override: Some(limit), ..Default::default() };
            let mut gpu = pollster::block_on(WgpuBackend::new(opts)).unwrap();
            let mut cpu = CpuBackend::reference();
            let w = encode(&values(rows * cols, 1), dtype);
            let x1 = values(cols, 2);
            let x13 = values(13 * cols, 3);
            let bias = values(rows, 4);
            let ids = [99u32, 0, 24, 23, 50, 99, 96, 47];
            let f32s = [(x1, false), (x13, false), (bias, false)];
            let outs = [rows, 13 * rows, ids.len() * cols];
            let mut results = Vec::new();
            for backend in 0..2 {
                let step = |w: BufId, b: &[BufId], idb: BufId, o: &[BufId]| Step {
                    writes: vec![],
                    groups: vec![],
                    read_back: vec![],
                    ops: vec![
                        Op::Matmul(Matmul {
                            x: b[0],
                            w,
                            wdtype: dtype,
                            bias: Some(b[2]),
                            out: o[0],
                            n: 1,
                            k: cols,
                            m: rows,
                            decode_rows: 1,
                        }),
                        Op::Matmul(Matmul {
                            x: b[1],
                            w,
                            wdtype: dtype,
                            bias: None,
                            out: o[1],
                            n: 13,
                            k: cols,
                            m: rows,
                            // Both kernels, the tiled one from a row offset.
                            decode_rows: 5,
                        }),
                        Op::Embed(Embed {
                            table: w,
                            dtype,
                            ids: idb,
                            out: o[2],
                            n: ids.len(),
                            vocab: rows,
                            dim: cols,
                            scale: 1.0,
                        }),
                    ],
                };
                let read =
                    |b: &mut dyn FnMut(BufId, usize) -> Vec<f32>, o: &[BufId]| -> Vec<Vec<f32>> {
                        o.iter().zip(outs).map(|(&id, n)| b(id, n)).collect()
                    };
                if backend == 0 {
                    let (wb, b, idb, o) = run(&mut gpu, dtype, rows, cols, &w, &f32s, &ids, &outs);
                    assert_eq!(
                        gpu.parts_of(wb),
                        5,
                        "{dtype}: the weight should be split in 5 parts"
                    );
                    gpu.execute(&step(wb, &b, idb, &o)).unwrap();
                    results.push(read(
                        &mut |id, n| pollster::block_on(gpu.read_f32(id, 0, n)).unwrap(),
                        &o,
                    ));
                } else {
                    let (wb, b, idb, o) = run(&mut cpu, dtype, rows, cols, &w, &f32s, &ids, &outs);
                    cpu.execute(&step(wb, &b, idb, &o)).unwrap();
                    results.push(read(
                        &mut |id, n| pollster::block_on(cpu.read_f32(id, 0, n)).unwrap(),
                        &o,
                    ));
                }
            }
            let (got, want) = (&results[0], &results[1]);
            for (i, what) in ["matvec + bias", "tiled", "embed"].iter().enumerate() {
                let e = nmse(&want[i], &got[i]);
                assert!(
                    got[i].iter().all(|v| v.is_finite()),
                    "{dtype} f16={allow_f16} {what}: unwritten (NaN) outputs"
                );
                assert!(e <= 1e-9, "{dtype} f16={allow_f16} {what}: NMSE {e:.3e}");
            }
        }
    }
}
