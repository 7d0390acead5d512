//! Runs the CPU fallback's matmul kernels on small zero buffers as soon as the backend is
//! chosen, before the model's bytes arrive.
//!
//! Why: V8 runs WebAssembly first as its baseline compiler's code (Liftoff) and compiles a
//! function with its optimizing compiler (TurboFan), in the background, only once that function
//! has run for a while. Left alone, the kernels first run on the first request, so part of its
//! prompt runs as baseline code. Run here, they are compiled while the model downloads. The
//! first request still does other first-time work (tokenizer, chat template, the other ops);
//! bench/BROWSER.md has the measurements. This costs a few milliseconds; every buffer is freed
//! again.

use tandem_core::ops::{Matmul, Op};
use tandem_core::{Backend, BufId, DType, Result, Step};
use tandem_cpu::CpuBackend;

/// One weight row's length and the rows: a few blocks per row, enough rows for several chunks.
const K: usize = 256;
const M: usize = 64;
/// Tokens of the prompt-shaped product (more than one group of the prompt kernel).
const N: usize = 9;
/// Times the step runs: enough for V8 to decide to optimize the kernels.
const RUNS: usize = 8;

/// Runs a one-token and a prompt-shaped product for each quantized weight type models use.
pub fn warm_up(cpu: &mut CpuBackend) -> Result<()> {
    let mut bufs = vec![];
    let result = run(cpu, &mut bufs);
    for b in bufs {
        cpu.free(b);
    }
    result
}

fn run(cpu: &mut CpuBackend, bufs: &mut Vec<BufId>) -> Result<()> {
    let mut alloc = |cpu: &mut CpuBackend, dtype: DType, numel: usize| -> Result<BufId> {
        let b = cpu.alloc(dtype, numel)?;
        bufs.push(b);
        Ok(b)
    };
    let x = alloc(cpu, DType::F32, N * K)?;
    let out = alloc(cpu, DType::F32, N * M)?;
    let mut step = Step::default();
    for wdtype in [DType::Q4_1, DType::Q4_0, DType::Q8_0] {
        let w = cpu.alloc_weight(wdtype, M, K)?;
        bufs.push(w);
        for (n, decode_rows) in [(1, 1), (N, 0)] {
            step.push(Op::Matmul(Matmul {
                x,
                w,
                wdtype,
                bias: None,
                out,
                n,
                k: K,
                m: M,
                decode_rows,
            }));
        }
    }
    for _ in 0..RUNS {
        cpu.execute(&step)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_runs_and_frees_everything() {
        let mut cpu = CpuBackend::fast(1).unwrap();
        warm_up(&mut cpu).unwrap();
        assert_eq!(cpu.allocated_bytes(), 0);
    }
}
