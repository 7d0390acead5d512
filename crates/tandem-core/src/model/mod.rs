//! The decoder of every family tandem runs (Llama 2/3, SmolLM, Mistral, Mixtral, Qwen2/3,
//! Qwen3-MoE, Gemma 2/3, Phi-3), written once against the backend interface: the families
//! differ only by the [`crate::config::Features`] the forward pass reads. A forward pass is recorded as one [`Step`] holding every
//! layer's ops and handed to the backend at once; only token ids or logits come back.

mod builder;
mod lora;
mod step;
pub mod stream;
mod weights;

pub use builder::ModelBuilder;
pub use lora::LoraOptions;
use lora::LoraPool;
use step::Activations;
pub use step::{Chunk, ChunkOut, Want};
pub use stream::{ModelStream, StreamedModel};
pub use weights::{LayerWeights, Mlp, Weight, Weights};

use crate::backend::{Backend, BufId};
use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::kv::{KvBlocks, KvCache, Sequence};
use crate::loader::ModelSource;
use crate::ops::*;
use crate::quant::kv::KvDtypes;
use crate::{Error, Result};

/// How to load and run a model.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Convert every weight matrix to this type at load; `None` keeps the file's types. Q4_K
    /// and Q6_K apply to matrices whose rows are whole blocks of 256; the others get Q5_0 and
    /// Q8_0 ([`crate::quant::matrix_dtype`]).
    pub weight_dtype: Option<DType>,
    /// The KV cache's key and value dtypes.
    pub kv_dtypes: KvDtypes,
    /// Tokens of context the KV pool holds (capped at the model's trained context).
    pub context: usize,
    pub block_size: usize,
    /// Most tokens one forward step processes; longer prompts run in chunks of this size.
    pub max_step_tokens: usize,
    /// Blocks in the KV pool; `None`: enough for one sequence at the full context.
    pub kv_blocks: Option<usize>,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            weight_dtype: None,
            kv_dtypes: KvDtypes::same(DType::F32),
            context: 2048,
            block_size: 16,
            max_step_tokens: 256,
            kv_blocks: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Token(u32),
    Logits(Vec<f32>),
}

/// What the model has asked of its backend so far: a decode step should cost one execute and
/// a few bytes of readback per sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// `Backend::execute` calls (one per step).
    pub steps: u64,
    /// Bytes read back from the backend.
    pub read_bytes: u64,
}

pub struct Model<B: Backend> {
    pub config: ModelConfig,
    pub stats: ModelStats,
    pub backend: B,
    pub weights: Weights,
    /// The K/V buffers.
    pub kv: KvCache,
    /// Their block accounting; `None` while a scheduler holds it (from its `new` until it is
    /// dropped or gives the model back), so that only the scheduler allocates and frees blocks
    /// then.
    blocks: Option<KvBlocks>,
    /// RoPE inverse frequencies of the global layers, and of the sliding ones when they
    /// have their own (Gemma 3).
    inv_freq: BufId,
    inv_freq_local: Option<BufId>,
    act: Activations,
    /// Max positions the pool can give one sequence.
    context: usize,
    /// The LoRA adapters' pools, once enabled ([`Model::enable_lora`]).
    lora: Option<LoraPool>,
}

impl<B: Backend> Model<B> {
    /// Loads weights from `source` onto `backend` and sets up the KV pool. `progress(done,
    /// total)` counts tensors uploaded.
    pub fn load(
        backend: B,
        source: &ModelSource,
        opts: &ModelOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let mut builder = ModelBuilder::new(backend, source.config.clone(), opts)?;
        builder.load_from(source.tensors.as_ref(), progress)?;
        builder.finish()
    }

    /// Longest context one sequence may reach.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Most tokens one step takes (the scheduler's token budget is capped at it).
    pub fn max_step_tokens(&self) -> usize {
        self.act.cap
    }

    /// Whether the backend draws sampled tokens itself (the Sample op); otherwise the engine
    /// reads the logits back and draws the same token on the host.
    pub fn samples_on_device(&self) -> bool {
        let width = self.config.vocab_size;
        let probe = Sample {
            x: self.act.logits,
            params: self.act.params,
            out: self.act.token,
            n: 1,
            width,
        };
        self.backend.supports(&Op::Sample(probe))
    }

    pub fn new_sequence(&self) -> Sequence {
        Sequence::default()
    }

    /// The KV pool's block accounting (free, cached and used blocks); an error while a
    /// scheduler runs on the model (ask it: [`crate::scheduler::Scheduler::kv_blocks`]).
    pub fn kv_blocks(&self) -> Result<&KvBlocks> {
        self.blocks.as_ref().ok_or_else(lent)
    }

    /// The KV pool's block accounting, to change (e.g. `evict_idle` for a cold prefix cache);
    /// an error while a scheduler runs on the model.
    pub fn kv_blocks_mut(&mut self) -> Result<&mut KvBlocks> {
        self.blocks.as_mut().ok_or_else(lent)
    }

    /// Hands the block accounting to a scheduler, which owns it until [`Self::return_blocks`].
    pub(crate) fn lend_blocks(&mut self) -> Result<KvBlocks> {
        self.blocks.take().ok_or_else(lent)
    }

    /// Takes back what [`Self::lend_blocks`] handed out.
    pub(crate) fn return_blocks(&mut self, blocks: KvBlocks) {
        debug_assert!(self.blocks.is_none(), "a pool has one block accounting");
        self.blocks = Some(blocks);
    }

    /// Returns every block of `seq` to the pool.
    pub fn release(&mut self, seq: &mut Sequence) {
        // Only a scheduler holds a model without its blocks, and it never releases through
        // the model.
        if let Some(blocks) = &mut self.blocks {
            blocks.release(seq);
        }
    }

    /// Feeds `tokens` after `seq`'s context and returns what `want` asks for: one sequence,
    /// alone in its steps. Long inputs run in several steps; a single token after a context is
    /// a decode row, anything else prompt rows. On error, `seq` is left as it was.
    pub async fn forward(
        &mut self,
        seq: &mut Sequence,
        tokens: &[u32],
        want: Want,
    ) -> Result<Output> {
        self.forward_adapter(seq, tokens, want, None).await
    }

    /// [`Model::forward`] through the LoRA adapter in `adapter`'s slot (see
    /// [`Model::load_lora`]), or the base model for `None`.
    pub async fn forward_adapter(
        &mut self,
        seq: &mut Sequence,
        tokens: &[u32],
        want: Want,
        adapter: Option<usize>,
    ) -> Result<Output> {
        if tokens.is_empty() {
            return Err(Error::InvalidParameter("forward needs at least one token".into()));
        }
        if matches!(want, Want::Tokens(_)) {
            // A verification's rows of tokens are a scheduler step's; forward gives one
            // token or logits.
            return Err(Error::InvalidParameter(
                "forward takes Want::None, Token, Logits or AllLogits".into(),
            ));
        }
        let new_len = seq.len + tokens.len();
        if new_len > self.context {
            return Err(Error::PromptTooLong { prompt: new_len, context: self.context });
        }
        let saved = seq.clone();
        self.kv_blocks_mut()?.reserve(seq, new_len)?;
        let result = self.forward_chunks(seq, tokens, want, adapter).await;
        if result.is_ok() {
            // Blocks behind a sliding window go back (a no-op without one).
            self.kv_blocks_mut()?.slide(seq);
        } else {
            // Back to the blocks it held before (it may have held more than its positions).
            let blocks = self.kv_blocks_mut()?;
            blocks.truncate(seq, saved.blocks.len() * blocks.block_size());
            *seq = saved;
        }
        result
    }

    async fn forward_chunks(
        &mut self,
        seq: &mut Sequence,
        tokens: &[u32],
        want: Want,
        adapter: Option<usize>,
    ) -> Result<Output> {
        let decode = tokens.len() == 1 && seq.len > 0;
        let mut all = Vec::new();
        let chunks: Vec<&[u32]> = tokens.chunks(self.act.cap).collect();
        for (i, tokens) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let row_want = match want {
                Want::AllLogits => Want::AllLogits,
                _ if !last => Want::None,
                _ => want.clone(),
            };
            let chunk = Chunk { seq, tokens, decode, want: &row_want, adapter };
            let out = self.step(&[chunk]).await?;
            seq.len += tokens.len();
            match out.into_iter().next() {
                Some(ChunkOut::Token(t)) => return Ok(Output::Token(t)),
                Some(ChunkOut::Logits(l)) if want == Want::AllLogits => all.extend(l),
                Some(ChunkOut::Logits(l)) => return Ok(Output::Logits(l)),
                _ => {}
            }
        }
        Ok(Output::Logits(all))
    }
}

fn lent() -> Error {
    Error::InvalidParameter("a scheduler holds the model's KV blocks".into())
}
