//! The Llama-family decoder (Llama 2/3, SmolLM, TinyLlama, Mistral, Qwen2), written once
//! against the backend interface. A forward pass is recorded as one [`Step`] holding every
//! layer's ops and handed to the backend at once; only token ids or logits come back.

mod builder;
pub mod stream;
mod weights;

pub use builder::ModelBuilder;
pub use stream::{ModelStream, StreamedModel};
pub use weights::{LayerWeights, Weight, Weights};

use crate::backend::{Backend, BackendExt, BufId, Step};
use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::kv::{KvCache, Sequence};
use crate::loader::ModelSource;
use crate::ops::*;
use crate::{Error, Result};

/// How to load and run a model.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Convert every weight matrix to this type at load; `None` keeps the file's types.
    pub weight_dtype: Option<DType>,
    pub kv_dtype: DType,
    /// Tokens of context the KV pool holds (capped at the model's trained context).
    pub context: usize,
    pub block_size: usize,
    /// Most tokens one forward step processes; longer prompts run in chunks of this size.
    pub max_step_tokens: usize,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions { weight_dtype: None, kv_dtype: DType::F32, context: 2048, block_size: 16, max_step_tokens: 256 }
    }
}

/// What a forward step returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Want {
    /// The greedy next token, chosen on the device: 4 bytes come back.
    Argmax,
    /// A sampled next token, drawn on the device (see [`crate::ops::Sample`]): 4 bytes come back.
    Sample { temperature: f32, top_k: usize, top_p: f32, min_p: f32, uniform: f32 },
    /// Logits of the last position: [vocab].
    LastLogits,
    /// Logits of every position fed in: [n, vocab] (perplexity).
    AllLogits,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Token(u32),
    Logits(Vec<f32>),
}

/// Scratch activations for up to `cap` tokens, reused across steps.
struct Activations {
    cap: usize,
    ids: BufId,
    positions: BufId,
    slots: BufId,
    block_table: BufId,
    x: BufId,
    xb: BufId,
    xb2: BufId,
    q: BufId,
    k: BufId,
    v: BufId,
    att: BufId,
    gate: BufId,
    up: BufId,
    hidden: BufId,
    last: BufId,
    /// [logits_rows, vocab]
    logits: BufId,
    logits_rows: usize,
    token: BufId,
}

/// What the model has asked of its backend so far: a decode step should cost one execute and
/// a few bytes of readback.
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
    pub kv: KvCache,
    inv_freq: BufId,
    act: Activations,
    /// Max positions the pool can give one sequence.
    context: usize,
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

    /// Whether the backend draws sampled tokens itself (the Sample op); otherwise the engine
    /// reads the logits back and draws the same token on the host.
    pub fn samples_on_device(&self) -> bool {
        let width = self.config.vocab_size;
        let probe = Sample { x: self.act.logits, out: self.act.token, n: 1, width, temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, uniform: 0.0 };
        self.backend.supports(&Op::Sample(probe))
    }

    pub fn new_sequence(&self) -> Sequence {
        Sequence::default()
    }

    pub fn release(&mut self, seq: &mut Sequence) {
        self.kv.release(seq);
    }

    /// Feeds `tokens` after `seq`'s context and returns what `want` asks for. Long inputs run
    /// in several steps. On error, `seq` is left as it was.
    pub async fn forward(&mut self, seq: &mut Sequence, tokens: &[u32], want: Want) -> Result<Output> {
        if tokens.is_empty() {
            return Err(Error::InvalidParameter("forward needs at least one token".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(Error::InvalidParameter(format!("token id {bad} is outside the vocabulary of {}", self.config.vocab_size)));
        }
        let new_len = seq.len + tokens.len();
        if new_len > self.context {
            return Err(Error::PromptTooLong { prompt: new_len, context: self.context });
        }
        let saved = seq.clone();
        let result = self.forward_chunks(seq, tokens, want).await;
        if result.is_err() {
            self.kv.truncate(seq, saved.len);
            *seq = saved;
        }
        result
    }

    async fn forward_chunks(&mut self, seq: &mut Sequence, tokens: &[u32], want: Want) -> Result<Output> {
        self.kv.reserve(seq, seq.len + tokens.len())?;
        let mut all = Vec::new();
        let chunks: Vec<&[u32]> = tokens.chunks(self.act.cap).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let chunk_want = if want == Want::AllLogits { Want::AllLogits } else if last { want } else { Want::LastLogits };
            let mut step = self.record(seq, chunk, chunk_want, last || want == Want::AllLogits)?;
            let vocab = self.config.vocab_size;
            let (logits, token) = (self.act.logits, self.act.token);
            // What the match below reads, so a GPU can stage it in the step's own submission.
            step.read_back = match chunk_want {
                Want::AllLogits => vec![(logits, 0, 4 * chunk.len() * vocab)],
                Want::Argmax | Want::Sample { .. } if last => vec![(token, 0, 4)],
                Want::LastLogits if last => vec![(logits, 0, 4 * vocab)],
                _ => vec![],
            };
            self.backend.execute(&step)?;
            self.stats.steps += 1;
            seq.len += chunk.len();
            match chunk_want {
                Want::AllLogits => all.extend(self.read_f32(logits, chunk.len() * vocab).await?),
                Want::Argmax | Want::Sample { .. } if last => {
                    self.stats.read_bytes += 4;
                    let t = self.backend.read_u32(token, 0, 1).await?;
                    return Ok(Output::Token(t[0]));
                }
                Want::LastLogits if last => return Ok(Output::Logits(self.read_f32(logits, vocab).await?)),
                _ => {}
            }
        }
        Ok(Output::Logits(all))
    }

    async fn read_f32(&mut self, buf: BufId, len: usize) -> Result<Vec<f32>> {
        self.stats.read_bytes += 4 * len as u64;
        self.backend.read_f32(buf, 0, len).await
    }

    /// Records one step: `tokens` at positions seq.len.. through every layer, then the head
    /// (skipped for intermediate prompt chunks, whose logits nobody reads).
    fn record(&mut self, seq: &Sequence, tokens: &[u32], want: Want, head: bool) -> Result<Step> {
        let c = &self.config;
        let n = tokens.len();
        let start = seq.len;
        let ctx_len = start + n;
        if want == Want::AllLogits && self.act.logits_rows < n {
            self.act.grow_logits(&mut self.backend, self.act.cap, c.vocab_size)?;
        }
        let a = &self.act;
        let w = &self.weights;
        let (dim, hd, heads, kvh) = (c.dim, c.head_dim, c.n_heads, c.n_kv_heads);

        let mut step = Step::default();
        step.write_u32(a.ids, tokens);
        step.write_u32(a.positions, &(start as u32..ctx_len as u32).collect::<Vec<_>>());
        step.write_u32(a.slots, &self.kv.slots(seq, start, n));
        step.write_u32(a.block_table, &seq.blocks[..ctx_len.div_ceil(self.kv.block_size)]);

        let matmul = |x: BufId, w: &Weight, bias: Option<Weight>, out: BufId, n: usize| {
            Op::Matmul(Matmul { x, w: w.buf, wdtype: w.dtype, bias: bias.map(|b| b.buf), out, n, k: w.cols, m: w.rows })
        };
        let norm = |x: BufId, w: &Weight, out: BufId, n: usize| Op::RmsNorm(RmsNorm { x, weight: w.buf, out, n, dim, eps: c.rms_norm_eps });

        step.push(Op::Embed(Embed { table: w.embed.buf, dtype: w.embed.dtype, ids: a.ids, out: a.x, n, vocab: c.vocab_size, dim }));
        for (l, lw) in w.layers.iter().enumerate() {
            // Attention block.
            step.push(norm(a.x, &lw.attn_norm, a.xb, n));
            step.push(matmul(a.xb, &lw.wq, lw.bq, a.q, n));
            step.push(matmul(a.xb, &lw.wk, lw.bk, a.k, n));
            step.push(matmul(a.xb, &lw.wv, lw.bv, a.v, n));
            step.push(Op::Rope(Rope { x: a.q, positions: a.positions, inv_freq: self.inv_freq, n, heads, head_dim: hd }));
            step.push(Op::Rope(Rope { x: a.k, positions: a.positions, inv_freq: self.inv_freq, n, heads: kvh, head_dim: hd }));
            let (cache_k, cache_v, kv_dtype) = (self.kv.k[l], self.kv.v[l], self.kv.dtype);
            step.push(Op::KvWrite(KvWrite { k: a.k, v: a.v, cache_k, cache_v, kv_dtype, slots: a.slots, n, kv_heads: kvh, head_dim: hd }));
            step.push(Op::Attention(Attention {
                q: a.q,
                cache_k,
                cache_v,
                kv_dtype,
                block_table: a.block_table,
                out: a.att,
                n,
                ctx_len,
                heads,
                kv_heads: kvh,
                head_dim: hd,
                block_size: self.kv.block_size,
                scale: 1.0 / (hd as f32).sqrt(),
            }));
            step.push(matmul(a.att, &lw.wo, None, a.xb2, n));
            step.push(Op::Add(Add { x: a.x, y: a.xb2, len: n * dim }));
            // Feed-forward block (SwiGLU).
            step.push(norm(a.x, &lw.ffn_norm, a.xb, n));
            step.push(matmul(a.xb, &lw.w_gate, None, a.gate, n));
            step.push(matmul(a.xb, &lw.w_up, None, a.up, n));
            step.push(Op::Swiglu(Swiglu { gate: a.gate, up: a.up, out: a.hidden, len: n * c.ffn_dim }));
            step.push(matmul(a.hidden, &lw.w_down, None, a.xb2, n));
            step.push(Op::Add(Add { x: a.x, y: a.xb2, len: n * dim }));
        }
        if head {
            if want == Want::AllLogits {
                step.push(norm(a.x, &w.norm, a.xb, n));
                step.push(matmul(a.xb, &w.lm_head, None, a.logits, n));
            } else {
                step.push(Op::CopyRows(CopyRows { src: a.x, dst: a.last, src_row: n - 1, n_rows: 1, width: dim }));
                step.push(norm(a.last, &w.norm, a.xb, 1));
                step.push(matmul(a.xb, &w.lm_head, None, a.logits, 1));
                match want {
                    Want::Argmax => step.push(Op::Argmax(Argmax { x: a.logits, out: a.token, n: 1, width: c.vocab_size })),
                    Want::Sample { temperature, top_k, top_p, min_p, uniform } => step.push(Op::Sample(Sample {
                        x: a.logits,
                        out: a.token,
                        n: 1,
                        width: c.vocab_size,
                        temperature,
                        top_k,
                        top_p,
                        min_p,
                        uniform,
                    })),
                    _ => {}
                }
            }
        }
        if let Some(op) = step.ops.iter().find(|op| !self.backend.supports(op)) {
            return Err(Error::Unsupported { backend: self.backend.name(), op: format!("{} ({op:?})", op.name()) });
        }
        Ok(step)
    }
}

impl Activations {
    fn alloc<B: Backend>(b: &mut B, c: &ModelConfig, cap: usize, logits_rows: usize, max_blocks: usize) -> Result<Self> {
        let f = |b: &mut B, numel: usize| b.alloc(DType::F32, numel);
        let u = |b: &mut B, numel: usize| b.alloc(DType::U32, numel);
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        Ok(Activations {
            cap,
            ids: u(b, cap)?,
            positions: u(b, cap)?,
            slots: u(b, cap)?,
            block_table: u(b, max_blocks)?,
            x: f(b, cap * c.dim)?,
            xb: f(b, cap * c.dim)?,
            xb2: f(b, cap * c.dim)?,
            q: f(b, cap * q_dim)?,
            k: f(b, cap * kv_dim)?,
            v: f(b, cap * kv_dim)?,
            att: f(b, cap * q_dim)?,
            gate: f(b, cap * c.ffn_dim)?,
            up: f(b, cap * c.ffn_dim)?,
            hidden: f(b, cap * c.ffn_dim)?,
            last: f(b, c.dim)?,
            logits: f(b, logits_rows * c.vocab_size)?,
            logits_rows,
            token: u(b, 1)?,
        })
    }

    /// Logits for every position are only needed for perplexity, so that buffer grows on demand.
    fn grow_logits<B: Backend>(&mut self, b: &mut B, rows: usize, vocab: usize) -> Result<()> {
        let new = b.alloc(DType::F32, rows * vocab)?;
        b.free(self.logits);
        self.logits = new;
        self.logits_rows = rows;
        Ok(())
    }
}
