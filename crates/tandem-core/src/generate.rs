//! Text generation: prefill the prompt, then decode token by token, streaming text as it
//! completes. Generic over the backend and async end to end, so the same code drives a native
//! binary and a browser page.

use std::sync::Arc;

use crate::backend::Backend;
use crate::lora::Adapter;
use crate::model::Model;
use crate::scheduler::{Event, Scheduler, SchedulerConfig, Speculation};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

pub use crate::scheduler::{FinishReason, GenerateParams, MAX_STOP_BYTES, MAX_STOP_STRINGS};

#[derive(Debug, Clone)]
pub struct Generation {
    pub prompt_tokens: usize,
    /// Generated token ids, the end-of-sequence token included if it ended the run.
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    /// Time to the first generated token (prefill).
    pub prefill_secs: f64,
    /// Time for every later token.
    pub decode_secs: f64,
    /// Speculative decoding: draft tokens verified and accepted (0 without it).
    pub draft_tokens: usize,
    pub accepted_tokens: usize,
}

impl Generation {
    pub fn prefill_tok_per_sec(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_secs.max(1e-9)
    }
    /// Decode rate over the tokens after the first (whose cost is the prefill's).
    pub fn decode_tok_per_sec(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode_secs.max(1e-9)
    }
}

/// Generates from `prompt` (token ids, BOS already included if the model wants it), calling
/// `on_text` with each piece of text as soon as it is complete.
pub async fn generate<B: Backend>(
    model: &mut Model<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    generate_interruptible(model, tokenizer, prompt, params, on_text, &|| false).await
}

/// [`generate`], also stopping (with [`FinishReason::Interrupted`]) as soon as `interrupted`
/// returns true; it is asked before every step after the first token.
///
/// One request through the scheduler, the same path every front end takes. Unlike a queued
/// request, a lone generation may ask for more tokens than the context has room for: it then
/// runs until the context is full and finishes with [`FinishReason::Context`].
pub async fn generate_interruptible<B: Backend>(
    model: &mut Model<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(&str),
    interrupted: &dyn Fn() -> bool,
) -> Result<Generation> {
    generate_speculative(model, tokenizer, prompt, params, &mut None, None, on_text, interrupted)
        .await
}

/// [`generate_interruptible`] with speculative decoding when `spec` holds one (it is lent to
/// the run's scheduler and handed back, its draft model's blocks all free). The tokens are
/// the ones generation without it gives; [`Generation`] counts drafted and accepted tokens.
/// With `adapter`, the generation runs through that LoRA adapter (the model's adapter pools
/// enabled, [`Model::enable_lora`], of at least its rank).
#[allow(clippy::too_many_arguments)]
pub async fn generate_speculative<B: Backend>(
    model: &mut Model<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    spec: &mut Option<Speculation<B>>,
    adapter: Option<Arc<Adapter>>,
    on_text: &mut dyn FnMut(&str),
    interrupted: &dyn Fn() -> bool,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::InvalidParameter("the prompt has no tokens".into()));
    }
    params.validate()?;
    let context = model.context();
    if prompt.len() > context {
        return Err(Error::PromptTooLong { prompt: prompt.len(), context });
    }
    let gen = Generation {
        prompt_tokens: prompt.len(),
        tokens: Vec::new(),
        text: String::new(),
        finish: FinishReason::Length,
        prefill_secs: 0.0,
        decode_secs: 0.0,
        draft_tokens: 0,
        accepted_tokens: 0,
    };
    if params.max_tokens == 0 {
        return Ok(gen);
    }
    let room = context - prompt.len();
    let clamped = params.max_tokens > room;
    let mut params =
        GenerateParams { max_tokens: params.max_tokens.min(room).max(1), ..params.clone() };
    let config = SchedulerConfig { max_seqs: 1, max_batched_tokens: model.max_step_tokens() };
    let mut sched = Scheduler::<B, &mut Model<B>, &Tokenizer>::new(model, tokenizer, config)?;
    if let Some(adapter) = adapter {
        sched.add_adapter("adapter", adapter)?;
        params.adapter = Some("adapter".into());
    }
    sched.set_speculation(spec.take())?;
    let result = run_one(&mut sched, prompt, params, clamped, gen, on_text, interrupted).await;
    *spec = sched.set_speculation(None)?;
    result
}

async fn run_one<B: Backend>(
    sched: &mut Scheduler<B, &mut Model<B>, &Tokenizer>,
    prompt: &[u32],
    params: GenerateParams,
    clamped: bool,
    mut gen: Generation,
    on_text: &mut dyn FnMut(&str),
    interrupted: &dyn Fn() -> bool,
) -> Result<Generation> {
    let id = sched.add(prompt.to_vec(), params)?;
    let mut emit = |gen: &mut Generation, text: &str| {
        if !text.is_empty() {
            gen.text.push_str(text);
            on_text(text);
        }
    };
    while sched.has_work() {
        if !gen.tokens.is_empty() && interrupted() {
            sched.abort(id);
        }
        for (_, event) in sched.step().await {
            match event {
                Event::Token { id, text, .. } => {
                    gen.tokens.push(id);
                    emit(&mut gen, &text);
                }
                Event::Finished { reason, text, usage } => {
                    emit(&mut gen, &text);
                    gen.finish = if clamped && reason == FinishReason::Length {
                        FinishReason::Context
                    } else {
                        reason
                    };
                    gen.prefill_secs = usage.ttft_secs;
                    gen.decode_secs = usage.decode_secs;
                    gen.draft_tokens = usage.draft_tokens;
                    gen.accepted_tokens = usage.accepted_tokens;
                }
                Event::Failed(e) => return Err(e),
            }
        }
    }
    Ok(gen)
}
