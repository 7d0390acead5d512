//! The WebGPU Sample kernel against `sample_row` on rows built to hit its edges: ties at the
//! top_k and top_p boundaries, +-0, NaN and +-inf, rows with no finite logit, one-element rows,
//! many draws per row. No adapter: SKIP.
//!
//! Rows stay at most a few thousand wide: `sample_row` sums weights sequentially in f32 (the
//! top_p mass in descending order, the draw in id order) while the kernel sums them in
//! parallel, and on rows of ~10^5 tokens that all stay kept the two orders round apart enough
//! to move the draw by a few ids on a sizeable share of draws.

use tandem_core::backend::{Backend, BackendExt, Step};
use tandem_core::ops::{Op, Sample};
use tandem_core::sampling::{sample_row, Rng};
use tandem_core::DType;
use tandem_wgpu::{WgpuBackend, WgpuOptions};

#[test]
fn sample_matches_sample_row_on_edge_rows() {
    let mut b = match pollster::block_on(WgpuBackend::new(WgpuOptions::default())) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIP sample_wgpu: {e}");
            return;
        }
    };
    let mut rng = Rng::new(11);
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    let mut rows: Vec<Vec<f32>> = vec![
        vec![0.0, 5.0, 0.0, 5.0, 5.0, 5.0],
        vec![2.0f32.ln(), 1.0f32.ln(), 1.0f32.ln()],
        vec![1.0, 3.0, 2.0, 2.0, 0.5],
        vec![nan, nan],
        vec![nan, -inf, inf, nan, inf],
        vec![-inf, nan],
        vec![1.0, inf, 2.0],
        vec![-0.0, 0.0, -0.0, 0.0, -1.0],
        vec![3.5],
    ];
    for width in [2, 13, 257, 1000, 4099] {
        // Continuous, coarsely quantized (many ties), and with specials sprinkled in.
        let cont: Vec<f32> = (0..width).map(|_| (rng.next_f32() - 0.5) * 16.0).collect();
        let quant: Vec<f32> = cont.iter().map(|v| (v * 0.5).round()).collect();
        let mut special = cont.clone();
        for i in 0..width / 7 + 1 {
            let j = (rng.next_u64() % width as u64) as usize;
            special[j] = [nan, -inf, -0.0, 0.0][i % 4];
        }
        rows.extend([cont, quant, special]);
    }
    let filters: &[(f32, usize, f32, f32)] = &[
        (1.0, 0, 1.0, 0.0),
        (0.7, 1, 1.0, 0.0),
        (1.0, 2, 1.0, 0.0),
        (0.9, 5, 0.8, 0.0),
        (1.3, 40, 0.9, 0.05),
        (1.0, 0, 0.5, 0.0),
        (1.0, 0, 0.51, 0.0),
        (0.5, 0, 0.3, 0.0),
        (2.0, 0, 1.0, 0.3),
        (1.0, 0, 1.0, 1.0),
        (1.0, 1000, 0.99, 0.01),
        (1.0, usize::MAX, 1e-6, 0.0),
    ];
    let mut failures = vec![];
    let mut checked = 0;
    for row in &rows {
        let width = row.len();
        let x = b.alloc(DType::F32, width).unwrap();
        b.write(x, bytemuck::cast_slice(row)).unwrap();
        let out = b.alloc(DType::U32, 1).unwrap();
        for &(temperature, top_k, top_p, min_p) in filters {
            for _ in 0..4 {
                let uniform = rng.next_f32();
                let mut step = Step::default();
                step.push(Op::Sample(Sample { x, out, n: 1, width, temperature, top_k, top_p, min_p, uniform }));
                b.execute(&step).unwrap();
                let got = pollster::block_on(b.read_u32(out, 0, 1)).unwrap()[0];
                let want = sample_row(row, temperature, top_k, top_p, min_p, uniform);
                checked += 1;
                if got != want {
                    failures.push(format!(
                        "width={width} T={temperature} top_k={top_k} top_p={top_p} min_p={min_p} u={uniform}: got {got}, want {want} (row starts {:?})",
                        &row[..width.min(6)]
                    ));
                }
            }
        }
        b.free(x);
        b.free(out);
    }
    assert!(failures.is_empty(), "{} of {checked} draws differ:\n  {}", failures.len(), failures.join("\n  "));
}

#[test]
fn bad_sample_parameters_are_errors() {
    let mut b = match pollster::block_on(WgpuBackend::new(WgpuOptions::default())) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIP sample_wgpu: {e}");
            return;
        }
    };
    let x = b.alloc(DType::F32, 8).unwrap();
    let out = b.alloc(DType::U32, 1).unwrap();
    let ok = Sample { x, out, n: 1, width: 8, temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, uniform: 0.5 };
    for bad in [
        Sample { temperature: 0.0, ..ok.clone() },
        Sample { temperature: f32::NAN, ..ok.clone() },
        Sample { top_p: 0.0, ..ok.clone() },
        Sample { top_p: 1.5, ..ok.clone() },
        Sample { min_p: -0.1, ..ok.clone() },
        Sample { uniform: 1.0, ..ok.clone() },
        Sample { width: 9, ..ok.clone() },
        Sample { out: x, ..ok.clone() },
    ] {
        let mut step = Step::default();
        step.push(Op::Sample(bad.clone()));
        assert!(b.execute(&step).is_err(), "{bad:?}");
    }
    let mut step = Step::default();
    step.push(Op::Sample(ok));
    b.execute(&step).unwrap();
}
