//! The paged KV cache: a fixed pool of blocks of `block_size` token rows per layer, handed out
//! to sequences on demand (PagedAttention). A sequence's block table maps its positions to
//! pool blocks, so sequences grow without copying and free blocks are reused at once.
//!
//! Full blocks can also be cached (automatic prefix caching): a block is keyed by a hash of
//! its parent's key and its tokens, reference-counted while sequences use it, and kept after
//! the last one lets go, until the pool needs the room (least recently used first). A prompt
//! that starts with cached blocks takes them instead of computing them again.
//!
//! In a model whose every layer slides over the last `window` positions (Mistral), no query
//! reads a block wholly before its window again: such blocks go back to the pool as the
//! sequence moves on (its table keeps their stale ids, never read), so a sequence's KV memory
//! stops growing at the window.

use std::collections::{BTreeMap, HashMap};

use crate::backend::{Backend, BufId};
use crate::config::ModelConfig;
use crate::ops::{KvWrite, Op};
use crate::quant::kv::{KvDtypes, KV_PAIRS};
use crate::{Error, Result};

/// A cached block's identity: its key, and what the key was made of (checked on every hit, so
/// a 64-bit hash collision can never hand out the wrong rows).
#[derive(Debug, Clone, PartialEq, Eq)]
struct BlockKey {
    hash: u64,
    parent: u64,
    tokens: Vec<u32>,
    /// How many of the block's tokens are prompt tokens (computed as prompt rows; the rest as
    /// decode rows). Rows of the two classes may differ in their last bits (see
    /// [`crate::ops::Matmul`]), and a hit must give exactly the rows the request would compute.
    prompt: u32,
}

/// Hands out blocks from a fixed pool, with reference counts and the prefix cache.
#[derive(Debug)]
pub struct BlockPool {
    /// Blocks holding nothing worth keeping.
    free: Vec<u32>,
    refs: Vec<u32>,
    key: Vec<Option<BlockKey>>,
    by_hash: HashMap<u64, u32>,
    /// Cached blocks no sequence uses, by last use: evicted oldest first.
    idle: BTreeMap<u64, u32>,
    last_use: Vec<u64>,
    clock: u64,
}

impl BlockPool {
    pub fn new(total: usize) -> Self {
        BlockPool {
            // Reversed so blocks come out in ascending order, which keeps traces readable.
            free: (0..total as u32).rev().collect(),
            refs: vec![0; total],
            key: vec![None; total],
            by_hash: HashMap::new(),
            idle: BTreeMap::new(),
            last_use: vec![0; total],
            clock: 0,
        }
    }

    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks a sequence could get now: free ones and cached ones nobody uses.
    pub fn available(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// Cached blocks (in use or idle).
    pub fn cached(&self) -> usize {
        self.by_hash.len()
    }

    /// A block for new rows: a free one, else the least recently used idle cached one.
    pub fn alloc(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.idle.pop_first()?;
                let key = self.key[b as usize].take().expect("idle blocks are cached");
                self.by_hash.remove(&key.hash);
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Drops one reference; an unreferenced block becomes idle (cached) or free.
    pub fn release(&mut self, block: u32) {
        let b = block as usize;
        debug_assert!(self.refs[b] > 0);
        self.refs[b] -= 1;
        if self.refs[b] == 0 {
            if self.key[b].is_some() {
                self.clock += 1;
                self.last_use[b] = self.clock;
                self.idle.insert(self.clock, block);
            } else {
                self.free.push(block);
            }
        }
    }

    /// Forgets every idle cached block (they become plain free blocks).
    pub fn evict_idle(&mut self) {
        while let Some((_, b)) = self.idle.pop_first() {
            let key = self.key[b as usize].take().expect("idle blocks are cached");
            self.by_hash.remove(&key.hash);
            self.free.push(b);
        }
    }

    /// The cached block with this content, referenced once more; `None` on a miss.
    fn lookup(&mut self, key: &BlockKey) -> Option<u32> {
        let b = *self.by_hash.get(&key.hash)?;
        if self.key[b as usize].as_ref() != Some(key) {
            return None;
        }
        if self.refs[b as usize] == 0 {
            self.idle.remove(&self.last_use[b as usize]);
        }
        self.refs[b as usize] += 1;
        Some(b)
    }

    /// Makes a full block findable under `key`, unless that content is cached already (then
    /// this block stays private and is freed as usual).
    fn register(&mut self, block: u32, key: BlockKey) {
        if self.by_hash.contains_key(&key.hash) || self.key[block as usize].is_some() {
            return;
        }
        self.by_hash.insert(key.hash, block);
        self.key[block as usize] = Some(key);
    }
}

/// One sequence's view of the cache: its blocks, in position order, and how many positions
/// hold valid K/V.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub blocks: Vec<u32>,
    pub len: usize,
    /// Entries of `blocks` before this one were given back (they are behind every query's
    /// window): their ids are stale and are never released again.
    first_live: usize,
    /// Keys of the leading full blocks that are in the prefix cache (or were offered to it).
    hashes: Vec<u64>,
    /// The parent key of its first block: 0, or the fingerprint of the LoRA adapter its rows
    /// run through, so that sequences of different adapters never share cached blocks.
    root: u64,
}

impl Sequence {
    /// An empty sequence whose cached blocks are keyed under `root` (see [`Sequence::root`]).
    pub fn with_root(root: u64) -> Self {
        Sequence { root, ..Sequence::default() }
    }

    /// The key its prefix-cache chain starts from.
    pub fn root(&self) -> u64 {
        self.root
    }
}

/// FNV-1a over the parent key, the prompt count and the tokens: stable across platforms and
/// runs (the browser and the server hash alike), and cheap next to a step.
fn block_hash(parent: u64, prompt: u32, tokens: &[u32]) -> u64 {
    fnv1a([parent, prompt as u64].into_iter().chain(tokens.iter().map(|&t| t as u64)))
}

/// FNV-1a over the little-endian bytes of `values`: the prefix cache's keys and a LoRA
/// adapter's fingerprint, which starts a chain of them.
pub(crate) fn fnv1a(values: impl IntoIterator<Item = u64>) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in values {
        for byte in v.to_le_bytes() {
            h ^= byte as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// The block side of a KV pool, with no buffers: which blocks are free, cached (the prefix
/// cache) or in use, and the operations on sequences' block tables. Plain data, so the
/// scheduler's planning runs and is tested without a backend.
///
/// Each pool has exactly one, a value that moves and is never copied: its model holds it
/// ([`crate::model::Model::kv_blocks`]), and a scheduler running on the model holds it instead
/// for as long as it lives.
#[derive(Debug)]
pub struct KvBlocks {
    block_size: usize,
    pool: BlockPool,
    /// The window every layer of the model slides over; 0 when a layer reads the whole
    /// context (then every block is kept).
    window: usize,
}

impl KvBlocks {
    /// All blocks free. One per pool, made with the pool's cache (see [`KvCache`]): two would
    /// hand out the same rows twice, so nothing outside the engine can make one.
    /// `window`: the one window of a model whose every layer slides (see
    /// [`ModelConfig::kv_window`]), else 0.
    pub(crate) fn new(block_size: usize, num_blocks: usize, window: usize) -> Self {
        debug_assert!(block_size > 0 && num_blocks > 0, "checked by KvCache::new");
        KvBlocks { block_size, pool: BlockPool::new(num_blocks), window }
    }

    /// The window every layer slides over (blocks behind it are given back), or 0.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Blocks `seq` holds now (its table less the entries given back).
    pub fn live_blocks(&self, seq: &Sequence) -> usize {
        seq.blocks.len() - seq.first_live
    }

    /// The first table entry a query at position `pos` (or later) may read.
    fn live_from(&self, pos: usize) -> usize {
        if self.window == 0 {
            return 0;
        }
        (pos + 1).saturating_sub(self.window) / self.block_size
    }

    /// Gives back the blocks of `seq` that no query from its next position on reads (with a
    /// window; without one this does nothing). Their table entries stay, stale.
    pub fn slide(&mut self, seq: &mut Sequence) {
        let dead = self.live_from(seq.len).min(seq.blocks.len());
        while seq.first_live < dead {
            self.pool.release(seq.blocks[seq.first_live]);
            seq.first_live += 1;
        }
    }

    /// Most blocks one sequence holds at once while it computes positions 0..`len` in chunks
    /// of at most `chunk` positions: all of them without a window; with one, a chunk's own
    /// blocks and those of the `window - 1` positions before it.
    pub fn peak_blocks(&self, len: usize, chunk: usize) -> usize {
        let all = len.div_ceil(self.block_size);
        if self.window == 0 {
            return all;
        }
        let span = (self.window - 1).saturating_add(chunk.max(1));
        all.min(span.div_ceil(self.block_size) + 1)
    }

    /// The longest chunk whose peak (see [`Self::peak_blocks`]) fits the whole pool, so that a
    /// sequence of any length can be computed; unbounded without a window, or when even one
    /// decode row's would not fit.
    pub fn max_chunk(&self) -> usize {
        let room = (self.pool.total() - 1) * self.block_size;
        if self.window == 0 || room < self.window {
            return usize::MAX;
        }
        room - (self.window - 1)
    }

    /// Whether one sequence can ever compute `len` positions in this pool, in chunks of at
    /// most `chunk`.
    pub fn ever_fits(&self, len: usize, chunk: usize) -> bool {
        self.peak_blocks(len, chunk) <= self.pool.total()
    }

    /// Token capacity of the whole pool.
    pub fn capacity(&self) -> usize {
        self.pool.total() * self.block_size
    }

    /// Positions a block holds.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn total_blocks(&self) -> usize {
        self.pool.total()
    }

    /// Blocks a sequence could get now (free plus idle cached ones).
    pub fn free_blocks(&self) -> usize {
        self.pool.available()
    }

    pub fn cached_blocks(&self) -> usize {
        self.pool.cached()
    }

    /// Empties the prefix cache of blocks no sequence uses (benchmarks and tests that want a
    /// cold cache).
    pub fn evict_idle(&mut self) {
        self.pool.evict_idle();
    }

    /// Blocks `seq` needs beyond its own to hold `new_len` positions.
    pub fn blocks_needed(&self, seq: &Sequence, new_len: usize) -> usize {
        new_len.div_ceil(self.block_size).saturating_sub(seq.blocks.len())
    }

    /// Makes room for `seq` to hold `new_len` positions. All or nothing: on error the sequence
    /// and the pool are unchanged.
    pub fn reserve(&mut self, seq: &mut Sequence, new_len: usize) -> Result<()> {
        let need = self.blocks_needed(seq, new_len);
        if need > self.pool.available() {
            return Err(Error::OutOfKvBlocks { need, free: self.pool.available() });
        }
        for _ in 0..need {
            seq.blocks.push(self.pool.alloc().expect("counted above"));
        }
        Ok(())
    }

    /// Drops positions from `new_len` on, returning blocks that no longer hold any (never
    /// one already given back behind the window). Positions behind the window cannot be
    /// recomputed in place: only a release (to 0) truncates into them.
    pub fn truncate(&mut self, seq: &mut Sequence, new_len: usize) {
        let keep = new_len.div_ceil(self.block_size);
        while seq.blocks.len() > keep {
            let b = seq.blocks.pop().expect("len checked");
            if seq.blocks.len() >= seq.first_live {
                self.pool.release(b);
            }
        }
        seq.first_live = seq.first_live.min(seq.blocks.len());
        seq.len = seq.len.min(new_len);
        seq.hashes.truncate(seq.len / self.block_size);
    }

    /// Returns every block of `seq` to the pool (cached ones stay findable until evicted).
    pub fn release(&mut self, seq: &mut Sequence) {
        self.truncate(seq, 0);
    }

    /// The block's key, made of its tokens (`tokens` = the sequence's tokens from the block's
    /// first position) and how many of them are prompt tokens.
    fn key(&self, parent: u64, tokens: &[u32], prompt_len: usize, block: usize) -> BlockKey {
        let start = block * self.block_size;
        let prompt = prompt_len.saturating_sub(start).min(self.block_size) as u32;
        let tokens = tokens[start..start + self.block_size].to_vec();
        BlockKey { hash: block_hash(parent, prompt, &tokens), parent, tokens, prompt }
    }

    /// Starts an empty `seq` with the cached blocks that hold its leading tokens (whole
    /// blocks only, never the block of its last token, whose row must be computed to give
    /// logits). Returns the positions it now holds; `seq.len` is set to them.
    pub fn take_cached_prefix(
        &mut self,
        seq: &mut Sequence,
        tokens: &[u32],
        prompt_len: usize,
    ) -> usize {
        debug_assert!(seq.blocks.is_empty());
        let max_blocks = tokens.len().saturating_sub(1) / self.block_size;
        let mut parent = seq.root;
        for b in 0..max_blocks {
            let key = self.key(parent, tokens, prompt_len, b);
            let hash = key.hash;
            match self.pool.lookup(&key) {
                Some(block) => {
                    seq.blocks.push(block);
                    seq.hashes.push(hash);
                    parent = hash;
                }
                None => break,
            }
        }
        seq.len = seq.blocks.len() * self.block_size;
        seq.len
    }

    /// Offers `seq`'s newly filled blocks to the prefix cache; `tokens` are its tokens from
    /// position 0 (at least `seq.len` of them).
    pub fn cache_full_blocks(&mut self, seq: &mut Sequence, tokens: &[u32], prompt_len: usize) {
        let full = seq.len.min(tokens.len()) / self.block_size;
        while seq.hashes.len() < full {
            let b = seq.hashes.len();
            let parent = seq.hashes.last().copied().unwrap_or(seq.root);
            let key = self.key(parent, tokens, prompt_len, b);
            seq.hashes.push(key.hash);
            // A block given back may already hold another sequence's rows.
            if b >= seq.first_live {
                self.pool.register(seq.blocks[b], key);
            }
        }
    }
}

/// The physical side of a KV pool: K and V blocks of every layer, each [num_blocks,
/// block_size, kv_heads, head_dim]. Which blocks are free, cached or in use is the
/// [`KvBlocks`] of the same pool, held by the model or, while one runs, by its scheduler.
pub struct KvCache {
    pub dtypes: KvDtypes,
    pub block_size: usize,
    pub num_blocks: usize,
    pub k: Vec<BufId>,
    pub v: Vec<BufId>,
}

impl KvCache {
    pub fn new<B: Backend>(
        backend: &mut B,
        config: &ModelConfig,
        dtypes: KvDtypes,
        block_size: usize,
        num_blocks: usize,
    ) -> Result<Self> {
        // The op every layer writes with: its rules, then whether this backend runs it.
        let write = |kv_dtypes| {
            Op::KvWrite(KvWrite {
                k: BufId(0),
                v: BufId(0),
                cache_k: BufId(0),
                cache_v: BufId(0),
                kv_dtypes,
                slots: BufId(0),
                n: 1,
                kv_heads: config.n_kv_heads,
                head_dim: config.head_dim,
            })
        };
        write(dtypes)
            .check_shape()
            .map_err(|e| Error::InvalidParameter(format!("KV dtype: {e}")))?;
        if !backend.supports(&write(dtypes)) {
            let can: Vec<String> = KV_PAIRS
                .iter()
                .filter(|&&d| write(d).check_shape().is_ok() && backend.supports(&write(d)))
                .map(|d| d.to_string())
                .collect();
            return Err(Error::InvalidParameter(format!(
                "the {} backend has no {dtypes} KV cache; it runs {} (K/V)",
                backend.name(),
                can.join(", ")
            )));
        }
        if block_size == 0 || num_blocks == 0 {
            return Err(Error::InvalidParameter(
                "KV cache needs a non-zero block size and block count".into(),
            ));
        }
        let rows = num_blocks * block_size;
        let numel = |d| crate::quant::kv::cache_numel(d, rows, config.n_kv_heads, config.head_dim);
        let mut k = Vec::with_capacity(config.n_layers);
        let mut v = Vec::with_capacity(config.n_layers);
        for _ in 0..config.n_layers {
            k.push(backend.alloc(dtypes.k, numel(dtypes.k))?);
            v.push(backend.alloc(dtypes.v, numel(dtypes.v))?);
        }
        Ok(KvCache { dtypes, block_size, num_blocks, k, v })
    }

    /// Token capacity of the whole pool.
    pub fn capacity(&self) -> usize {
        self.num_blocks * self.block_size
    }

    pub fn total_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Cache rows (block * block_size + offset) of positions start..start + n.
    pub fn slots(&self, seq: &Sequence, start: usize, n: usize) -> Vec<u32> {
        (start..start + n)
            .map(|p| {
                seq.blocks[p / self.block_size] * self.block_size as u32
                    + (p % self.block_size) as u32
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_freed_blocks() {
        let mut pool = BlockPool::new(3);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        assert_ne!(a, b);
        pool.release(a);
        assert_eq!(pool.available(), 2);
        assert_eq!(pool.alloc(), Some(a));
    }

    fn key(parent: u64, tokens: &[u32]) -> BlockKey {
        BlockKey { hash: block_hash(parent, 2, tokens), parent, tokens: tokens.to_vec(), prompt: 2 }
    }

    #[test]
    fn cached_blocks_are_shared_then_evicted_least_recently_used() {
        let mut pool = BlockPool::new(2);
        let (a, b) = (pool.alloc().unwrap(), pool.alloc().unwrap());
        pool.register(a, key(0, &[1, 2]));
        pool.register(b, key(0, &[3, 4]));
        assert_eq!(pool.lookup(&key(0, &[1, 2])), Some(a));
        pool.release(a);
        pool.release(a);
        pool.release(b);
        // Both idle; a was released first, so it goes first.
        assert_eq!(pool.available(), 2);
        assert_eq!(pool.alloc(), Some(a));
        assert_eq!(pool.lookup(&key(0, &[1, 2])), None);
        assert_eq!(pool.lookup(&key(0, &[3, 4])), Some(b));
        assert_eq!(pool.available(), 0);
    }

    #[test]
    fn a_hash_collision_is_a_miss() {
        let mut pool = BlockPool::new(1);
        let a = pool.alloc().unwrap();
        pool.register(a, key(0, &[1, 2]));
        let mut other = key(0, &[9, 9]);
        other.hash = key(0, &[1, 2]).hash;
        assert_eq!(pool.lookup(&other), None);
    }
}
