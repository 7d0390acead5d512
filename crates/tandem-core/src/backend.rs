//! The interface every backend implements. The engine owns no memory of its own: it asks the
//! backend for buffers, uploads weights once, then per step hands over one [`Step`] (small
//! uploads + all ops of all layers) and reads back small results asynchronously.

use std::ops::Range;

use crate::dtype::DType;
use crate::ops::{Matmul, Op, Precision};
use crate::{Error, Result};

/// A backend-owned buffer. Ids are only meaningful to the backend that issued them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufId(pub u32);

/// One step of work: uploads applied first (token ids, positions, slots, block tables), then
/// every op in order, with no synchronization in between.
#[derive(Debug, Default, Clone)]
pub struct Step {
    pub writes: Vec<(BufId, Vec<u8>)>,
    pub ops: Vec<Op>,
    /// (buffer, offset, len), in bytes: ranges the engine will read right after this step; a
    /// backend may stage them in the same submission (a GPU copies them into mappable memory
    /// so the read costs no second submit). Only a hint: any range may still be read.
    pub read_back: Vec<(BufId, usize, usize)>,
    /// Consecutive matmuls of `ops` that read the same input (q, k and v; gate and up),
    /// recorded by the model where it knows them ([`Step::group`]), in order and disjoint. A
    /// backend may run a group's members together (one pass over x, one launch) or one by
    /// one; either way each output is the one its op gives alone. [`Backend::execute`] checks
    /// them ([`check_groups`]), so a backend can trust what it is given.
    pub groups: Vec<Range<usize>>,
}

impl Step {
    pub fn write_u32(&mut self, buf: BufId, data: &[u32]) {
        self.writes.push((buf, bytemuck::cast_slice(data).to_vec()));
    }
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Pushes `ops` as one group: matmuls over the same x (the same n, k and decode rows),
    /// none of whose outputs is x or another member's operand (see [`check_group`]). A group
    /// that breaks these rules is refused and nothing is pushed.
    pub fn group(&mut self, ops: impl IntoIterator<Item = Matmul>) -> Result<()> {
        let start = self.ops.len();
        self.ops.extend(ops.into_iter().map(Op::Matmul));
        let range = start..self.ops.len();
        if let Err(e) = check_group(&self.ops[range.clone()]) {
            self.ops.truncate(start);
            return Err(e);
        }
        self.groups.push(range);
        Ok(())
    }
}

/// Checks `ops` as a group ([`Step::groups`]): two or more matmuls reading the same x, with the
/// same n, k and decode rows, whose outputs are distinct, none of them x, and none another
/// member's weight or bias (so running the members together or one by one is the same).
pub fn check_group(ops: &[Op]) -> Result<()> {
    let bad = |msg: String| Err(Error::InvalidParameter(format!("matmul group: {msg}")));
    if ops.len() < 2 {
        return bad(format!("a group has at least two matmuls, got {}", ops.len()));
    }
    // No allocation unless it fails: `execute` checks every step's groups.
    fn matmul(op: &Op) -> Result<&Matmul> {
        match op {
            Op::Matmul(m) => Ok(m),
            other => Err(Error::InvalidParameter(format!(
                "matmul group: a group holds matmuls only, got {}",
                other.name()
            ))),
        }
    }
    let first = matmul(&ops[0])?;
    for (i, m) in ops.iter().enumerate() {
        let m = matmul(m)?;
        if m.x != first.x {
            return bad(format!(
                "member {i} reads buffer {}, not the shared x {}",
                m.x.0, first.x.0
            ));
        }
        if (m.n, m.k, m.decode_rows) != (first.n, first.k, first.decode_rows) {
            return bad(format!(
                "member {i} has n={} k={} decode rows {}, the group n={} k={} decode rows {}",
                m.n, m.k, m.decode_rows, first.n, first.k, first.decode_rows
            ));
        }
        if m.out == first.x {
            return bad(format!("member {i} writes the shared x (buffer {})", m.x.0));
        }
        for (j, o) in ops.iter().enumerate().filter(|&(j, _)| j != i) {
            let o = matmul(o)?;
            if m.out == o.out || m.out == o.w || Some(m.out) == o.bias {
                return bad(format!(
                    "member {i} writes buffer {}, which member {j} also uses",
                    m.out.0
                ));
            }
        }
    }
    Ok(())
}

/// Checks a step's groups: in bounds, in order, disjoint, each one a group ([`check_group`]).
pub fn check_groups(step: &Step) -> Result<()> {
    let mut end = 0;
    for g in &step.groups {
        if g.start < end || g.end > step.ops.len() {
            return Err(Error::InvalidParameter(format!(
                "matmul group {g:?}: groups lie in order within the step's {} ops, after {end}",
                step.ops.len()
            )));
        }
        check_group(&step.ops[g.clone()])?;
        end = g.end;
    }
    Ok(())
}

#[allow(async_fn_in_trait)] // single-threaded executors (the browser) need no Send bound
pub trait Backend {
    /// A short name for messages ("cpu-reference", "cpu-fast", "wgpu", ...).
    fn name(&self) -> String;

    /// Whether this backend can run `op` with its dtypes and shapes: only what is this
    /// backend's own (a dtype it has kernels for, a head size its kernels hold). Asked only of
    /// ops whose shape the engine has checked ([`Op::check_shape`]); [`Backend::execute`] asks
    /// it for every op of every step, and an unsupported op is an error, never a silent
    /// fallback.
    fn supports(&self, op: &Op) -> bool;

    /// The precision class in which this backend computes `op` (see [`Precision`]).
    fn precision(&self, _op: &Op) -> Precision {
        Precision::F32
    }

    /// A zero-filled buffer of `numel` elements of `dtype` (`dtype.storage_bytes(numel)` bytes).
    fn alloc(&mut self, dtype: DType, numel: usize) -> Result<BufId>;

    /// A zero-filled weight matrix [rows, cols]. Backends whose bindings have a size limit (WebGPU)
    /// may store a large matrix as several buffers of whole rows; ops that read weights
    /// (Matmul, Embed) handle that, others never see such a buffer.
    fn alloc_weight(&mut self, dtype: DType, rows: usize, cols: usize) -> Result<BufId> {
        self.alloc(dtype, rows * cols)
    }

    /// Overwrites the start of `buf` with `bytes` (weights at load time; poison in tests).
    fn write(&mut self, buf: BufId, bytes: &[u8]) -> Result<()> {
        self.write_at(buf, 0, bytes)
    }

    /// Overwrites `bytes.len()` bytes of `buf` from byte `offset` (an adapter's slot of its
    /// pool). Offset and length are multiples of 4; a weight split across bindings (WebGPU)
    /// takes whole writes only.
    fn write_at(&mut self, buf: BufId, offset: usize, bytes: &[u8]) -> Result<()>;

    fn free(&mut self, buf: BufId);

    /// The dtype and element count of `buf`, or `None` when it is not allocated: what the
    /// engine checks each op's operands against.
    fn buffer(&self, buf: BufId) -> Option<BufInfo>;

    /// Runs a whole step after checking every op ([`check_op`], then `supports`) and its
    /// groups ([`check_groups`]): on error nothing ran. Errors found while running (a bad index in the data) leave buffers
    /// unspecified but the backend usable.
    fn execute(&mut self, step: &Step) -> Result<()> {
        for op in &step.ops {
            check_op(op, |b| self.buffer(b))?;
            if !self.supports(op) {
                return Err(Error::Unsupported {
                    backend: self.name(),
                    op: format!("{} ({op:?})", op.name()),
                });
            }
        }
        check_groups(step)?;
        self.run(step)
    }

    /// Runs a step whose ops [`Backend::execute`] has checked: every operand is allocated, of
    /// its dtype and large enough, no written buffer is also another operand, the backend
    /// supports the op, and every group is one ([`check_group`]). Callers go through `execute`.
    fn run(&mut self, step: &Step) -> Result<()>;

    /// Reads `len` bytes of `buf` from byte `offset`, after all submitted work is done.
    async fn read(&mut self, buf: BufId, offset: usize, len: usize) -> Result<Vec<u8>>;

    /// Bytes currently allocated through this backend.
    fn allocated_bytes(&self) -> usize;

    /// The device's memory bandwidth as a large device-to-device copy achieves it, in bytes
    /// per second (bytes read plus bytes written), where the backend can measure it: the
    /// ceiling a benchmark's decode bandwidth is compared against. `None` where it cannot.
    fn copy_bandwidth(&mut self) -> Option<Result<f64>> {
        None
    }
}

/// What the engine knows of a backend's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufInfo {
    pub dtype: DType,
    pub numel: usize,
}

/// The checks every op passes before any backend sees it, in one place: its shape rules
/// ([`Op::check_shape`]), then each of its operands ([`Op::operands`]) against the buffer
/// `info` describes: allocated, of the operand's dtype, with at least its elements, and, when
/// the op writes it, no other operand of the op. Allocates nothing unless it fails.
pub fn check_op(op: &Op, info: impl Fn(BufId) -> Option<BufInfo>) -> Result<()> {
    op.check_shape()?;
    let name = op.family();
    let operands = op.operands()?;
    for (i, o) in operands.iter().enumerate() {
        let b = info(o.buf).ok_or_else(|| {
            Error::InvalidParameter(format!(
                "{name}: {} is buffer {}, which is not allocated",
                o.role, o.buf.0
            ))
        })?;
        if b.dtype != o.dtype {
            return Err(Error::ShapeMismatch {
                op: name,
                expected: format!("{} of dtype {}", o.role, o.dtype),
                got: format!("{} of dtype {}", o.role, b.dtype),
            });
        }
        if b.numel < o.numel {
            return Err(Error::ShapeMismatch {
                op: name,
                expected: format!("{} of at least {} elements", o.role, o.numel),
                got: format!("{} elements", b.numel),
            });
        }
        if let Some(other) =
            operands[..i].iter().find(|p| p.buf == o.buf && (p.written() || o.written()))
        {
            return Err(Error::InvalidParameter(format!(
                "{name}: {} is buffer {}, which is also its {}, and one of them is written",
                o.role, o.buf.0, other.role
            )));
        }
    }
    Ok(())
}

/// A host copy of a small u32 buffer (token ids, KV slots, a block table) as last uploaded, for
/// GPU backends: with it an op checks the indices it will follow before launching
/// ([`crate::ops::check_indices`]), as the CPU does on the data itself; a kernel could only skip
/// a bad index silently. A kernel writing the buffer makes the copy stale: `forget` it then.
#[derive(Debug, Default, Clone)]
pub struct U32Shadow(Option<Vec<u32>>);

impl U32Shadow {
    /// Larger u32 buffers are never index inputs; copying them would cost for nothing.
    pub const MAX_ELEMENTS: usize = 1 << 16;

    /// Records an upload of `bytes` at the start of a buffer of `numel` elements of `dtype`
    /// (no allocation after the first).
    pub fn write(&mut self, dtype: DType, numel: usize, bytes: &[u8]) {
        if dtype == DType::U32 && numel <= Self::MAX_ELEMENTS {
            let s = self.0.get_or_insert_with(|| vec![0; numel]);
            for (dst, c) in s.iter_mut().zip(bytes.chunks_exact(4)) {
                *dst = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }

    pub fn forget(&mut self) {
        self.0 = None;
    }

    /// The first `n` values, when the copy is current (ops that check several index buffers
    /// together, as attention does).
    pub fn values(&self, n: usize) -> Option<&[u32]> {
        self.0.as_deref().map(|v| &v[..n.min(v.len())])
    }

    /// Checks the first `n` values against `limit` when the copy is current (see
    /// [`crate::ops::check_indices`]); without one there is nothing to check on the host.
    pub fn check_indices(
        &self,
        op: &'static str,
        name: &str,
        n: usize,
        limit: usize,
        what: &str,
    ) -> Result<()> {
        match self.values(n) {
            Some(v) => crate::ops::check_indices(op, name, v, limit, what),
            None => Ok(()),
        }
    }
}

/// Typed readback helpers shared by every backend.
#[allow(async_fn_in_trait)]
pub trait BackendExt: Backend {
    async fn read_f32(&mut self, buf: BufId, offset: usize, len: usize) -> Result<Vec<f32>> {
        let bytes = self.read(buf, offset * 4, len * 4).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
    async fn read_u32(&mut self, buf: BufId, offset: usize, len: usize) -> Result<Vec<u32>> {
        let bytes = self.read(buf, offset * 4, len * 4).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

impl<B: Backend + ?Sized> BackendExt for B {}
