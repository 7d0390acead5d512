//! Speculative decoding from the command line: `--speculate ngram` (prompt lookup) or
//! `--draft-model PATH` (a smaller model with the same tokenizer, on the same backend), with
//! `--draft-tokens K`; and `tandem bench`'s comparison of decoding with and without it.

use clap::{Args, ValueEnum};
use std::path::PathBuf;
use tandem_core::generate::{generate_speculative, GenerateParams, Generation};
use tandem_core::loader::ModelSource;
use tandem_core::model::{Model, ModelOptions};
use tandem_core::scheduler::{Speculation, MAX_DRAFT_TOKENS};
use tandem_core::tokenizer::{ChatMessage, Tokenizer};
use tandem_core::{Backend, Error, Result};

use crate::run::{load_model, WeightDtype};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpecKind {
    /// Prompt lookup: draft the tokens that followed the latest earlier occurrence of the
    /// last 3, 2 or 1 tokens in the prompt and output (no second model).
    Ngram,
}

#[derive(Args, Clone)]
pub struct SpecArgs {
    /// Speculative decoding without a draft model.
    #[arg(long, value_enum, value_name = "KIND", conflicts_with = "draft_model")]
    pub speculate: Option<SpecKind>,
    /// Speculative decoding with this draft model: a smaller model with the same tokenizer
    /// (directory or .gguf), run on the same backend with its own KV cache. The output is
    /// the target model's own: identical greedy text, the same sampled tokens for a seed.
    #[arg(long, value_name = "PATH")]
    pub draft_model: Option<PathBuf>,
    /// Convert the draft model's weights at load time (as --dtype does for the target).
    #[arg(long, value_enum, requires = "draft_model")]
    pub draft_dtype: Option<WeightDtype>,
    /// Most tokens drafted per step (fewer while drafts keep failing).
    #[arg(long, default_value_t = 4, value_name = "K")]
    pub draft_tokens: usize,
}

/// `tandem bench`'s speculation workload: what the model is asked to do with the built-in text.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpecTask {
    /// Summarize it, quoting key phrases (prompt lookup finds some of the output).
    Summarize,
    /// Repeat it word for word (prompt lookup finds most of the output: the high-acceptance
    /// case, as in editing or quoting a document).
    Quote,
}

impl SpecTask {
    fn instruction(self) -> &'static str {
        match self {
            SpecTask::Summarize => {
                "Summarize the text above in a few sentences, quoting its key phrases."
            }
            SpecTask::Quote => "Repeat the text above word for word.",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            SpecTask::Summarize => "a text to summarize",
            SpecTask::Quote => "a text to repeat word for word",
        }
    }
}

/// What the speculation flags asked for, checked before any model loads.
pub struct SpecSource {
    draft: Option<(ModelSource, Option<WeightDtype>)>,
    k: usize,
}

impl SpecArgs {
    /// `None` without speculation. Refuses a K out of range and a draft model whose tokenizer
    /// is not the target's (same vocabulary size, same ids for a sample text, same EOS).
    pub fn open(&self, target: &Tokenizer) -> Result<Option<SpecSource>> {
        if self.speculate.is_none() && self.draft_model.is_none() {
            return Ok(None);
        }
        if !(1..=MAX_DRAFT_TOKENS).contains(&self.draft_tokens) {
            return Err(Error::InvalidParameter(format!(
                "--draft-tokens must be 1 to {MAX_DRAFT_TOKENS}, got {}",
                self.draft_tokens
            )));
        }
        let draft = match &self.draft_model {
            None => None,
            Some(path) => {
                let source = tandem_core::loader::open(path)?;
                let tok = Tokenizer::load(&source.tokenizer)?;
                if !target.interchangeable(&tok)? {
                    let reason = "its tokenizer differs from the target model's (a draft must share the target's vocabulary)".into();
                    return Err(Error::BadModelFile { path: path.clone(), reason });
                }
                Some((source, self.draft_dtype))
            }
        };
        Ok(Some(SpecSource { draft, k: self.draft_tokens }))
    }
}

impl SpecSource {
    /// The speculation, loading the draft model (if any) on `another` instance of the
    /// target's backend with the target's cache options.
    pub fn build<B: Backend>(
        &self,
        another: &dyn Fn() -> Result<B>,
        target: &ModelOptions,
    ) -> Result<Speculation<B>> {
        match &self.draft {
            None => Ok(Speculation::ngram(self.k)),
            Some((source, dtype)) => {
                let opts =
                    ModelOptions { weight_dtype: dtype.map(WeightDtype::dtype), ..target.clone() };
                let model = load_model(another()?, source, &opts)?;
                Ok(Speculation::draft_model(model, self.k))
            }
        }
    }

    pub fn describe(&self) -> String {
        match &self.draft {
            None => format!("prompt lookup (n-gram), K <= {}", self.k),
            Some((s, _)) => format!("draft model {}, K <= {}", s.path.display(), self.k),
        }
    }
}

/// The acceptance line of a generation with speculation.
pub fn acceptance(gen: &Generation) -> String {
    let rate = gen.accepted_tokens as f64 / gen.draft_tokens.max(1) as f64;
    format!(
        "{}/{} draft tokens accepted ({:.0}%)",
        gen.accepted_tokens,
        gen.draft_tokens,
        100.0 * rate
    )
}

/// `tandem bench` with speculation: a prompt about a built-in text (`task`: summarize it, or repeat it), decoded
/// greedily with and without speculation (best of `repeat` each), on the same model: decode
/// tok/s, the speed-up, the acceptance rate, and whether the tokens are identical (they must be).
#[allow(clippy::too_many_arguments)]
pub async fn bench<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    spec: Speculation<B>,
    what: &str,
    task: SpecTask,
    max_tokens: usize,
    repeat: usize,
    json: bool,
) -> Result<()> {
    let messages = [ChatMessage::new("user", format!("{BENCH_TEXT}\n\n{}", task.instruction()))];
    let prompt = tok.encode(&tok.apply_chat_template(&messages, true)?)?;
    let params = GenerateParams { max_tokens, ..Default::default() };
    let mut spec = Some(spec);
    let (mut plain, mut fast): (Option<Generation>, Option<Generation>) = (None, None);
    let best = |best: &mut Option<Generation>, g: Generation| {
        if best.as_ref().is_none_or(|b| g.decode_tok_per_sec() > b.decode_tok_per_sec()) {
            *best = Some(g);
        }
    };
    // Alternating, so a machine's slow stretch hits both.
    for _ in 0..repeat {
        best(
            &mut plain,
            generate_speculative(
                model,
                tok,
                &prompt,
                &params,
                &mut None,
                None,
                &mut |_| {},
                &|| false,
            )
            .await?,
        );
        best(
            &mut fast,
            generate_speculative(
                model,
                tok,
                &prompt,
                &params,
                &mut spec,
                None,
                &mut |_| {},
                &|| false,
            )
            .await?,
        );
    }
    let (plain, fast) = (plain.expect("repeat >= 1"), fast.expect("repeat >= 1"));
    let identical = plain.tokens == fast.tokens;
    let speedup = fast.decode_tok_per_sec() / plain.decode_tok_per_sec();
    let rate = fast.accepted_tokens as f64 / fast.draft_tokens.max(1) as f64;
    if json {
        let report = serde_json::json!({
            "backend": model.backend.name(),
            "speculation": what,
            "task": task.describe(),
            "prompt_tokens": prompt.len(),
            "generated_tokens": fast.tokens.len(),
            "plain_decode_tok_s": plain.decode_tok_per_sec(),
            "speculative_decode_tok_s": fast.decode_tok_per_sec(),
            "speedup": speedup,
            "draft_tokens": fast.draft_tokens,
            "accepted_tokens": fast.accepted_tokens,
            "acceptance_rate": rate,
            "identical": identical,
        });
        println!("{report}");
    } else {
        println!("backend:      {}", model.backend.name());
        println!("speculation:  {what}");
        println!(
            "workload:     {} prompt tokens ({}), {} generated greedily",
            prompt.len(),
            task.describe(),
            fast.tokens.len()
        );
        println!("plain:        {:.1} tok/s decode", plain.decode_tok_per_sec());
        println!(
            "speculative:  {:.1} tok/s decode; {}; {:.2} tokens per target step",
            fast.decode_tok_per_sec(),
            acceptance(&fast),
            1.0 + fast.accepted_tokens as f64
                / fast.tokens.len().saturating_sub(fast.accepted_tokens).max(1) as f64
        );
        println!(
            "speed-up:     {speedup:.2}x, output {}",
            if identical { "identical" } else { "DIFFERENT" }
        );
    }
    if !identical {
        return Err(Error::Backend { backend: model.backend.name(), reason: format!("speculative greedy output differs from plain decoding:\n plain: {:?}\n  spec: {:?}", plain.text, fast.text) });
    }
    Ok(())
}

/// The benchmark's text (bench/spec-text.txt, which `npm run bench:browser -- --speculate`
/// reads too): a passage a summary quotes from, where prompt lookup finds its drafts.
const BENCH_TEXT: &str = include_str!("../../../bench/spec-text.txt").trim_ascii_end();
