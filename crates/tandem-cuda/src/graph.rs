//! CUDA graphs for steps that repeat: a decode step launches the same kernels with the same
//! arguments every token (what changes, the positions, block tables, sampling parameters and
//! ids, is data in buffers the step uploads, and Attention's max_ctx sizes its grid only in
//! powers of two), so it is captured once and then replayed with one launch while its launches
//! stay the same. Keying on the launches rather than on the ops means any op field a kernel
//! does see forces a new graph. A decode step is captured on first sight (the next tokens
//! repeat it, a new batch or a grid growing with the contexts included); any other step when
//! it repeats the previous step's launches (prompt chunks rarely do).

use cudarc::driver::{result, sys};
use tandem_core::ops::Op;
use tandem_core::Result;

use crate::device::driver_err;
use crate::launch::Launch;

/// Graphs kept at once (greedy and sampled decode of a model, say); the oldest goes first.
const KEEP: usize = 4;

pub(crate) struct Graphs {
    pub enabled: bool,
    /// The last step's launches, reused (no allocation per step once it has grown).
    prev: Vec<Launch>,
    cache: Vec<(Vec<Launch>, sys::CUgraphExec)>,
    /// Why capture was turned off, if it failed once.
    pub disabled: Option<String>,
}

/// Whether `ops` are a decode step: products and attention over decode rows only.
pub(crate) fn decode_step(ops: &[Op]) -> bool {
    let mut any = false;
    for op in ops {
        let (n, decode_rows) = match op {
            Op::Matmul(m) => (m.n, m.decode_rows),
            Op::Attention(a) => (a.n, a.decode_rows),
            _ => continue,
        };
        if decode_rows != n {
            return false;
        }
        any = true;
    }
    any
}

impl Graphs {
    pub fn new(enabled: bool) -> Self {
        Graphs { enabled, prev: Vec::new(), cache: Vec::new(), disabled: None }
    }

    pub fn find(&self, launches: &[Launch]) -> Option<sys::CUgraphExec> {
        self.cache.iter().find(|(k, _)| k.as_slice() == launches).map(|(_, g)| *g)
    }

    /// Whether `launches` repeat the previous step's; then remembers them as the previous step.
    pub fn repeats(&mut self, launches: &[Launch]) -> bool {
        let same = self.prev.as_slice() == launches;
        self.prev.clear();
        self.prev.extend_from_slice(launches);
        same
    }

    /// Captures `launches` into a graph kept for them. The stream must be idle of capture.
    pub fn capture(
        &mut self,
        stream: sys::CUstream,
        launches: &[Launch],
    ) -> Result<sys::CUgraphExec> {
        // SAFETY: the stream is live; thread-local mode only forbids unsafe calls (allocation,
        // synchronization) from this thread until end_capture, and none happen in between.
        unsafe {
            result::stream::begin_capture(
                stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        }
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
        self.cache.push((launches.to_vec(), exec));
        Ok(exec)
    }

    pub fn launch(exec: sys::CUgraphExec, stream: sys::CUstream) -> Result<()> {
        // SAFETY: a live executable graph, launched on the stream it was captured from.
        unsafe { result::graph::launch(exec, stream) }
            .map_err(|e| driver_err("launching a CUDA graph", e))
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
