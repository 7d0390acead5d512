//! Text generation: prefill the prompt, then decode token by token, streaming text as it
//! completes. Generic over the backend and async end to end, so the same code drives a native
//! binary and a browser page.

use crate::backend::Backend;
use crate::kv::Sequence;
use crate::model::{Model, Output, Want};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{StopStrings, TextStream, Tokenizer};
use crate::{Error, Result};
use web_time::Instant;

#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the text contains one of these; it is not part of the output.
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams { max_tokens: 256, sampling: SamplingParams::default(), stop: Vec::new(), ignore_eos: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// A stop string appeared.
    Stop,
    /// max_tokens reached.
    Length,
    /// The context is full.
    Context,
    /// The caller asked to stop ([`generate_interruptible`]).
    Interrupted,
}

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
/// returns true; it is asked before every forward step after the first.
pub async fn generate_interruptible<B: Backend>(
    model: &mut Model<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(&str),
    interrupted: &dyn Fn() -> bool,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::InvalidParameter("the prompt has no tokens".into()));
    }
    if prompt.len() > model.context() {
        return Err(Error::PromptTooLong { prompt: prompt.len(), context: model.context() });
    }
    let mut sampler = Sampler::new(params.sampling.clone())?;
    let mut seq = model.new_sequence();
    let result = decode_loop(model, tokenizer, &mut seq, prompt, params, &mut sampler, on_text, interrupted).await;
    model.release(&mut seq);
    result
}

#[allow(clippy::too_many_arguments)] // the loop's whole state; a struct would only rename it
async fn decode_loop<B: Backend>(
    model: &mut Model<B>,
    tokenizer: &Tokenizer,
    seq: &mut Sequence,
    prompt: &[u32],
    params: &GenerateParams,
    sampler: &mut Sampler,
    on_text: &mut dyn FnMut(&str),
    interrupted: &dyn Fn() -> bool,
) -> Result<Generation> {
    let mut gen = Generation {
        prompt_tokens: prompt.len(),
        tokens: Vec::new(),
        text: String::new(),
        finish: FinishReason::Length,
        prefill_secs: 0.0,
        decode_secs: 0.0,
    };
    if params.max_tokens == 0 {
        return Ok(gen);
    }
    let mut stream = TextStream::new(tokenizer);
    let mut stops = StopStrings::new(params.stop.clone());
    let mut emit = |gen: &mut Generation, text: &str| {
        if !text.is_empty() {
            gen.text.push_str(text);
            on_text(text);
        }
    };
    let mut seen: Vec<u32> = prompt.to_vec();
    let started = Instant::now();
    let mut input: Vec<u32> = prompt.to_vec();
    loop {
        let token = next_token(model, seq, &input, sampler, &seen).await?;
        if gen.tokens.is_empty() {
            gen.prefill_secs = started.elapsed().as_secs_f64();
        }
        gen.tokens.push(token);
        seen.push(token);
        if !params.ignore_eos && tokenizer.eos_ids().contains(&token) {
            gen.finish = FinishReason::Eos;
            break;
        }
        let piece = stream.push(token)?;
        let (safe, stopped) = stops.push(&piece);
        emit(&mut gen, &safe);
        if stopped {
            gen.finish = FinishReason::Stop;
            break;
        }
        if gen.tokens.len() >= params.max_tokens {
            gen.finish = FinishReason::Length;
            break;
        }
        if seq.len >= model.context() {
            gen.finish = FinishReason::Context;
            break;
        }
        if interrupted() {
            gen.finish = FinishReason::Interrupted;
            break;
        }
        input.clear();
        input.push(token);
    }
    if gen.finish != FinishReason::Stop {
        let tail = stream.finish()?;
        let (safe, stopped) = stops.push(&tail);
        emit(&mut gen, &safe);
        if stopped {
            gen.finish = FinishReason::Stop;
        } else {
            let rest = stops.finish();
            emit(&mut gen, &rest);
        }
    }
    gen.decode_secs = started.elapsed().as_secs_f64() - gen.prefill_secs;
    Ok(gen)
}

async fn next_token<B: Backend>(
    model: &mut Model<B>,
    seq: &mut Sequence,
    input: &[u32],
    sampler: &mut Sampler,
    seen: &[u32],
) -> Result<u32> {
    let p = sampler.params();
    let want = if p.repetition_penalty != 1.0 || (p.temperature > 0.0 && !model.samples_on_device()) {
        // The penalty needs the history, so that choice is made here from the logits.
        Want::LastLogits
    } else if p.temperature == 0.0 {
        Want::Argmax
    } else {
        let (temperature, top_k, top_p, min_p) = (p.temperature, p.top_k, p.top_p, p.min_p);
        Want::Sample { temperature, top_k, top_p, min_p, uniform: sampler.next_uniform() }
    };
    match model.forward(seq, input, want).await? {
        Output::Token(t) => Ok(t),
        Output::Logits(mut logits) => Ok(sampler.sample(&mut logits, seen)),
    }
}
