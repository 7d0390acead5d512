//! `TANDEM_CUDA_PROFILE=1`: the GPU time of every kernel, by entry point, printed to stderr
//! when the backend is dropped. Each launch is bracketed by timing events and the stream is
//! waited for after every step, so profiled runs are slower and run without graphs: this is
//! for finding where a step's time goes, not for measuring its speed.

use std::collections::HashMap;

use cudarc::driver::sys;
use tandem_core::Result;

use crate::device::TimingEvent;
use crate::launch::Launch;

#[derive(Default)]
pub(crate) struct Profile {
    /// entry -> (launches, total ms, grid and block of the first launch)
    totals: HashMap<&'static str, (u64, f64, String)>,
    steps: u64,
}

impl Profile {
    pub fn wanted() -> bool {
        std::env::var("TANDEM_CUDA_PROFILE").is_ok_and(|v| v != "0")
    }

    /// Launches `launches` on `stream` one by one, timing each, and waits for them.
    pub fn run(
        &mut self,
        launches: &[Launch],
        stream: sys::CUstream,
        sync: impl Fn() -> Result<()>,
    ) -> Result<()> {
        let mut marks = Vec::with_capacity(launches.len());
        for l in launches {
            let (start, end) = (TimingEvent::new()?, TimingEvent::new()?);
            start.record(stream)?;
            l.enqueue(stream)?;
            end.record(stream)?;
            marks.push((l, start, end));
        }
        sync()?;
        for (l, start, end) in marks {
            let ms = end.since(&start)? as f64;
            let t = self
                .totals
                .entry(l.entry)
                .or_insert_with(|| (0, 0.0, format!("grid {:?} block {}", l.grid, l.block)));
            t.0 += 1;
            t.1 += ms;
        }
        self.steps += 1;
        Ok(())
    }

    pub fn report(&self) -> String {
        let mut rows: Vec<_> = self.totals.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let total: f64 = rows.iter().map(|r| r.1 .1).sum();
        let mut s = format!("CUDA kernel time over {} steps: {total:.3} ms\n", self.steps);
        for (entry, (n, ms, shape)) in rows {
            s += &format!(
                "{:>9.3} ms {:>5.1}% {:>8} launches {:>9.2} us each  {entry}  ({shape})\n",
                ms,
                100.0 * ms / total.max(1e-9),
                n,
                1e3 * ms / *n as f64
            );
        }
        s
    }
}
