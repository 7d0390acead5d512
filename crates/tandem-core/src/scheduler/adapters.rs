//! The LoRA adapters a scheduler serves: registered by name, held in host memory, and loaded
//! into the model's slots ([`crate::model::Model::load_lora`]) as requests need them. A slot
//! whose adapter has no running request can be taken by another adapter, the least recently
//! used first; a waiting request whose adapter finds no slot waits (never fails), while
//! requests of resident adapters go ahead of it. An adapter being removed takes no new
//! requests and goes once its last one ends.

use std::sync::Arc;

use super::request::Request;
use crate::backend::Backend;
use crate::lora::Adapter;
use crate::model::Model;
use crate::{Error, Result};

/// A registered adapter's id, stable for the scheduler's life.
pub type AdapterId = u64;

/// Most adapters one scheduler holds in host memory (resident or waiting for a slot): each
/// is a full set of low-rank matrices, so loads at run time cannot grow memory without bound.
pub const MAX_ADAPTERS: usize = 64;

struct Entry {
    id: AdapterId,
    name: String,
    adapter: Arc<Adapter>,
    slot: Option<usize>,
    /// The step it last ran in (least recently used slots are taken first).
    last_use: u64,
    removing: bool,
}

/// What the scheduler says of one adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    pub name: String,
    pub rank: usize,
    /// Whether it is in one of the model's slots now.
    pub resident: bool,
    /// Requests of it, queued or running.
    pub requests: usize,
    pub removing: bool,
}

#[derive(Default)]
pub(super) struct Adapters {
    entries: Vec<Entry>,
    next_id: AdapterId,
    clock: u64,
}

impl Adapters {
    pub fn add<B: Backend>(
        &mut self,
        model: &Model<B>,
        name: &str,
        adapter: Arc<Adapter>,
    ) -> Result<()> {
        let opts = model.lora_options().ok_or_else(|| {
            Error::InvalidParameter("LoRA adapters are not enabled on this model".into())
        })?;
        if name.is_empty() || self.entries.iter().any(|e| e.name == name) {
            return Err(Error::InvalidParameter(format!(
                "an adapter needs a name of its own: '{name}' is {}",
                if name.is_empty() { "empty" } else { "taken" }
            )));
        }
        if self.entries.len() >= MAX_ADAPTERS {
            return Err(Error::InvalidParameter(format!(
                "adapter '{name}': {MAX_ADAPTERS} adapters are loaded already (unload one first)"
            )));
        }
        if adapter.rank() > opts.rank {
            return Err(Error::InvalidParameter(format!(
                "adapter '{name}' has rank {}, above the largest this model holds ({}; raise it with --max-lora-rank)",
                adapter.rank(),
                opts.rank
            )));
        }
        self.next_id += 1;
        let id = self.next_id;
        self.entries.push(Entry {
            id,
            name: name.into(),
            adapter,
            slot: None,
            last_use: 0,
            removing: false,
        });
        Ok(())
    }

    /// The id and cache root of the adapter `name` for a new request.
    pub fn resolve(&self, name: &str) -> Result<(AdapterId, u64)> {
        match self.entries.iter().find(|e| e.name == name) {
            Some(e) if e.removing => {
                Err(Error::InvalidParameter(format!("adapter '{name}' is being unloaded")))
            }
            Some(e) => Ok((e.id, e.adapter.fingerprint())),
            None => Err(Error::InvalidParameter(format!("no adapter named '{name}'"))),
        }
    }

    /// Marks `name` for removal; it goes at once if no request uses it.
    pub fn remove(&mut self, name: &str, requests: &[&Request]) -> Result<()> {
        let e = self
            .entries
            .iter_mut()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::InvalidParameter(format!("no adapter named '{name}'")))?;
        e.removing = true;
        self.sweep(requests);
        Ok(())
    }

    /// Drops the adapters being removed that no request uses any more.
    pub fn sweep(&mut self, requests: &[&Request]) {
        self.entries.retain(|e| !e.removing || requests.iter().any(|r| r.adapter == Some(e.id)));
    }

    pub fn info(&self, requests: &[&Request]) -> Vec<AdapterInfo> {
        self.entries
            .iter()
            .map(|e| AdapterInfo {
                name: e.name.clone(),
                rank: e.adapter.rank(),
                resident: e.slot.is_some(),
                requests: requests.iter().filter(|r| r.adapter == Some(e.id)).count(),
                removing: e.removing,
            })
            .collect()
    }

    /// Gives the adapters of `running` and then of `waiting` (in queue order) slots while
    /// there are free or evictable ones (a slot whose adapter no running request uses), and
    /// sets every request's `lora_slot`. A request whose adapter found none keeps `None` and
    /// waits. Returns the adapters that failed to load onto the backend (their slots left
    /// empty), with the error.
    pub fn place<B: Backend>(
        &mut self,
        model: &mut Model<B>,
        running: &mut [Request],
        waiting: &mut std::collections::VecDeque<Request>,
    ) -> Vec<(AdapterId, Error)> {
        let mut failed = vec![];
        let Some(opts) = model.lora_options() else { return failed };
        self.clock += 1;
        // Held by a running request, or placed in this call for one earlier in the queue.
        let mut pinned: Vec<AdapterId> = running.iter().filter_map(|r| r.adapter).collect();
        let wanted: Vec<AdapterId> =
            running.iter().chain(waiting.iter()).filter_map(|r| r.adapter).collect();
        for id in wanted {
            let Some(i) = self.entries.iter().position(|e| e.id == id) else { continue };
            if self.entries[i].slot.is_none() {
                let taken: Vec<usize> = self.entries.iter().filter_map(|e| e.slot).collect();
                let free = (0..opts.slots).find(|s| !taken.contains(s));
                let slot = match free {
                    Some(s) => s,
                    None => {
                        // The least recently used resident adapter no running request holds.
                        let Some(victim) = self
                            .entries
                            .iter()
                            .enumerate()
                            .filter(|(_, e)| e.slot.is_some() && !pinned.contains(&e.id))
                            .min_by_key(|(_, e)| e.last_use)
                            .map(|(j, _)| j)
                        else {
                            continue;
                        };
                        self.entries[victim].slot.take().expect("resident")
                    }
                };
                if let Err(e) = model.load_lora(slot, &self.entries[i].adapter) {
                    failed.push((id, e));
                    continue;
                }
                self.entries[i].slot = Some(slot);
            }
            self.entries[i].last_use = self.clock;
            pinned.push(id);
        }
        for r in running.iter_mut().chain(waiting.iter_mut()) {
            r.lora_slot = r.adapter.and_then(|id| self.entries.iter().find(|e| e.id == id)?.slot);
        }
        failed
    }
}
