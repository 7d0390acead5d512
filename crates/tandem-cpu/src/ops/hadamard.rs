//! The orthonormal Walsh-Hadamard rotation of every run of `size` values, in place (the
//! rotation a quantized KV cache stores K and V under).

use tandem_core::ops::Hadamard;
use tandem_core::Result;

use super::chunk_rows;
use crate::table::Table;
use crate::Exec;

const OP: &str = "hadamard";

pub(crate) fn run(t: &mut Table, ex: Exec, op: &Hadamard) -> Result<()> {
    t.with_out(OP, "x", op.x, |_, x| {
        let x = &mut x.f32_mut()[..op.len];
        if ex.fast {
            // Runs of a head each: whole runs per chunk, the same butterflies as the reference.
            let ex = ex.sized(op.len * op.size.trailing_zeros() as usize);
            let rows = chunk_rows(op.len / op.size, ex.threads(), 64);
            ex.for_chunks(x, rows * op.size, |_, xs| reference(xs, op.size));
        } else {
            reference(x, op.size);
        }
        Ok(())
    })
}

/// x: runs of `size` values (a power of two), each rotated: the fast transform's butterflies
/// stage by stage (pairs i, i + h for h = 1, 2, 4, ...: a + b, a - b), then 1 / sqrt(size).
pub(crate) fn reference(x: &mut [f32], size: usize) {
    let scale = 1.0 / (size as f32).sqrt();
    for run in x.chunks_exact_mut(size) {
        let mut h = 1;
        while h < size {
            for pair in run.chunks_exact_mut(2 * h) {
                let (lo, hi) = pair.split_at_mut(h);
                for (a, b) in lo.iter_mut().zip(hi) {
                    (*a, *b) = (*a + *b, *a - *b);
                }
            }
            h *= 2;
        }
        for v in run {
            *v *= scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// H / sqrt(n) against its definition, H[i][j] = (-1)^popcount(i & j), and its own inverse.
    #[test]
    fn the_butterflies_are_the_normalized_hadamard_matrix() {
        let n = 16;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut y = x.clone();
        reference(&mut y, n);
        for (i, &yi) in y.iter().enumerate() {
            let want: f32 = (0..n)
                .map(|j| if (i & j).count_ones() % 2 == 0 { x[j] } else { -x[j] })
                .sum::<f32>()
                / (n as f32).sqrt();
            assert!((yi - want).abs() < 1e-5, "{i}: {yi} vs {want}");
        }
        reference(&mut y, n);
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-5), "not its own inverse");
    }
}
