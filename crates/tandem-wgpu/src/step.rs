//! A step on the GPU: its ops recorded into dispatches (nothing is encoded until all of them
//! record), then its uploads, one compute pass and the staged read-backs encoded and submitted
//! together.

use tandem_core::ops::Op;
use tandem_core::{Result, Step};

use crate::buffers::Gpu;
use crate::{ops, WgpuBackend};

impl WgpuBackend {
    /// Records `step.ops`, then encodes and submits everything.
    pub(crate) fn run_step(&mut self, step: &Step) -> Result<()> {
        self.step_staging.forget(None);
        let scratch = step
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Attention(a) => Some(ops::attention_scratch(a)),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        self.grow_scratch(scratch)?;
        for (id, bytes) in &step.writes {
            self.upload(*id, 0, bytes)?;
        }
        let mut rec = ops::Recorder {
            table: &self.table,
            uses_f16: self.f16,
            row_matvec: self.row_matvec(),
            scratch: &self.scratch,
            out: Vec::new(),
            written_u32: Vec::new(),
        };
        for op in &step.ops {
            rec.record(op)?;
        }
        let (dispatches, written) = (rec.out, rec.written_u32);
        for id in written {
            self.table.shadow_forget(id);
        }
        // The uniform arena: one slot per dispatch, one upload.
        let arena_bytes = (dispatches.len() as u64 * self.align).max(self.align);
        if self.arena.buffer.size() < arena_bytes {
            let size = arena_bytes.next_power_of_two();
            let buffer = self.scoped(|s| {
                Self::raw_buffer(
                    &s.device,
                    size,
                    wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                )
            })?;
            let old = std::mem::replace(&mut self.arena, Gpu { uid: self.table.uid(), buffer });
            self.cache.forget(&[old.uid]);
        }
        let mut params = vec![0u8; arena_bytes as usize];
        for (i, d) in dispatches.iter().enumerate() {
            let at = i * self.align as usize;
            params[at..at + d.params.len() * 4].copy_from_slice(bytemuck::cast_slice(&d.params));
        }
        let copies = self.plan_read_back(&step.read_back)?;
        let submitted = self.scoped(|s| {
            s.queue.write_buffer(&s.arena.buffer, 0, &params);
            let mut enc = s.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("tandem step"),
            });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("tandem step"),
                    timestamp_writes: None,
                });
                for (i, d) in dispatches.iter().enumerate() {
                    let pipeline = s.cache.pipeline(&s.device, &d.pipe);
                    let group = s.cache.bind_group(
                        &s.device,
                        d.pipe.shader,
                        (s.arena.uid, &s.arena.buffer),
                        &d.bufs,
                    );
                    pass.set_pipeline(&pipeline);
                    pass.set_bind_group(0, &group, &[(i as u64 * s.align) as u32]);
                    pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                }
            }
            // The step's results go to mappable memory in the same submission.
            s.encode_read_back(&mut enc, &copies);
            s.queue.submit([enc.finish()]);
        });
        if submitted.is_err() {
            self.step_staging.forget(None);
        }
        submitted?;
        self.stats.submissions += 1;
        self.stats.steps += 1;
        self.stats.dispatches += dispatches.len() as u64;
        Ok(())
    }
}
