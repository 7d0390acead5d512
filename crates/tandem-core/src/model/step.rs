//! One forward step over a ragged batch: decodes of many sequences and prompt chunks of
//! others, all layers recorded as one [`Step`]. Matmuls take every token of the step at once
//! (one pass over the weights), attention is one op over all sequences (each through its own
//! block table), and the head runs only for rows that need a next token or logits. Decode
//! rows come first, so every op can give them the arithmetic of a one-token step (batch
//! invariance, see [`crate::ops::Matmul`]).

use crate::backend::{Backend, BackendExt, BufId, Step};
use crate::config::{Activation, ModelConfig};
use crate::dtype::DType;
use crate::kv::Sequence;
use crate::ops::*;
use crate::{Error, Result};

use super::lora::LoraRows;
use super::{Mlp, Model, Weight};
use crate::lora::Target;

/// What a sequence wants from its rows in a step: the one request type of a row, from the
/// scheduler's chunks to [`Model::forward`] for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    /// Nothing (a prompt chunk that does not finish its prompt).
    None,
    /// The next token, chosen on the device with these parameters: 4 bytes come back.
    Token(SampleRow),
    /// A token for each of the chunk's last `rows.len()` rows, each chosen on the device with
    /// its own parameters (speculative verification: what the model says after each draft
    /// token): 4 bytes a row come back.
    Tokens(Vec<SampleRow>),
    /// The last row's logits: [vocab] (host-side sampling, e.g. with penalties).
    Logits,
    /// Every row's logits: [rows, vocab] (perplexity).
    AllLogits,
}

impl Want {
    /// The greedy next token, chosen on the device.
    pub fn argmax() -> Self {
        Want::Token(SampleRow::greedy())
    }
}

/// One sequence's part of a step: `tokens` at positions seq.len.. . The caller has reserved
/// blocks for them and advances `seq.len` afterwards.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub seq: &'a Sequence,
    pub tokens: &'a [u32],
    /// Decode rows: each token computed exactly as that token alone after its context would
    /// be (a plain decode has one; a speculative verification has its last accepted token
    /// and the draft tokens after it, each row attending to the positions up to its own).
    pub decode: bool,
    pub want: &'a Want,
    /// The slot of the LoRA adapter its rows run through ([`Model::load_lora`]), or `None`
    /// for the base model.
    pub adapter: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChunkOut {
    None,
    Token(u32),
    /// [`Want::Tokens`]: one token per asked row, in row order.
    Tokens(Vec<u32>),
    Logits(Vec<f32>),
}

/// Scratch activations for up to `cap` tokens, reused across steps; the head's buffers and the
/// block tables grow on demand.
pub(super) struct Activations {
    pub(super) cap: usize,
    ids: BufId,
    positions: BufId,
    slots: BufId,
    starts: BufId,
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
    /// q and k after their per-head norms (families with q/k norms).
    qk_normed: Option<(BufId, BufId)>,
    /// Mixture of experts: router logits [cap, experts], the chosen experts and their weights
    /// [cap, top_k], and the experts' outputs [cap, top_k, dim].
    moe: Option<MoeActs>,
    /// [rows, dim]: the rows the head runs on, gathered.
    last: BufId,
    /// [rows, vocab]
    pub(super) logits: BufId,
    /// [rows] u32
    pub(super) token: BufId,
    /// [rows * SampleRow::WORDS] u32
    pub(super) params: BufId,
    head_rows: usize,
    /// Constrained rows: their indices [rows] u32 and masks [rows * words] u32, allocated on the
    /// first constrained step (see [`Model::step_masked`]); the rows they hold.
    mask: Option<(BufId, BufId, usize)>,
    tables: BufId,
    tables_cap: usize,
}

#[derive(Clone, Copy)]
struct MoeActs {
    logits: BufId,
    ids: BufId,
    weights: BufId,
    y: BufId,
}

impl Activations {
    pub(super) fn alloc<B: Backend>(b: &mut B, c: &ModelConfig, cap: usize) -> Result<Self> {
        let f = |b: &mut B, numel: usize| b.alloc(DType::F32, numel);
        let u = |b: &mut B, numel: usize| b.alloc(DType::U32, numel);
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        // The MLP's buffers hold the dense layers' width or every chosen expert's.
        let ffn = match &c.features.moe {
            Some(m) => c.ffn_dim.max(m.top_k * m.ffn_dim),
            None => c.ffn_dim,
        };
        let qk_normed = match c.features.qk_norm {
            true => Some((f(b, cap * q_dim)?, f(b, cap * kv_dim)?)),
            false => None,
        };
        let moe = match &c.features.moe {
            Some(m) => Some(MoeActs {
                logits: f(b, cap * m.experts)?,
                ids: u(b, cap * m.top_k)?,
                weights: f(b, cap * m.top_k)?,
                y: f(b, cap * m.top_k * c.dim)?,
            }),
            None => None,
        };
        Ok(Activations {
            qk_normed,
            moe,
            cap,
            ids: u(b, cap)?,
            positions: u(b, cap)?,
            slots: u(b, cap)?,
            starts: u(b, cap)?,
            x: f(b, cap * c.dim)?,
            xb: f(b, cap * c.dim)?,
            xb2: f(b, cap * c.dim)?,
            q: f(b, cap * q_dim)?,
            k: f(b, cap * kv_dim)?,
            v: f(b, cap * kv_dim)?,
            att: f(b, cap * q_dim)?,
            gate: f(b, cap * ffn)?,
            up: f(b, cap * ffn)?,
            hidden: f(b, cap * ffn)?,
            last: f(b, c.dim)?,
            logits: f(b, c.vocab_size)?,
            token: u(b, 1)?,
            params: u(b, SampleRow::WORDS)?,
            head_rows: 1,
            mask: None,
            tables: u(b, 64)?,
            tables_cap: 64,
        })
    }

    /// Head buffers for `rows` rows (grown to the next power of two, never shrunk: the most
    /// sequences one step has held).
    fn grow_head<B: Backend>(&mut self, b: &mut B, c: &ModelConfig, rows: usize) -> Result<()> {
        if rows <= self.head_rows {
            return Ok(());
        }
        let rows = rows.next_power_of_two().min(self.cap).max(rows);
        let last = b.alloc(DType::F32, rows * c.dim)?;
        let logits = b.alloc(DType::F32, rows * c.vocab_size).inspect_err(|_| b.free(last))?;
        let token = b.alloc(DType::U32, rows);
        let params = b.alloc(DType::U32, rows * SampleRow::WORDS);
        let (token, params) = match (token, params) {
            (Ok(t), Ok(p)) => (t, p),
            (t, p) => {
                for id in
                    [Some(last), Some(logits), t.as_ref().ok().copied(), p.as_ref().ok().copied()]
                        .into_iter()
                        .flatten()
                {
                    b.free(id);
                }
                return Err(t.err().or(p.err()).expect("one failed"));
            }
        };
        for old in [self.last, self.logits, self.token, self.params] {
            b.free(old);
        }
        (self.last, self.logits, self.token, self.params, self.head_rows) =
            (last, logits, token, params, rows);
        Ok(())
    }

    /// Mask buffers for `rows` constrained rows (grown like the head's).
    fn grow_mask<B: Backend>(&mut self, b: &mut B, c: &ModelConfig, rows: usize) -> Result<()> {
        if self.mask.is_some_and(|(_, _, cap)| rows <= cap) {
            return Ok(());
        }
        let rows = rows.next_power_of_two().min(self.cap).max(rows);
        let idx = b.alloc(DType::U32, rows)?;
        let bits =
            b.alloc(DType::U32, rows * c.vocab_size.div_ceil(32)).inspect_err(|_| b.free(idx))?;
        if let Some((old_idx, old_bits, _)) = self.mask.replace((idx, bits, rows)) {
            b.free(old_idx);
            b.free(old_bits);
        }
        Ok(())
    }

    fn grow_tables<B: Backend>(&mut self, b: &mut B, len: usize) -> Result<()> {
        if len <= self.tables_cap {
            return Ok(());
        }
        let cap = len.next_power_of_two();
        let new = b.alloc(DType::U32, cap)?;
        b.free(self.tables);
        (self.tables, self.tables_cap) = (new, cap);
        Ok(())
    }
}

/// Where a chunk's head rows landed: its index, and how many rows from which row of `last`.
struct HeadRows {
    chunk: usize,
    row: usize,
    rows: usize,
}

impl<B: Backend> Model<B> {
    /// Runs one step over `chunks` and returns what each asked for, in their order. Checks
    /// everything first: on error nothing ran and no sequence changed.
    pub async fn step(&mut self, chunks: &[Chunk<'_>]) -> Result<Vec<ChunkOut>> {
        self.step_masked(chunks, &[], || Ok(vec![])).await
    }

    /// [`Model::step`] where the chunks listed in `masked` (indices into `chunks`, ascending)
    /// choose their tokens under a constraint: `masks` returns, for each of them in that order,
    /// a mask per row it asks for ([rows * vocab.div_ceil(32)] u32, bit j of word j / 32 set
    /// where token j is allowed; see [`crate::ops::MaskLogits`]). It is called once the step's
    /// layers are on the backend, so the caller can compute the masks meanwhile; the masks
    /// are applied on the backend before sampling and the other rows are untouched.
    pub async fn step_masked(
        &mut self,
        chunks: &[Chunk<'_>],
        masked: &[usize],
        masks: impl FnOnce() -> Result<Vec<Vec<u32>>>,
    ) -> Result<Vec<ChunkOut>> {
        self.check_chunks(chunks)?;
        if masked.windows(2).any(|w| w[0] >= w[1])
            || masked.last().is_some_and(|&i| i >= chunks.len())
        {
            return Err(Error::InvalidParameter(format!(
                "masked chunks {masked:?}: ascending indices below {}",
                chunks.len()
            )));
        }
        // Decode rows first (batch invariance needs them as a leading block of rows).
        let order: Vec<usize> = (0..chunks.len())
            .filter(|&i| chunks[i].decode)
            .chain((0..chunks.len()).filter(|&i| !chunks[i].decode))
            .collect();
        // Head rows: sampled tokens first (the Sample op covers rows 0..tokens), then logits.
        let mut head = vec![];
        let mut row = 0;
        for pass in [true, false] {
            for &i in &order {
                let rows = match (chunks[i].want, pass) {
                    (Want::Token(_), true) => 1,
                    (Want::Tokens(r), true) => r.len(),
                    (Want::Logits, false) => 1,
                    (Want::AllLogits, false) => chunks[i].tokens.len(),
                    _ => 0,
                };
                if rows > 0 {
                    head.push(HeadRows { chunk: i, row, rows });
                    row += rows;
                }
            }
        }
        let samples: Vec<SampleRow> = head
            .iter()
            .flat_map(|h| match chunks[h.chunk].want {
                Want::Token(p) => vec![*p],
                Want::Tokens(r) => r.clone(),
                _ => vec![],
            })
            .collect();
        let token_heads = head
            .iter()
            .filter(|h| matches!(chunks[h.chunk].want, Want::Token(_) | Want::Tokens(_)))
            .count();
        self.act.grow_head(&mut self.backend, &self.config, row.max(1))?;
        let split = !masked.is_empty() && row > 0;
        if split {
            self.act.grow_mask(&mut self.backend, &self.config, row)?;
        }
        let mut step = self.record(chunks, &order, &head)?;
        if !split {
            self.record_choice(&mut step, row, &samples);
            self.backend.execute(&step)?;
        } else {
            // The layers run while the caller computes the masks; then the masks, the choice
            // and the read-back as a second, small step.
            self.backend.execute(&step)?;
            let masks = masks()?;
            let mut tail = Step::default();
            self.record_masks(&mut tail, masked, &head, masks)?;
            self.record_choice(&mut tail, row, &samples);
            self.backend.execute(&tail)?;
        }
        self.stats.steps += 1;

        let mut outs = vec![ChunkOut::None; chunks.len()];
        if !samples.is_empty() {
            self.stats.read_bytes += 4 * samples.len() as u64;
            let tokens = self.backend.read_u32(self.act.token, 0, samples.len()).await?;
            for h in &head[..token_heads] {
                let rows = &tokens[h.row..h.row + h.rows];
                outs[h.chunk] = match chunks[h.chunk].want {
                    Want::Tokens(_) => ChunkOut::Tokens(rows.to_vec()),
                    _ => ChunkOut::Token(rows[0]),
                };
            }
        }
        let vocab = self.config.vocab_size;
        for h in &head[token_heads..] {
            self.stats.read_bytes += 4 * (h.rows * vocab) as u64;
            let logits =
                self.backend.read_f32(self.act.logits, h.row * vocab, h.rows * vocab).await?;
            outs[h.chunk] = ChunkOut::Logits(logits);
        }
        Ok(outs)
    }

    fn check_chunks(&self, chunks: &[Chunk<'_>]) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidParameter(msg));
        let total: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        if total == 0 || total > self.act.cap {
            return bad(format!("a step takes 1 to {} tokens, got {total}", self.act.cap));
        }
        for c in chunks {
            if c.tokens.is_empty() {
                return bad("a chunk has no tokens".into());
            }
            self.check_lora_slot(c.adapter)?;
            if let Some(&t) = c.tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
                return bad(format!(
                    "token id {t} is outside the vocabulary of {}",
                    self.config.vocab_size
                ));
            }
            let end = c.seq.len + c.tokens.len();
            if end > self.context {
                return Err(Error::PromptTooLong { prompt: end, context: self.context });
            }
            if c.seq.blocks.len() * self.kv.block_size < end {
                return bad(format!(
                    "a sequence holds blocks for {} positions, not {end}",
                    c.seq.blocks.len() * self.kv.block_size
                ));
            }
            match c.want {
                Want::Token(p) => p.check()?,
                Want::Tokens(rows) => {
                    if rows.is_empty() || rows.len() > c.tokens.len() {
                        return bad(format!(
                            "a chunk of {} tokens asks for {} rows' tokens",
                            c.tokens.len(),
                            rows.len()
                        ));
                    }
                    rows.iter().try_for_each(SampleRow::check)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Records the step: uploads, every layer over all tokens, then the head over the gathered
    /// rows.
    fn record(&mut self, chunks: &[Chunk<'_>], order: &[usize], head: &[HeadRows]) -> Result<Step> {
        let bs = self.kv.block_size;
        let (mut ids, mut positions, mut slots, mut starts, mut tables) =
            (vec![], vec![], vec![], vec![], vec![]);
        // Row of each chunk's first token in the step.
        let mut first = vec![0; chunks.len()];
        let mut lora = LoraRows::default();
        for &i in order {
            let c = &chunks[i];
            first[i] = ids.len();
            if let Some(slot) = c.adapter {
                lora.rows.extend(ids.len() as u32..(ids.len() + c.tokens.len()) as u32);
                lora.slots.extend(std::iter::repeat_n(slot as u32, c.tokens.len()));
            }
            let start = c.seq.len;
            ids.extend_from_slice(c.tokens);
            positions.extend(start as u32..(start + c.tokens.len()) as u32);
            slots.extend(self.kv.slots(c.seq, start, c.tokens.len()));
            starts.extend(std::iter::repeat_n(tables.len() as u32, c.tokens.len()));
            tables.extend_from_slice(&c.seq.blocks[..(start + c.tokens.len()).div_ceil(bs)]);
        }
        self.act.grow_tables(&mut self.backend, tables.len())?;
        let n = ids.len();
        let decode_rows: usize = chunks.iter().filter(|c| c.decode).map(|c| c.tokens.len()).sum();
        let max_ctx = positions.iter().map(|&p| p as usize + 1).max().unwrap_or(1);
        let c = &self.config;
        let a = &self.act;
        let w = &self.weights;
        let (dim, hd, heads, kvh) = (c.dim, c.head_dim, c.n_heads, c.n_kv_heads);

        let mut step = Step::default();
        step.write_u32(a.ids, &ids);
        step.write_u32(a.positions, &positions);
        step.write_u32(a.slots, &slots);
        step.write_u32(a.starts, &starts);
        step.write_u32(a.tables, &tables);
        lora.of = n;
        self.record_lora_rows(&mut step, &lora);
        let adapt = |step: &mut Step, l: usize, t: Target, x: BufId, out: BufId| {
            self.record_lora(step, &lora, (l, t), x, out)
        };

        let matmul = |x: BufId,
                      w: &Weight,
                      bias: Option<Weight>,
                      out: BufId,
                      n: usize,
                      decode_rows: usize| {
            Matmul {
                x,
                w: w.buf,
                wdtype: w.dtype,
                bias: bias.map(|b| b.buf),
                out,
                n,
                k: w.cols,
                m: w.rows,
                decode_rows,
            }
        };
        let norm = |x: BufId, w: &Weight, out: BufId, n: usize| {
            Op::RmsNorm(RmsNorm { x, weight: w.buf, out, n, dim, eps: c.rms_norm_eps })
        };
        let d = decode_rows;

        step.push(Op::Embed(Embed {
            table: w.embed.buf,
            dtype: w.embed.dtype,
            ids: a.ids,
            out: a.x,
            n,
            vocab: c.vocab_size,
            dim,
            scale: c.features.embed_scale,
        }));
        let head_norm = |x: BufId, w: &Weight, out: BufId, rows: usize| {
            Op::RmsNorm(RmsNorm { x, weight: w.buf, out, n: rows, dim: hd, eps: c.rms_norm_eps })
        };
        // Adds a block's output to the residual stream, through the block's output norm when
        // the family has one (Gemma).
        let residual = |step: &mut Step, out: BufId, post_norm: Option<&Weight>| match post_norm {
            Some(pn) => {
                step.push(norm(out, pn, a.xb, n));
                step.push(Op::Add(Add { x: a.x, y: a.xb, len: n * dim }));
            }
            None => step.push(Op::Add(Add { x: a.x, y: out, len: n * dim })),
        };
        for (l, lw) in w.layers.iter().enumerate() {
            let layer = c.layer_attention(l);
            // Attention block.
            step.push(norm(a.x, &lw.attn_norm, a.xb, n));
            // q, k and v read the same x: a group a backend may run as one.
            step.group([
                matmul(a.xb, &lw.wq, lw.bq, a.q, n, d),
                matmul(a.xb, &lw.wk, lw.bk, a.k, n, d),
                matmul(a.xb, &lw.wv, lw.bv, a.v, n, d),
            ])?;
            for (t, out) in [(Target::Q, a.q), (Target::K, a.k), (Target::V, a.v)] {
                adapt(&mut step, l, t, a.xb, out);
            }
            let (q, k) = match (a.qk_normed, &lw.q_norm, &lw.k_norm) {
                (Some((qn, kn)), Some(wq), Some(wk)) => {
                    step.push(head_norm(a.q, wq, qn, n * heads));
                    step.push(head_norm(a.k, wk, kn, n * kvh));
                    (qn, kn)
                }
                _ => (a.q, a.k),
            };
            let inv_freq = match (layer.local_rope, self.inv_freq_local) {
                (true, Some(local)) => local,
                _ => self.inv_freq,
            };
            let rope = |x: BufId, heads: usize| {
                Op::Rope(Rope {
                    x,
                    positions: a.positions,
                    inv_freq,
                    n,
                    heads,
                    head_dim: hd,
                    rot_dim: c.rot_dim(),
                    scale: c.rope_scale(),
                })
            };
            step.push(rope(q, heads));
            step.push(rope(k, kvh));
            let (cache_k, cache_v, kv_dtypes) = (self.kv.k[l], self.kv.v[l], self.kv.dtypes);
            // A quantized cache holds its side rotated (quant::kv): quantized keys with the
            // queries alike, quantized values with the output rotated back.
            let rotation = |d| crate::quant::kv::rotation(d, hd);
            let (rot_k, rot_v) = (rotation(kv_dtypes.k), rotation(kv_dtypes.v));
            let rotate = |x: BufId, heads: usize, rot: Option<usize>| {
                rot.map(|size| Op::Hadamard(Hadamard { x, len: n * heads * hd, size }))
            };
            let rotations =
                [rotate(q, heads, rot_k), rotate(k, kvh, rot_k), rotate(a.v, kvh, rot_v)];
            for op in rotations.into_iter().flatten() {
                step.push(op);
            }
            step.push(Op::KvWrite(KvWrite {
                k,
                v: a.v,
                cache_k,
                cache_v,
                kv_dtypes,
                slots: a.slots,
                n,
                kv_heads: kvh,
                head_dim: hd,
            }));
            step.push(Op::Attention(Attention {
                q,
                cache_k,
                cache_v,
                kv_dtypes,
                positions: a.positions,
                table_starts: a.starts,
                tables: a.tables,
                tables_len: tables.len(),
                out: a.att,
                n,
                decode_rows: d,
                max_ctx,
                heads,
                kv_heads: kvh,
                head_dim: hd,
                block_size: bs,
                scale: c.attn_scale(),
                window: layer.window,
                softcap: c.features.attn_softcap,
            }));
            if let Some(op) = rotate(a.att, heads, rot_v) {
                step.push(op);
            }
            step.push(Op::Matmul(matmul(a.att, &lw.wo, None, a.xb2, n, d)));
            adapt(&mut step, l, Target::O, a.att, a.xb2);
            residual(&mut step, a.xb2, lw.attn_post_norm.as_ref());
            // Feed-forward block: a gated MLP, or the token's experts'.
            step.push(norm(a.x, &lw.ffn_norm, a.xb, n));
            let glu = |gate: BufId, up: BufId, out: BufId, len: usize| match c.features.act {
                Activation::Silu => Op::Swiglu(Swiglu { gate, up, out, len }),
                Activation::GeluTanh => Op::Geglu(Geglu { gate, up, out, len }),
            };
            match (&lw.mlp, a.moe, &c.features.moe) {
                (Mlp::Experts { router, gate, up, down }, Some(m), Some(spec)) => {
                    let k = spec.top_k;
                    step.push(Op::Matmul(matmul(a.xb, router, None, m.logits, n, d)));
                    step.push(Op::MoeRoute(MoeRoute {
                        logits: m.logits,
                        ids: m.ids,
                        weights: m.weights,
                        n,
                        experts: spec.experts,
                        k,
                        norm: spec.norm_topk,
                    }));
                    let experts = |x: BufId, w: &Weight, out: BufId, per_slot: bool| {
                        Op::MoeMatmul(MoeMatmul {
                            x,
                            w: w.buf,
                            wdtype: w.dtype,
                            ids: m.ids,
                            out,
                            n,
                            slots: k,
                            k: w.cols,
                            m: w.rows / spec.experts,
                            experts: spec.experts,
                            x_per_slot: per_slot,
                        })
                    };
                    step.push(experts(a.xb, gate, a.gate, false));
                    step.push(experts(a.xb, up, a.up, false));
                    step.push(glu(a.gate, a.up, a.hidden, n * k * spec.ffn_dim));
                    step.push(experts(a.hidden, down, m.y, true));
                    step.push(Op::MoeSum(MoeSum {
                        y: m.y,
                        weights: m.weights,
                        out: a.xb2,
                        n,
                        slots: k,
                        dim,
                    }));
                }
                (Mlp::Dense { gate, up, down }, ..) => {
                    step.group([
                        matmul(a.xb, gate, None, a.gate, n, d),
                        matmul(a.xb, up, None, a.up, n, d),
                    ])?;
                    adapt(&mut step, l, Target::Gate, a.xb, a.gate);
                    adapt(&mut step, l, Target::Up, a.xb, a.up);
                    step.push(glu(a.gate, a.up, a.hidden, n * gate.rows));
                    step.push(Op::Matmul(matmul(a.hidden, down, None, a.xb2, n, d)));
                    adapt(&mut step, l, Target::Down, a.hidden, a.xb2);
                }
                _ => {
                    return Err(Error::BadConfig(format!(
                        "layer {l} has experts but the model was built without them"
                    )))
                }
            }
            residual(&mut step, a.xb2, lw.ffn_post_norm.as_ref());
        }
        // The head, over the gathered rows only; every head row is computed as alone (a
        // request's first token comes from a prompt chunk, the rest from decodes).
        let rows: usize = head.iter().map(|h| h.rows).sum();
        if rows > 0 {
            for h in head {
                let c = &chunks[h.chunk];
                let src_row = first[h.chunk] + c.tokens.len() - h.rows;
                step.push(Op::CopyRows(CopyRows {
                    src: a.x,
                    dst: a.last,
                    src_row,
                    dst_row: h.row,
                    n_rows: h.rows,
                    width: dim,
                }));
            }
            step.push(norm(a.last, &w.norm, a.xb, rows));
            step.push(Op::Matmul(matmul(a.xb, &w.lm_head, None, a.logits, rows, rows)));
            let cap = c.features.final_softcap;
            if cap > 0.0 {
                step.push(Op::Softcap(Softcap { x: a.logits, len: rows * c.vocab_size, cap }));
            }
        }
        // `Backend::execute` checks every op (operands, shape, `supports`) before running any.
        Ok(step)
    }

    /// The head's `rows` rows of logits into tokens: the first `samples.len()` rows drawn on the
    /// backend (argmax when all are greedy), and what the engine reads back next.
    fn record_choice(&self, step: &mut Step, rows: usize, samples: &[SampleRow]) {
        let (a, vocab) = (&self.act, self.config.vocab_size);
        let t = samples.len();
        if samples.iter().all(|p| p.temperature == 0.0) && t > 0 {
            step.push(Op::Argmax(Argmax { x: a.logits, out: a.token, n: t, width: vocab }));
        } else if t > 0 {
            step.write_u32(a.params, &SampleRow::to_words(samples));
            step.push(Op::Sample(Sample {
                x: a.logits,
                params: a.params,
                out: a.token,
                n: t,
                width: vocab,
            }));
        }
        // What `step` reads next, so a GPU can stage it in the step's own submission.
        if t > 0 {
            step.read_back.push((a.token, 0, 4 * t));
        }
        if rows > t {
            step.read_back.push((a.logits, 4 * t * vocab, 4 * (rows - t) * vocab));
        }
    }

    /// Uploads the masked chunks' masks and masks their head rows (see [`Model::step_masked`]).
    fn record_masks(
        &self,
        step: &mut Step,
        masked: &[usize],
        head: &[HeadRows],
        masks: Vec<Vec<u32>>,
    ) -> Result<()> {
        let words = self.config.vocab_size.div_ceil(32);
        if masks.len() != masked.len() {
            return Err(Error::InvalidParameter(format!(
                "{} masks for {} masked chunks",
                masks.len(),
                masked.len()
            )));
        }
        let (mut rows, mut bits) = (vec![], vec![]);
        for (&i, m) in masked.iter().zip(masks) {
            // A chunk that asks for nothing this step (a prompt chunk) has no rows to mask.
            let Some(h) = head.iter().find(|h| h.chunk == i) else { continue };
            if m.len() != h.rows * words {
                return Err(Error::InvalidParameter(format!(
                    "chunk {i}: a mask of {} words for {} rows of {} tokens",
                    m.len(),
                    h.rows,
                    self.config.vocab_size
                )));
            }
            rows.extend(h.row as u32..(h.row + h.rows) as u32);
            bits.extend_from_slice(&m);
        }
        let (idx, mask, _) = self.act.mask.expect("grown before recording");
        let head_rows: usize = head.iter().map(|h| h.rows).sum();
        if !rows.is_empty() {
            step.write_u32(idx, &rows);
            step.write_u32(mask, &bits);
            step.push(Op::MaskLogits(MaskLogits {
                x: self.act.logits,
                rows: idx,
                mask,
                n: rows.len(),
                x_rows: head_rows,
                width: self.config.vocab_size,
            }));
        }
        Ok(())
    }
}
