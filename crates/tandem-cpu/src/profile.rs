//! `TANDEM_CPU_PROFILE=1`: the wall time of every op, by op and shape, printed to stderr when
//! the backend is dropped (the CPU twin of `TANDEM_CUDA_PROFILE`). An op's time includes its
//! parallel section's hand-offs and waits, which is what a step pays. For finding where a
//! step's time goes; `tandem bench` measures speed.

use std::collections::HashMap;
use std::time::Instant;

use tandem_core::ops::{Matmul, Op};

#[derive(Default)]
pub(crate) struct Profile {
    /// op and shape -> (calls, total seconds)
    totals: HashMap<String, (u64, f64)>,
    steps: u64,
}

impl Profile {
    /// Never on wasm32 (no environment there, and no clock `Instant` could read).
    pub fn wanted() -> bool {
        std::env::var("TANDEM_CPU_PROFILE").is_ok_and(|v| v != "0")
    }

    pub fn time<R>(&mut self, op: &Op, run: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let r = run();
        let secs = start.elapsed().as_secs_f64();
        let key = match op {
            Op::Matmul(m) => format!(
                "matmul {} n={} k={} m={} (decode rows {})",
                m.wdtype, m.n, m.k, m.m, m.decode_rows
            ),
            Op::Attention(a) => format!("{} n={}", op.name(), a.n),
            _ => op.name().to_string(),
        };
        let t = self.totals.entry(key).or_default();
        t.0 += 1;
        t.1 += secs;
        r
    }

    /// Times a group of matmuls run as one (`ops::matmul::run_group`).
    pub fn time_group<R>(&mut self, ops: &[Op], run: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let r = run();
        let secs = start.elapsed().as_secs_f64();
        let mms: Vec<&Matmul> = ops
            .iter()
            .filter_map(|op| if let Op::Matmul(m) = op { Some(m) } else { None })
            .collect();
        let ms: Vec<String> = mms.iter().map(|m| m.m.to_string()).collect();
        let m = mms[0];
        let key = format!(
            "matmul group {} n={} k={} m={} (decode rows {})",
            m.wdtype,
            m.n,
            m.k,
            ms.join("+"),
            m.decode_rows
        );
        let t = self.totals.entry(key).or_default();
        t.0 += 1;
        t.1 += secs;
        r
    }

    pub fn step(&mut self) {
        self.steps += 1;
    }

    pub fn report(&self) -> String {
        let mut rows: Vec<_> = self.totals.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let total: f64 = rows.iter().map(|r| r.1 .1).sum();
        let mut s = format!("CPU op time over {} steps: {:.3} ms\n", self.steps, 1e3 * total);
        for (key, (n, secs)) in rows {
            s += &format!(
                "{:>9.3} ms {:>5.1}% {:>8} calls {:>9.2} us each  {key}\n",
                1e3 * secs,
                100.0 * secs / total.max(1e-12),
                n,
                1e6 * secs / *n as f64
            );
        }
        s
    }
}
