//! Reading results back. Ranges a step names in [`Step::read_back`] are copied into a mappable
//! buffer by the step's own command encoder, so reading one afterwards costs a map and no
//! submission: a decode token is one submit and 4 bytes. Any other read gets its own copy and
//! submit, as before.
//!
//! [`Step::read_back`]: tandem_core::Step

use tandem_core::{BufId, Result};

use crate::buffers::Table;
use crate::{backend_err, WgpuBackend};

/// Most bytes a step stages; larger read-backs (all logits of a long prompt) take the
/// ordinary path rather than pinning that much mappable memory.
const STAGE_MAX: u64 = 64 << 20;
/// Where staged ranges start in the staging buffer (map offsets must be multiples of 8).
const STAGE_ALIGN: u64 = 256;

/// One range of one buffer, copied whole words at a time.
#[derive(Clone, Copy)]
pub(crate) struct Staged {
    buf: BufId,
    /// The wgpu buffer's uid when staged: a freed and reissued id never matches.
    uid: u64,
    /// Bytes offset..offset + len of `buf`, rounded out to words: start..start + size.
    offset: usize,
    len: usize,
    start: u64,
    size: u64,
    /// Where the copy lands in the step staging buffer.
    at: u64,
}

/// The step staging buffer and what the last step put in it.
#[derive(Default)]
pub(crate) struct StepStaging {
    buffer: Option<wgpu::Buffer>,
    ranges: Vec<Staged>,
}

impl StepStaging {
    /// Nothing staged is current any more (a new step, or a write to `buf`).
    pub fn forget(&mut self, buf: Option<BufId>) {
        self.ranges.retain(|s| buf.is_some_and(|b| b != s.buf));
    }

    fn find(&self, table: &Table, buf: BufId, offset: usize, len: usize) -> Option<Staged> {
        let uid = table.get(buf)?.whole()?.uid;
        self.ranges
            .iter()
            .find(|s| {
                s.buf == buf
                    && s.uid == uid
                    && s.offset <= offset
                    && offset + len <= s.offset + s.len
            })
            .copied()
    }
}

/// The word-aligned span covering bytes offset..offset + len.
fn words(offset: usize, len: usize) -> (u64, u64) {
    let start = offset as u64 & !3;
    (start, (offset + len).next_multiple_of(4) as u64 - start)
}

impl WgpuBackend {
    /// Lays out the step's valid read-back ranges in the step staging buffer (grown as needed)
    /// and returns the copies to encode after the step's pass: (source, start, at, size).
    /// Invalid ranges are skipped: reading them later reports the error.
    pub(crate) fn plan_read_back(
        &mut self,
        ranges: &[(BufId, usize, usize)],
    ) -> Result<Vec<(wgpu::Buffer, u64, u64, u64)>> {
        self.step_staging.forget(None);
        let mut copies = Vec::new();
        let mut end = 0u64;
        for &(buf, offset, len) in ranges {
            let Some(e) = self.table.get(buf) else {
                continue;
            };
            let Some(g) = e.whole() else { continue };
            if len == 0 || offset.checked_add(len).is_none_or(|x| x > e.bytes) {
                continue;
            }
            let (start, size) = words(offset, len);
            let at = end.next_multiple_of(STAGE_ALIGN);
            if at + size > STAGE_MAX {
                continue;
            }
            end = at + size;
            copies.push((g.buffer.clone(), start, at, size));
            self.step_staging.ranges.push(Staged { buf, uid: g.uid, offset, len, start, size, at });
        }
        if end > 0 && self.step_staging.buffer.as_ref().is_none_or(|b| b.size() < end) {
            let size = end.next_power_of_two().max(STAGE_ALIGN);
            match self.scoped(|s| Self::raw_buffer(&s.device, size, read_usage())) {
                Ok(b) => self.step_staging.buffer = Some(b),
                Err(e) => {
                    self.step_staging.forget(None);
                    return Err(e);
                }
            }
        }
        Ok(copies)
    }

    /// Encodes the planned copies into the step's encoder.
    pub(crate) fn encode_read_back(
        &self,
        enc: &mut wgpu::CommandEncoder,
        copies: &[(wgpu::Buffer, u64, u64, u64)],
    ) {
        if let Some(staging) = &self.step_staging.buffer {
            for (src, start, at, size) in copies {
                enc.copy_buffer_to_buffer(src, *start, staging, *at, *size);
            }
        }
    }

    /// `Backend::read`: from the step staging buffer when the last step staged the range,
    /// otherwise through a copy of its own.
    pub(crate) async fn read_bytes(
        &mut self,
        buf: BufId,
        offset: usize,
        len: usize,
    ) -> Result<Vec<u8>> {
        self.check_health()?;
        let e = self
            .table
            .get(buf)
            .ok_or_else(|| backend_err(format!("read of unknown buffer {}", buf.0)))?;
        match offset.checked_add(len) {
            Some(end) if end <= e.bytes => {}
            _ => {
                return Err(backend_err(format!(
                    "read of {len} bytes at {offset} from buffer {} of {} bytes",
                    buf.0, e.bytes
                )))
            }
        }
        let src = e.whole().ok_or_else(|| {
            backend_err(format!(
                "buffer {} is a weight split across bindings; it cannot be read back",
                buf.0
            ))
        })?;
        let src = src.buffer.clone();
        if len == 0 {
            return Ok(Vec::new());
        }
        if let Some(s) = self.step_staging.find(&self.table, buf, offset, len) {
            let staging = self.step_staging.buffer.clone().expect("staged ranges have a buffer");
            let skip = (offset as u64 - s.start) as usize;
            return self.map_read(staging, s.at, s.size, skip, len).await;
        }
        let (start, size) = words(offset, len);
        if self.staging.as_ref().is_none_or(|s| s.size() < size) {
            let staging_size = size.next_power_of_two().max(256);
            let s = self.scoped(|s| Self::raw_buffer(&s.device, staging_size, read_usage()))?;
            self.staging = Some(s);
        }
        let staging = self.staging.clone().expect("just made");
        self.scoped(|s| {
            let mut enc = s.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("tandem read"),
            });
            enc.copy_buffer_to_buffer(&src, start, &staging, 0, size);
            s.queue.submit([enc.finish()]);
        })?;
        self.stats.submissions += 1;
        self.map_read(staging, 0, size, (offset as u64 - start) as usize, len).await
    }

    /// Maps staging bytes at..at + size once the queue reaches them; returns `len` bytes from
    /// `skip` into that span.
    async fn map_read(
        &mut self,
        staging: wgpu::Buffer,
        at: u64,
        size: u64,
        skip: usize,
        len: usize,
    ) -> Result<Vec<u8>> {
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.slice(at..at + size).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| backend_err(format!("poll: {e}")))?;
        let mapped = rx.await.map_err(|_| backend_err("map_async callback dropped"));
        // An error in the work this read waited for surfaces here rather than as bad data.
        for f in std::mem::take(&mut self.pending) {
            if let Some(e) = f.await {
                self.uncaptured.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
            }
        }
        self.check_health()?;
        mapped?.map_err(|e| backend_err(format!("map_async: {e}")))?;
        let out = {
            let view = staging
                .slice(at..at + size)
                .get_mapped_range()
                .map_err(|e| backend_err(format!("get_mapped_range: {e}")))?;
            view[skip..skip + len].to_vec()
        };
        staging.unmap();
        self.stats.readback_bytes += len as u64;
        Ok(out)
    }
}

fn read_usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST
}
