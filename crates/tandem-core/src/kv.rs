//! The paged KV cache: a fixed pool of blocks of `block_size` token rows per layer, handed out
//! to sequences on demand (PagedAttention). A sequence's block table maps its positions to
//! pool blocks, so sequences grow without copying and free blocks are reused at once.

use crate::backend::{Backend, BufId};
use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::{Error, Result};

/// Hands out block indices from a fixed pool.
#[derive(Debug)]
pub struct BlockAllocator {
    free: Vec<u32>,
    total: usize,
}

impl BlockAllocator {
    pub fn new(total: usize) -> Self {
        // Reversed so blocks come out in ascending order, which keeps traces readable.
        BlockAllocator { free: (0..total as u32).rev().collect(), total }
    }
    pub fn alloc(&mut self) -> Option<u32> {
        self.free.pop()
    }
    pub fn release(&mut self, block: u32) {
        debug_assert!((block as usize) < self.total && !self.free.contains(&block));
        self.free.push(block);
    }
    pub fn free_count(&self) -> usize {
        self.free.len()
    }
    pub fn total(&self) -> usize {
        self.total
    }
}

/// One sequence's view of the cache: its blocks, in position order, and how many positions
/// hold valid K/V.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub blocks: Vec<u32>,
    pub len: usize,
}

/// K and V block pools of every layer, each [num_blocks, block_size, kv_heads, head_dim].
pub struct KvCache {
    pub dtype: DType,
    pub block_size: usize,
    pub k: Vec<BufId>,
    pub v: Vec<BufId>,
    alloc: BlockAllocator,
}

impl KvCache {
    pub fn new<B: Backend>(
        backend: &mut B,
        config: &ModelConfig,
        dtype: DType,
        block_size: usize,
        num_blocks: usize,
    ) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::F16) {
            return Err(Error::InvalidParameter(format!("KV cache dtype must be f32 or f16, got {dtype}")));
        }
        if block_size == 0 || num_blocks == 0 {
            return Err(Error::InvalidParameter("KV cache needs a non-zero block size and block count".into()));
        }
        let numel = num_blocks * block_size * config.n_kv_heads * config.head_dim;
        let mut k = Vec::with_capacity(config.n_layers);
        let mut v = Vec::with_capacity(config.n_layers);
        for _ in 0..config.n_layers {
            k.push(backend.alloc(dtype, numel)?);
            v.push(backend.alloc(dtype, numel)?);
        }
        Ok(KvCache { dtype, block_size, k, v, alloc: BlockAllocator::new(num_blocks) })
    }

    /// Token capacity of the whole pool.
    pub fn capacity(&self) -> usize {
        self.alloc.total() * self.block_size
    }

    pub fn free_blocks(&self) -> usize {
        self.alloc.free_count()
    }

    /// Makes room for `seq` to hold `new_len` positions. All or nothing: on error the sequence
    /// and the pool are unchanged.
    pub fn reserve(&mut self, seq: &mut Sequence, new_len: usize) -> Result<()> {
        let need = new_len.div_ceil(self.block_size).saturating_sub(seq.blocks.len());
        if need > self.alloc.free_count() {
            return Err(Error::OutOfKvBlocks { need, free: self.alloc.free_count() });
        }
        for _ in 0..need {
            seq.blocks.push(self.alloc.alloc().expect("counted above"));
        }
        Ok(())
    }

    /// Drops positions from `new_len` on, returning blocks that no longer hold any.
    pub fn truncate(&mut self, seq: &mut Sequence, new_len: usize) {
        let keep = new_len.div_ceil(self.block_size);
        while seq.blocks.len() > keep {
            self.alloc.release(seq.blocks.pop().expect("len checked"));
        }
        seq.len = seq.len.min(new_len);
    }

    /// Returns every block of `seq` to the pool.
    pub fn release(&mut self, seq: &mut Sequence) {
        self.truncate(seq, 0);
    }

    /// Cache rows (block * block_size + offset) of positions start..start + n.
    pub fn slots(&self, seq: &Sequence, start: usize, n: usize) -> Vec<u32> {
        (start..start + n)
            .map(|p| seq.blocks[p / self.block_size] * self.block_size as u32 + (p % self.block_size) as u32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_reuses_freed_blocks_and_reserve_is_all_or_nothing() {
        let mut alloc = BlockAllocator::new(3);
        let a = alloc.alloc().unwrap();
        let b = alloc.alloc().unwrap();
        assert_ne!(a, b);
        alloc.release(a);
        assert_eq!(alloc.free_count(), 2);
        assert_eq!(alloc.alloc(), Some(a));
    }
}
