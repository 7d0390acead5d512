//! Structured output's masks for a step, computed while the backend runs the step's layers:
//! natively on a thread of the scheduler's own (the CPU backend runs the layers on the calling
//! thread), in a browser before the step (a worker has no threads to spare).

use crate::constraint::Constraint;
use crate::Result;

/// One constrained chunk's work: its request's constraint (lent for the step), the draft its
/// rows verify, and then the masks of its rows.
pub(super) struct Job {
    /// The request's index among the running ones.
    pub seq: usize,
    pub constraint: Constraint,
    pub draft: Vec<u32>,
    pub masks: Result<Vec<u32>>,
}

impl Job {
    fn run(&mut self) {
        self.masks = self.constraint.masks_along(&self.draft);
    }
}

/// Where a step's jobs are computed.
#[derive(Default)]
pub(super) struct MaskWorker {
    #[cfg(not(target_arch = "wasm32"))]
    thread: Option<native::Thread>,
}

/// Jobs on their way: on the worker's thread, or already done.
pub(super) enum Pending {
    Done(Vec<Job>),
    #[cfg(not(target_arch = "wasm32"))]
    Sent,
}

impl MaskWorker {
    /// Starts computing `jobs`' masks.
    pub fn start(&mut self, mut jobs: Vec<Job>) -> Pending {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let thread = self.thread.get_or_insert_with(native::Thread::spawn);
            match thread.send(jobs) {
                Ok(()) => return Pending::Sent,
                // No thread could be had: compute them here.
                Err(back) => jobs = back,
            }
        }
        jobs.iter_mut().for_each(Job::run);
        Pending::Done(jobs)
    }

    /// The jobs of `pending`, with their masks (blocks until the worker has them).
    pub fn wait(&mut self, pending: Pending) -> Vec<Job> {
        match pending {
            Pending::Done(jobs) => jobs,
            #[cfg(not(target_arch = "wasm32"))]
            Pending::Sent => self.thread.as_mut().expect("sent to it").recv(),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::sync::mpsc::{channel, Receiver, Sender};

    use super::Job;

    /// A thread that computes each batch of jobs it is sent and sends them back; it ends when
    /// the scheduler drops its sender.
    pub(super) struct Thread {
        to: Option<Sender<Vec<Job>>>,
        from: Receiver<Vec<Job>>,
    }

    impl Thread {
        pub fn spawn() -> Self {
            let (to, rx) = channel::<Vec<Job>>();
            let (tx, from) = channel();
            let spawned =
                std::thread::Builder::new().name("tandem-masks".into()).spawn(move || {
                    while let Ok(mut jobs) = rx.recv() {
                        jobs.iter_mut().for_each(Job::run);
                        if tx.send(jobs).is_err() {
                            break;
                        }
                    }
                });
            Thread { to: spawned.ok().map(|_| to), from }
        }

        /// Sends `jobs`, or gives them back when there is no thread.
        pub fn send(&mut self, jobs: Vec<Job>) -> Result<(), Vec<Job>> {
            match &self.to {
                Some(to) => to.send(jobs).map_err(|e| {
                    self.to = None;
                    e.0
                }),
                None => Err(jobs),
            }
        }

        /// The jobs back; none if the thread died with them (a panic inside llguidance): their
        /// requests then fail, not the scheduler, and later jobs run on the caller's thread.
        pub fn recv(&mut self) -> Vec<Job> {
            self.from.recv().unwrap_or_else(|_| {
                self.to = None;
                vec![]
            })
        }
    }
}
