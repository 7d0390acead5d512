//! The WebGPU Sample kernel against `sample_with` on rows built to hit its edges: ties at the
//! top_k and top_p boundaries, +-0, NaN and +-inf, rows with no finite logit, one-element rows,
//! greedy rows, many draws per row. No adapter: SKIP.
//!
//! Rows stay at most a few thousand wide: `sample_row` sums weights sequentially in f32 (the
//! top_p mass in descending order, the draw in id order) while the kernel sums them in
//! parallel, and on rows of ~10^5 tokens that all stay kept the two orders round apart enough
//! to move the draw by a few ids on a sizeable share of draws.

use tandem_core::backend::{Backend, BackendExt, Step};
use tandem_core::ops::{Op, Sample, SampleRow};
use tandem_core::sampling::{sample_with, Rng};
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
        vec![nan, -inf, nan],
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
    let filters: &[(f32, u32, f32, f32)] = &[
        (0.0, 0, 1.0, 0.0),
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
        (1.0, u32::MAX, 1e-6, 0.0),
    ];
    let mut failures = vec![];
    let mut checked = 0;
    for row in &rows {
        let width = row.len();
        let x = b.alloc(DType::F32, width).unwrap();
        b.write(x, bytemuck::cast_slice(row)).unwrap();
        let out = b.alloc(DType::U32, 1).unwrap();
        let params = b.alloc(DType::U32, SampleRow::WORDS).unwrap();
        for &(temperature, top_k, top_p, min_p) in filters {
            for _ in 0..4 {
                let p = SampleRow { temperature, top_k, top_p, min_p, uniform: rng.next_f32() };
                let mut step = Step::default();
                step.write_u32(params, &SampleRow::to_words(&[p]));
                step.push(Op::Sample(Sample { x, params, out, n: 1, width }));
                b.execute(&step).unwrap();
                let got = pollster::block_on(b.read_u32(out, 0, 1)).unwrap()[0];
                let want = sample_with(row, &p);
                checked += 1;
                if got != want {
                    failures.push(format!(
                        "width={width} {p:?}: got {got}, want {want} (row starts {:?})",
                        &row[..width.min(6)]
                    ));
                }
            }
        }
        for id in [x, out, params] {
            b.free(id);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} draws differ:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
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
    let out = b.alloc(DType::U32, 2).unwrap();
    let params = b.alloc(DType::U32, SampleRow::WORDS).unwrap();
    let op = Sample { x, params, out, n: 1, width: 8 };
    let ok = SampleRow { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, uniform: 0.5 };
    let run = |b: &mut WgpuBackend, row: SampleRow, op: &Sample| {
        let mut step = Step::default();
        step.write_u32(params, &SampleRow::to_words(&[row]));
        step.push(Op::Sample(op.clone()));
        b.execute(&step)
    };
    for bad in [
        SampleRow { temperature: -1.0, ..ok },
        SampleRow { temperature: f32::NAN, ..ok },
        SampleRow { temperature: f32::INFINITY, ..ok },
        SampleRow { top_p: 0.0, ..ok },
        SampleRow { top_p: 1.5, ..ok },
        SampleRow { min_p: -0.1, ..ok },
        SampleRow { uniform: 1.0, ..ok },
    ] {
        assert!(run(&mut b, bad, &op).is_err(), "{bad:?}");
    }
    for bad in [
        Sample { width: 9, ..op.clone() },
        Sample { out: x, ..op.clone() },
        // Two rows need ten parameter words.
        Sample { n: 2, width: 4, ..op.clone() },
    ] {
        assert!(run(&mut b, ok, &bad).is_err(), "{bad:?}");
    }
    run(&mut b, ok, &op).unwrap();
    // Temperature 0 is a greedy row, not an error.
    run(&mut b, SampleRow::greedy(), &op).unwrap();
}
