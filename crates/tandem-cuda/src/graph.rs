//! CUDA graphs for steps that repeat: a decode step records the same ops every token, with
//! only a few per-step values changing (Attention's ctx_len, Sample's uniform), and those
//! reach the kernels through device memory (dyn slots) written with the step's uploads. So a
//! step is captured once when it repeats the previous step's ops (those fields aside) and then
//! replayed with one launch while the shapes stay the same.

use cudarc::driver::{result, sys};
use tandem_core::ops::Op;
use tandem_core::Result;

use crate::device::driver_err;
use crate::launch::Launch;

/// Graphs kept at once (greedy and sampled decode of a model, say); the oldest goes first.
const KEEP: usize = 4;

pub(crate) struct Graphs {
    pub enabled: bool,
    /// The last step's ops, reused (no allocation per step once it has grown).
    prev: Vec<Op>,
    cache: Vec<(Vec<Op>, sys::CUgraphExec)>,
    /// Why capture was turned off, if it failed once.
    pub disabled: Option<String>,
}

/// Equal as graph keys: everything but the fields a graph reads from dyn slots.
fn same_shape(a: &Op, b: &Op) -> bool {
    match (a, b) {
        (Op::Attention(x), Op::Attention(y)) => {
            let mut y = y.clone();
            y.ctx_len = x.ctx_len;
            *x == y
        }
        (Op::Sample(x), Op::Sample(y)) => {
            let mut y = y.clone();
            y.uniform = x.uniform;
            *x == y
        }
        _ => a == b,
    }
}

fn same_ops(a: &[Op], b: &[Op]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_shape(x, y))
}

impl Graphs {
    pub fn new(enabled: bool) -> Self {
        Graphs { enabled, prev: Vec::new(), cache: Vec::new(), disabled: None }
    }

    pub fn find(&self, ops: &[Op]) -> Option<sys::CUgraphExec> {
        self.cache.iter().find(|(k, _)| same_ops(k, ops)).map(|(_, g)| *g)
    }

    /// Whether `ops` repeat the previous step's; then remembers them as the previous step.
    pub fn repeats(&mut self, ops: &[Op]) -> bool {
        let same = same_ops(&self.prev, ops);
        self.prev.clear();
        self.prev.extend_from_slice(ops);
        same
    }

    /// Captures `launches` into a graph kept for `ops`. The stream must be idle of capture.
    pub fn capture(&mut self, stream: sys::CUstream, ops: &[Op], launches: &[Launch]) -> Result<sys::CUgraphExec> {
        // SAFETY: the stream is live; thread-local mode only forbids unsafe calls (allocation,
        // synchronization) from this thread until end_capture, and none happen in between.
        unsafe { result::stream::begin_capture(stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) }
            .map_err(|e| driver_err("starting graph capture", e))?;
        let mut failed = None;
        for l in launches {
            if let Err(e) = l.enqueue(stream) {
                failed = Some(e);
                break;
            }
        }
        // Always end the capture, so the stream is usable whatever happened.
        // SAFETY: capture was begun on this stream above.
        let graph = unsafe { result::stream::end_capture(stream) };
        if let Some(e) = failed {
            if let Ok(g) = graph {
                // SAFETY: the graph from end_capture, destroyed once.
                let _ = unsafe { result::graph::destroy(g) };
            }
            return Err(e);
        }
        let graph = graph.map_err(|e| driver_err("ending graph capture", e))?;
        // SAFETY: a complete graph; once instantiated the executable no longer needs it.
        let exec = unsafe {
            let exec = result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0));
            let _ = result::graph::destroy(graph);
            exec
        }
        .map_err(|e| driver_err("instantiating a CUDA graph", e))?;
        if self.cache.len() >= KEEP {
            let (_, old) = self.cache.remove(0);
            // SAFETY: no launch of it is pending past the stream's order (destroy is deferred
            // by the driver until its launches complete).
            let _ = unsafe { result::graph::exec_destroy(old) };
        }
        self.cache.push((ops.to_vec(), exec));
        Ok(exec)
    }

    pub fn launch(exec: sys::CUgraphExec, stream: sys::CUstream) -> Result<()> {
        // SAFETY: a live executable graph, launched on the stream it was captured from.
        unsafe { result::graph::launch(exec, stream) }.map_err(|e| driver_err("launching a CUDA graph", e))
    }

    /// Drops every graph (a buffer they point into was freed or moved).
    pub fn clear(&mut self) {
        for (_, g) in self.cache.drain(..) {
            // SAFETY: as in capture.
            let _ = unsafe { result::graph::exec_destroy(g) };
        }
        self.prev.clear();
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }
}
