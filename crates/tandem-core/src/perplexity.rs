//! Perplexity of a model over a text, measured the way llama.cpp's `llama-perplexity` does by
//! default, so the two numbers can be compared on the same file:
//!
//! - the whole text is tokenized once (one trailing newline dropped, as its `-f` reading
//!   does), with a BOS first only where the tokenizer adds one ([`Tokenizer::add_bos`]);
//! - the tokens are cut into consecutive chunks of `ctx` tokens (a partial last chunk is
//!   dropped); where the tokenizer adds BOS, each chunk's first token is replaced by BOS;
//! - each chunk is a fresh sequence, and only its second half is scored: the logits at
//!   positions `ctx/2 .. ctx-1` predict the tokens after them, so every scored token has at
//!   least `ctx/2` tokens of context;
//! - PPL is exp of the mean negative log-likelihood over all scored tokens, and its ± is the
//!   standard error of that mean carried through exp (PPL times the standard error).

use crate::model::{Model, Output, Want};
use crate::tokenizer::Tokenizer;
use crate::{Backend, Error, Result};

/// The smallest context that scores at least one token per chunk with a useful history.
pub const MIN_CTX: usize = 4;

/// The text's tokens as they are scored: BOS first where the tokenizer adds it.
pub fn tokenize(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    // llama-perplexity drops one trailing newline of the file it reads; so does this, so that
    // both see the same tokens.
    let text = text.strip_suffix('\n').unwrap_or(text);
    let mut ids = Vec::new();
    if tokenizer.add_bos() {
        ids.push(bos(tokenizer)?);
    }
    ids.extend(tokenizer.encode(text)?);
    Ok(ids)
}

fn bos(tokenizer: &Tokenizer) -> Result<u32> {
    tokenizer
        .bos_id()
        .ok_or_else(|| Error::Tokenizer("the tokenizer adds BOS but names no BOS token".into()))
}

/// How many chunks of `ctx` tokens `n_tokens` gives, at most `limit`; a clear error when the
/// text is too short or the numbers make no sense.
pub fn chunk_count(n_tokens: usize, ctx: usize, limit: Option<usize>) -> Result<usize> {
    if ctx < MIN_CTX {
        return Err(Error::InvalidParameter(format!(
            "--ctx must be at least {MIN_CTX} tokens (got {ctx})"
        )));
    }
    if limit == Some(0) {
        return Err(Error::InvalidParameter("--chunks must be at least 1".into()));
    }
    // As llama-perplexity: two chunks at least, so a text shorter than that is refused rather
    // than measured on a handful of tokens.
    if n_tokens < 2 * ctx {
        return Err(Error::InvalidParameter(format!(
            "the text is {n_tokens} tokens long; perplexity with a context of {ctx} needs at least {} (two chunks): use a longer text or a smaller --ctx",
            2 * ctx
        )));
    }
    let all = n_tokens / ctx;
    Ok(limit.map_or(all, |l| l.min(all)))
}

/// Running totals after each chunk (for progress lines).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkDone {
    /// 1-based.
    pub chunk: usize,
    pub chunks: usize,
    /// PPL over every token scored so far.
    pub ppl: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub ctx: usize,
    pub chunks: usize,
    /// Tokens of the whole text (BOS included where added).
    pub text_tokens: usize,
    /// Tokens whose likelihood was scored: `chunks * (ctx - 1 - ctx/2)`.
    pub scored: usize,
    pub ppl: f64,
    /// One standard error of `ppl` (None with a single scored token or no spread).
    pub uncertainty: Option<f64>,
    /// PPL after each chunk.
    pub running: Vec<f64>,
}

/// Scores `tokens` (from [`tokenize`]) in chunks of `ctx`, at most `limit` of them. The model's
/// context must hold `ctx` tokens. `bos` replaces each chunk's first token when given (pass
/// the BOS id where the tokenizer adds BOS, as [`run`] does).
pub async fn measure<B: Backend>(
    model: &mut Model<B>,
    tokens: &[u32],
    ctx: usize,
    limit: Option<usize>,
    bos: Option<u32>,
    on_chunk: &mut dyn FnMut(ChunkDone),
) -> Result<Report> {
    let chunks = chunk_count(tokens.len(), ctx, limit)?;
    if ctx > model.context() {
        return Err(Error::InvalidParameter(format!(
            "--ctx {ctx} exceeds the model's context of {} tokens",
            model.context()
        )));
    }
    let vocab = model.config.vocab_size;
    let first = ctx / 2;
    let (mut sum, mut sum_sq, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut running = Vec::with_capacity(chunks);
    for c in 0..chunks {
        let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let mut seq = model.new_sequence();
        let out = model.forward(&mut seq, &chunk, Want::AllLogits).await;
        model.release(&mut seq);
        let Output::Logits(logits) = out? else {
            return Err(Error::Backend {
                backend: model.backend.name(),
                reason: "asked for logits, got a token".into(),
            });
        };
        if logits.len() != ctx * vocab {
            return Err(Error::Backend {
                backend: model.backend.name(),
                reason: format!("{} logits for {ctx} positions of {vocab}", logits.len()),
            });
        }
        // Position p's logits predict the token at p + 1 of the original text (never the BOS
        // substituted at 0, which is not a prediction target).
        for p in first..ctx - 1 {
            let nll =
                neg_log_likelihood(&logits[p * vocab..(p + 1) * vocab], chunk[p + 1] as usize);
            sum += nll;
            sum_sq += nll * nll;
            count += 1;
        }
        let ppl = (sum / count as f64).exp();
        running.push(ppl);
        on_chunk(ChunkDone { chunk: c + 1, chunks, ppl });
    }
    let mean = sum / count as f64;
    let ppl = mean.exp();
    // Standard error of the mean NLL (sample variance over count - 1), times PPL: the first
    // order error of exp(mean).
    let variance = sum_sq / count as f64 - mean * mean;
    let uncertainty =
        (count > 1 && variance > 0.0).then(|| ppl * (variance / (count - 1) as f64).sqrt());
    Ok(Report { ctx, chunks, text_tokens: tokens.len(), scored: count, ppl, uncertainty, running })
}

/// Tokenizes `text` and measures it: the whole method in one call.
pub async fn run<B: Backend>(
    model: &mut Model<B>,
    tokenizer: &Tokenizer,
    text: &str,
    ctx: usize,
    limit: Option<usize>,
    on_chunk: &mut dyn FnMut(ChunkDone),
) -> Result<Report> {
    let tokens = tokenize(tokenizer, text)?;
    let bos = if tokenizer.add_bos() { Some(bos(tokenizer)?) } else { None };
    measure(model, &tokens, ctx, limit, bos, on_chunk).await
}

/// -log softmax(row)[target], in f64 so that a 49k-wide sum loses nothing.
fn neg_log_likelihood(row: &[f32], target: usize) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln() - row[target] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_count_follows_the_text_and_the_limit() {
        assert_eq!(chunk_count(1030, 512, None).unwrap(), 2);
        assert_eq!(chunk_count(5000, 512, Some(3)).unwrap(), 3);
        assert_eq!(chunk_count(5000, 512, Some(50)).unwrap(), 9);
        assert!(chunk_count(1023, 512, None).unwrap_err().to_string().contains("at least 1024"));
        assert!(chunk_count(100, 2, None).is_err());
        assert!(chunk_count(5000, 512, Some(0)).is_err());
    }

    #[test]
    fn nll_of_uniform_logits_is_log_vocab() {
        let row = [0.5f32; 8];
        assert!((neg_log_likelihood(&row, 3) - 8f64.ln()).abs() < 1e-12);
        let peaked = [0.0, 100.0, 0.0];
        assert!(neg_log_likelihood(&peaked, 1) < 1e-30_f64.max(1e-12));
    }
}
