//! Backend buffers: one device allocation per tensor, plus a host copy of small u32 buffers
//! (token ids, slots, positions, block tables, sampling parameters) as last uploaded, so ops
//! can check the indices and parameters they will follow before launching (the CPU backend
//! reports a bad id as an error; a kernel could only skip it silently).

use std::collections::HashMap;

use cudarc::driver::sys::CUdeviceptr;
use tandem_core::{BufId, DType, Error, Result, U32Shadow};

pub(crate) struct Entry {
    pub ptr: CUdeviceptr,
    pub dtype: DType,
    pub numel: usize,
    /// Bytes in tandem's layout (`dtype.storage_bytes(numel)`): what write and read address.
    pub bytes: usize,
    pub shadow: Shadow,
}

/// Host copies of small index uploads (see [`U32Shadow`]).
pub(crate) type Shadow = U32Shadow;

#[derive(Default)]
pub(crate) struct Table {
    entries: HashMap<BufId, Entry>,
    next: u32,
    bytes: usize,
}

impl Table {
    pub fn insert(&mut self, e: Entry) -> BufId {
        let id = BufId(self.next);
        self.next = self.next.wrapping_add(1);
        self.bytes += e.bytes;
        self.entries.insert(id, e);
        id
    }

    pub fn remove(&mut self, id: BufId) -> Option<Entry> {
        let e = self.entries.remove(&id)?;
        self.bytes -= e.bytes;
        Some(e)
    }

    pub fn get(&self, id: BufId) -> Option<&Entry> {
        self.entries.get(&id)
    }

    pub fn allocated_bytes(&self) -> usize {
        self.bytes
    }

    pub fn drain(&mut self) -> impl Iterator<Item = Entry> + '_ {
        self.bytes = 0;
        self.entries.drain().map(|(_, e)| e)
    }

    /// Records an upload of `bytes` at the start of `id` in its host copy (no allocation
    /// after the first).
    pub fn shadow_write(&mut self, id: BufId, bytes: &[u8]) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.shadow.write(e.dtype, e.numel, bytes);
        }
    }

    /// The host copy is stale once a kernel writes the buffer.
    pub fn shadow_forget(&mut self, id: BufId) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.shadow.forget();
        }
    }

    /// A buffer of an op that `Backend::execute` checked (allocated, of its dtype, large enough).
    pub fn entry(&self, op: &'static str, role: &str, id: BufId) -> Result<&Entry> {
        self.entries.get(&id).ok_or_else(|| {
            Error::InvalidParameter(format!(
                "{op}: {role} is buffer {}, which is not allocated",
                id.0
            ))
        })
    }
}
