//! LoRA adapters on the backend: for each projection of each layer, a pool of `slots` slots
//! of A ([slots, rank, k]) and B transposed ([slots, rank, m], the scale folded in; see
//! [`crate::ops::LoraExpand`]), where an adapter is
//! loaded into a slot and chunks of a step name the slot their rows use. The pools take the
//! adapter's values padded with zeros to the pool's rank, and zeros for a projection the
//! adapter leaves alone, so every slot is whole whatever was in it before.

use crate::backend::{Backend, BufId, Step};
use crate::dtype::DType;
use crate::lora::{Adapter, Target};
use crate::ops::{lora_dtype, LoraExpand, LoraShrink, Op};
use crate::quant::encode;
use crate::{Error, Result};

use super::Model;

/// How many adapters the backend holds at once, at which rank and in which dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoraOptions {
    pub slots: usize,
    /// The largest rank an adapter may have; rounded up to a multiple of 8.
    pub rank: usize,
    /// f32 or f16.
    pub dtype: DType,
}

impl Default for LoraOptions {
    fn default() -> Self {
        LoraOptions { slots: 4, rank: 16, dtype: DType::F32 }
    }
}

impl LoraOptions {
    /// The most slots a model takes (a u32 slot index per row, and memory).
    pub const MAX_SLOTS: usize = 1024;
    /// The largest pool rank.
    pub const MAX_RANK: usize = 512;
}

pub(super) struct LoraPool {
    pub(super) opts: LoraOptions,
    /// Per layer, per [`Target`]: (A pool, B pool), where the layer has that projection.
    modules: Vec<[Option<(BufId, BufId)>; 7]>,
    /// [cap, rank] f32: a projection's shrunk rows.
    t: BufId,
    /// [cap] u32 each: the step's rows that carry an adapter, and their slots.
    rows: BufId,
    slots: BufId,
}

/// The rows of a step with an adapter, and the slot of each, among the step's `of` rows.
#[derive(Default)]
pub(super) struct LoraRows {
    pub(super) rows: Vec<u32>,
    pub(super) slots: Vec<u32>,
    pub(super) of: usize,
}

impl<B: Backend> Model<B> {
    /// Makes room for `opts.slots` adapters (freeing any pools made before: every slot is
    /// empty again). Projections of experts take none.
    pub fn enable_lora(&mut self, mut opts: LoraOptions) -> Result<()> {
        if !(1..=LoraOptions::MAX_SLOTS).contains(&opts.slots)
            || !(1..=LoraOptions::MAX_RANK).contains(&opts.rank)
            || !lora_dtype(opts.dtype)
        {
            return Err(Error::InvalidParameter(format!(
                "LoRA pools of 1 to {} slots, rank 1 to {}, f32 or f16 (got {} slots, rank {}, {})",
                LoraOptions::MAX_SLOTS,
                LoraOptions::MAX_RANK,
                opts.slots,
                opts.rank,
                opts.dtype
            )));
        }
        // Even ranks keep every f16 slot on whole 4-byte words (WebGPU writes no less).
        opts.rank = opts.rank.next_multiple_of(8);
        self.disable_lora();
        let c = self.config.clone();
        let moe = c.features.moe.is_some();
        let mut made = vec![];
        let result = (|| {
            let mut alloc = |b: &mut B, dtype: DType, numel: usize| -> Result<BufId> {
                let id = b.alloc(dtype, numel)?;
                made.push(id);
                Ok(id)
            };
            let mut modules = vec![];
            for _ in 0..c.n_layers {
                let mut layer = [None; 7];
                for t in Target::ALL {
                    if moe && matches!(t, Target::Gate | Target::Up | Target::Down) {
                        continue;
                    }
                    let (k, m) = t.shape(&c);
                    let a = alloc(&mut self.backend, opts.dtype, opts.slots * opts.rank * k)?;
                    let b = alloc(&mut self.backend, opts.dtype, opts.slots * m * opts.rank)?;
                    layer[t.index()] = Some((a, b));
                }
                modules.push(layer);
            }
            let cap = self.act.cap;
            let t = alloc(&mut self.backend, DType::F32, cap * opts.rank)?;
            let rows = alloc(&mut self.backend, DType::U32, cap)?;
            let slots = alloc(&mut self.backend, DType::U32, cap)?;
            Ok(LoraPool { opts, modules, t, rows, slots })
        })();
        match result {
            Ok(pool) => {
                self.lora = Some(pool);
                Ok(())
            }
            Err(e) => {
                for id in made {
                    self.backend.free(id);
                }
                Err(e)
            }
        }
    }

    /// Frees the adapter pools.
    pub fn disable_lora(&mut self) {
        if let Some(p) = self.lora.take() {
            let pools = p.modules.iter().flatten().flatten().flat_map(|&(a, b)| [a, b]);
            for id in pools.chain([p.t, p.rows, p.slots]) {
                self.backend.free(id);
            }
        }
    }

    /// The pools' shape, when adapters are enabled.
    pub fn lora_options(&self) -> Option<LoraOptions> {
        self.lora.as_ref().map(|p| p.opts)
    }

    /// Backend bytes one slot takes (every projection's A and B at the pool's rank).
    pub fn lora_slot_bytes(&self) -> usize {
        let Some(p) = &self.lora else { return 0 };
        let per_layer: usize = Target::ALL
            .iter()
            .filter(|t| p.modules.first().is_some_and(|l| l[t.index()].is_some()))
            .map(|t| {
                let (k, m) = t.shape(&self.config);
                p.opts.dtype.storage_bytes(p.opts.rank * (k + m))
            })
            .sum();
        per_layer * self.config.n_layers
    }

    /// Writes `adapter` into `slot`, replacing what was there. The adapter was checked
    /// against this model's config when it was read; its rank must fit the pools'.
    pub fn load_lora(&mut self, slot: usize, adapter: &Adapter) -> Result<()> {
        let c = &self.config;
        let p = self.lora.as_ref().ok_or_else(|| {
            Error::InvalidParameter("LoRA adapters are not enabled on this model".into())
        })?;
        let (rank, dtype) = (p.opts.rank, p.opts.dtype);
        if slot >= p.opts.slots {
            return Err(Error::InvalidParameter(format!("LoRA slot {slot} of {}", p.opts.slots)));
        }
        if adapter.rank() > rank {
            return Err(Error::InvalidParameter(format!(
                "a LoRA adapter of rank {} above the largest this server holds ({rank}; raise it with --max-lora-rank)",
                adapter.rank()
            )));
        }
        if let Some(m) = adapter
            .modules
            .iter()
            .find(|m| m.layer >= p.modules.len() || p.modules[m.layer][m.target.index()].is_none())
        {
            return Err(Error::InvalidParameter(format!(
                "the LoRA adapter changes layer {} {}, which this model does not have",
                m.layer,
                m.target.hf_name()
            )));
        }
        let mut writes = vec![];
        for (l, layer) in p.modules.iter().enumerate() {
            for t in Target::ALL {
                let Some((a_buf, b_buf)) = layer[t.index()] else { continue };
                let (k, m) = t.shape(c);
                let (mut a, mut b) = (vec![0f32; rank * k], vec![0f32; rank * m]);
                if let Some(ml) = adapter.module(l, t) {
                    a[..ml.rank * k].copy_from_slice(&ml.a);
                    // B is [m, r] in the adapter: its column j becomes the pool's row j.
                    for (o, src) in ml.b.chunks_exact(ml.rank).enumerate() {
                        for (j, &v) in src.iter().enumerate() {
                            b[j * m + o] = v;
                        }
                    }
                }
                writes.push((a_buf, dtype.storage_bytes(slot * rank * k), encode(&a, dtype)));
                writes.push((b_buf, dtype.storage_bytes(slot * rank * m), encode(&b, dtype)));
            }
        }
        for (buf, offset, bytes) in writes {
            self.backend.write_at(buf, offset, &bytes)?;
        }
        Ok(())
    }

    /// Checks a chunk's slot against the pools.
    pub(super) fn check_lora_slot(&self, slot: Option<usize>) -> Result<()> {
        match (slot, &self.lora) {
            (None, _) => Ok(()),
            (Some(s), Some(p)) if s < p.opts.slots => Ok(()),
            (Some(s), p) => Err(Error::InvalidParameter(format!(
                "LoRA slot {s}: the model holds {}",
                p.as_ref().map_or(0, |p| p.opts.slots)
            ))),
        }
    }

    /// Uploads the step's adapter rows (nothing when none has one).
    pub(super) fn record_lora_rows(&self, step: &mut Step, rows: &LoraRows) {
        if let (Some(p), false) = (&self.lora, rows.rows.is_empty()) {
            step.write_u32(p.rows, &rows.rows);
            step.write_u32(p.slots, &rows.slots);
        }
    }

    /// out += B·(A·x) for the step's adapter rows, for projection `target` of layer `l` (x:
    /// [n, k], out: [n, m] of the step's n rows). Nothing when no row has an adapter.
    pub(super) fn record_lora(
        &self,
        step: &mut Step,
        rows: &LoraRows,
        (l, target): (usize, Target),
        x: BufId,
        out: BufId,
    ) {
        let n = rows.of;
        let Some(p) = &self.lora else { return };
        let Some((a, b)) = p.modules[l][target.index()] else { return };
        if rows.rows.is_empty() {
            return;
        }
        let (k, m) = target.shape(&self.config);
        let (lr, rank, dtype, n_slots) = (rows.rows.len(), p.opts.rank, p.opts.dtype, p.opts.slots);
        step.push(Op::LoraShrink(LoraShrink {
            x,
            a,
            dtype,
            rows: p.rows,
            slots: p.slots,
            t: p.t,
            n: lr,
            x_rows: n,
            n_slots,
            rank,
            k,
        }));
        step.push(Op::LoraExpand(LoraExpand {
            t: p.t,
            b,
            dtype,
            rows: p.rows,
            slots: p.slots,
            out,
            n: lr,
            out_rows: n,
            n_slots,
            rank,
            m,
        }));
    }
}
