//! The scheduler's hold on its model: the model (weights, K/V buffers) together with the KV
//! manager, which owns the model's block accounting for the scheduler's whole life.
//!
//! The accounting is taken out of the model when the scheduler is made and put back when it
//! ends (dropped, or `into_model`), so a model borrowed by one scheduler after another keeps
//! its prefix cache, and [`Model::forward`] finds its blocks again. In between, the model has
//! none: the KV manager is the one owner, and nothing else can allocate or free a block.

use std::borrow::BorrowMut;
use std::marker::PhantomData;

use super::kv_manager::KvManager;
use crate::backend::Backend;
use crate::model::Model;
use crate::Result;

pub(super) struct Lease<B: Backend, M: BorrowMut<Model<B>>> {
    /// `None` only once `end` has taken the model (and dropping the lease has nothing to give
    /// back).
    held: Option<(M, KvManager)>,
    backend: PhantomData<B>,
}

const HELD: &str = "a lease holds its model until it ends";

impl<B: Backend, M: BorrowMut<Model<B>>> Lease<B, M> {
    /// Takes `model`'s block accounting into a new KV manager.
    pub fn new(mut model: M) -> Result<Self> {
        let blocks = model.borrow_mut().lend_blocks()?;
        Ok(Lease { held: Some((model, KvManager::new(blocks))), backend: PhantomData })
    }

    pub fn model(&self) -> &Model<B> {
        self.held.as_ref().expect(HELD).0.borrow()
    }

    pub fn kv(&self) -> &KvManager {
        &self.held.as_ref().expect(HELD).1
    }

    /// The model and the KV manager, both to change.
    pub fn parts(&mut self) -> (&mut Model<B>, &mut KvManager) {
        let (model, kv) = self.held.as_mut().expect(HELD);
        (model.borrow_mut(), kv)
    }

    /// The model, its block accounting back in it.
    pub fn end(mut self) -> M {
        self.give_back().expect(HELD)
    }

    fn give_back(&mut self) -> Option<M> {
        let (mut model, kv) = self.held.take()?;
        model.borrow_mut().return_blocks(kv.into_target());
        Some(model)
    }
}

impl<B: Backend, M: BorrowMut<Model<B>>> Drop for Lease<B, M> {
    fn drop(&mut self) {
        self.give_back();
    }
}
