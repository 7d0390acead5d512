//! A step's worker team: the calling thread plus `threads - 1` helpers that stay awake for the
//! whole step and take work items from each parallel section as it comes.
//!
//! Why not a fork/join per op: a decode step is ~250 parallel sections (matmuls, attention)
//! of tens of microseconds each, and handing each to a thread pool costs a wake-up and a
//! sleep each way, which was a tenth of a small model's decode. Here the helpers are started
//! once per step (one pool job each) and spin between sections, so a section costs a store
//! and a few cache-line round trips. A helper that finds nothing to do for a while parks, so
//! a slow stretch of serial work, or a machine with fewer free cores than threads, does not
//! burn a core. llama.cpp's thread pool does the same.
//!
//! A section is `run(n, work)`: items 0..n are claimed one at a time from a shared counter by
//! whoever is free (the caller too), so a descheduled thread cannot strand a fixed share; it
//! returns when every item is done. Which thread runs an item never changes its result.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::Mutex;
use std::thread::Thread;

/// Spins of an idle helper before it parks (each a `spin_loop` hint, ~tens of ns).
const SPINS: u32 = 20_000;

type Work<'a> = &'a (dyn Fn(usize) + Sync);

pub(crate) struct Team {
    threads: usize,
    /// The current section: generation in the high 32 bits, next unclaimed item in the low.
    claim: AtomicU64,
    /// The current section: its generation, item count and work. The generation travels with
    /// the count: a helper that read `claim` just before a newer section was published must
    /// not bound the old generation's counter by the new count (it would claim a phantom item
    /// of the old section, run the new work on it and count it as done for the new section).
    job: Mutex<Option<(u64, usize, Work<'static>)>>,
    /// Items of the current section finished.
    done: AtomicUsize,
    /// A helper's work panicked (the caller re-raises it).
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Helpers that parked, to wake on the next section.
    parked: Mutex<Vec<Thread>>,
    sleepers: AtomicUsize,
}

impl Team {
    /// Runs `body` with a team of `threads` on `pool` (`threads - 1` helpers, started once).
    pub(crate) fn with<R>(
        pool: &rayon::ThreadPool,
        threads: usize,
        body: impl FnOnce(&Team) -> R,
    ) -> R {
        let team = Team {
            threads,
            claim: AtomicU64::new(0),
            job: Mutex::new(None),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            parked: Mutex::new(Vec::new()),
            sleepers: AtomicUsize::new(0),
        };
        pool.in_place_scope(|s| {
            for _ in 1..threads {
                s.spawn(|_| team.helper());
            }
            // Stop the helpers however `body` ends, or the scope would wait for them forever.
            struct Stop<'a>(&'a Team);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.stop.store(true, SeqCst);
                    self.0.wake();
                }
            }
            let _stop = Stop(&team);
            body(&team)
        })
    }

    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// work(i) for every i in 0..n, across the team; returns when all are done.
    pub(crate) fn run(&self, n: usize, work: &(dyn Fn(usize) + Sync)) {
        if n <= 1 || self.threads <= 1 {
            return (0..n).for_each(work);
        }
        // SAFETY: the reference is only called for items claimed under this generation, all
        // of which are finished before this function returns (it waits for `done == n`);
        // a helper that read it late finds the generation moved on and never calls it.
        let work: Work<'static> = unsafe { std::mem::transmute::<Work<'_>, Work<'static>>(work) };
        let gen = (self.claim.load(SeqCst) >> 32) + 1;
        *self.job.lock().unwrap() = Some((gen, n, work));
        self.done.store(0, SeqCst);
        self.claim.store(gen << 32, SeqCst);
        if self.sleepers.load(SeqCst) > 0 {
            self.wake();
        }
        self.take(gen, n, work);
        // The last items may be on a helper that lost its core: spin briefly, then yield it.
        let mut spins = 0u32;
        while self.done.load(Acquire) < n {
            spins += 1;
            if spins < SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *self.job.lock().unwrap() = None;
        if self.panicked.load(SeqCst) {
            panic!("a tandem-cpu worker panicked");
        }
    }

    /// Claims and runs items of generation `gen` (whose section has `n` items) until none are
    /// left.
    fn take(&self, gen: u64, n: usize, work: Work<'_>) {
        let mut c = self.claim.load(Acquire);
        loop {
            let i = (c & 0xffff_ffff) as usize;
            if c >> 32 != gen || i >= n {
                return;
            }
            // A compare-exchange, not an add: a helper still holding an older generation must
            // not move the counter of a newer one (its item would never run).
            if let Err(now) = self.claim.compare_exchange_weak(c, c + 1, AcqRel, Acquire) {
                c = now;
                continue;
            }
            if catch_unwind(AssertUnwindSafe(|| work(i))).is_err() {
                self.panicked.store(true, SeqCst);
            }
            self.done.fetch_add(1, Release);
            c = self.claim.load(Acquire);
        }
    }

    fn helper(&self) {
        let mut seen = 0u64;
        let mut idle = 0u32;
        while !self.stop.load(Acquire) {
            let gen = self.claim.load(Acquire) >> 32;
            if gen != seen {
                seen = gen;
                idle = 0;
                let job = *self.job.lock().unwrap();
                if let Some((gen, n, work)) = job {
                    self.take(gen, n, work);
                }
                continue;
            }
            idle += 1;
            if idle < SPINS {
                std::hint::spin_loop();
                continue;
            }
            // Park until the next section (or the end): announce it first, then look again,
            // so a section published in between is not slept through.
            self.parked.lock().unwrap().push(std::thread::current());
            self.sleepers.fetch_add(1, SeqCst);
            if self.claim.load(SeqCst) >> 32 == seen && !self.stop.load(SeqCst) {
                std::thread::park();
            }
            self.sleepers.fetch_sub(1, SeqCst);
            idle = 0;
        }
    }

    fn wake(&self) {
        for t in self.parked.lock().unwrap().drain(..) {
            t.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sections of alternating small and large item counts, back to back: every item of every
    /// section runs exactly once and before its section returns. A helper that paired a stale
    /// generation with a newer section's count would run an item twice or late.
    #[test]
    fn every_item_runs_once_within_its_section() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        Team::with(&pool, 4, |team| {
            for round in 0..100_000usize {
                let n = if round % 2 == 0 { 2 + round % 3 } else { 40 + round % 7 };
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                team.run(n, &|i| {
                    hits[i].fetch_add(1, SeqCst);
                });
                for (i, h) in hits.iter().enumerate() {
                    assert_eq!(h.load(SeqCst), 1, "round {round}: item {i} of {n}");
                }
            }
        });
    }
}
