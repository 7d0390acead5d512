//! A backend with no kernels for the engine's own checks: buffers are (dtype, numel) only, and
//! `run` keeps the steps the engine let through.

// Each test file that includes this module uses only part of it.
#![allow(dead_code)]

use std::collections::HashMap;

use tandem_core::ops::Op;
use tandem_core::{Backend, BufId, BufInfo, DType, Result, Step};

#[derive(Default)]
pub struct Fake {
    bufs: HashMap<BufId, BufInfo>,
    next: u32,
    /// A matmul weight dtype this backend has no kernel for: its own `supports` decision.
    pub no_matmul: Option<DType>,
    /// Every step `run` was given, in order.
    pub steps: Vec<Step>,
}

impl Fake {
    /// A fake with no kernel for matmuls over `dtype` weights.
    pub fn without_matmul(dtype: DType) -> Self {
        Fake { no_matmul: Some(dtype), ..Default::default() }
    }
}

impl Backend for Fake {
    fn name(&self) -> String {
        "fake".into()
    }
    fn supports(&self, op: &Op) -> bool {
        !matches!(op, Op::Matmul(m) if Some(m.wdtype) == self.no_matmul)
    }
    fn alloc(&mut self, dtype: DType, numel: usize) -> Result<BufId> {
        let id = BufId(self.next);
        self.next += 1;
        self.bufs.insert(id, BufInfo { dtype, numel });
        Ok(id)
    }
    fn write_at(&mut self, _: BufId, _: usize, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn free(&mut self, buf: BufId) {
        self.bufs.remove(&buf);
    }
    fn buffer(&self, buf: BufId) -> Option<BufInfo> {
        self.bufs.get(&buf).copied()
    }
    fn run(&mut self, step: &Step) -> Result<()> {
        self.steps.push(step.clone());
        Ok(())
    }
    async fn read(&mut self, _: BufId, _: usize, len: usize) -> Result<Vec<u8>> {
        Ok(vec![0; len])
    }
    fn allocated_bytes(&self) -> usize {
        0
    }
}
