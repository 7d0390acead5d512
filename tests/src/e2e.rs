//! End-to-end checks on real models, generic over the backend: every backend must give the
//! reference tokens. A missing model file is an `Err(Skip(reason))` the caller prints instead
//! of passing silently; under `TANDEM_REQUIRE_MODELS=1` it is a failure ([`tandem_testkit`]).

use std::path::PathBuf;
use tandem_core::generate::{generate, GenerateParams};
use tandem_core::loader::{self, ModelSource};
use tandem_core::model::{Model, ModelOptions, Output, Want};
use tandem_core::tokenizer::{ChatMessage, Tokenizer};
use tandem_core::{Backend, DType};

/// Why a test could not run (a missing model file); printed by the caller.
pub struct Skip(pub String);

/// stories260K's folder, or why not (a panic instead under `TANDEM_REQUIRE_MODELS=1`).
pub fn stories_dir() -> Result<PathBuf, Skip> {
    tandem_testkit::find_shared_model("stories260K", &["model.safetensors"]).map_err(Skip)
}

/// SmolLM2-135M-Instruct Q4_1: `$TANDEM_SMOLLM_GGUF`, else the default model, fetched if needed.
/// Unavailable, it is a skip, or a failure under `TANDEM_REQUIRE_MODELS=1`.
pub fn smollm_gguf() -> Result<PathBuf, Skip> {
    if let Some(p) = std::env::var_os("TANDEM_SMOLLM_GGUF") {
        return Ok(PathBuf::from(p));
    }
    tandem_tools::default_model::ensure(&mut |line| eprintln!("{line}")).map_err(|e| {
        Skip(tandem_testkit::model_missing(format!("SmolLM2-135M-Instruct unavailable: {e}")))
    })
}

/// SmolLM2-135M-Instruct's reference.json (HF's tokens and logits) in the shared models.
pub fn smollm_reference() -> Result<PathBuf, Skip> {
    tandem_testkit::find_shared_model("SmolLM2-135M-Instruct", &["reference.json"])
        .map(|dir| dir.join("reference.json"))
        .map_err(Skip)
}

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("array of ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

pub fn load<B: Backend>(backend: B, source: &ModelSource, opts: &ModelOptions) -> Model<B> {
    Model::load(backend, source, opts, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("loading {}: {e}", source.path.display()))
}

/// Greedy decoding of `steps` tokens after `prompt`, ignoring EOS, as llama2.c's test does.
pub fn greedy<B: Backend>(
    model: &mut Model<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    steps: usize,
) -> Vec<u32> {
    let params = GenerateParams { max_tokens: steps, ignore_eos: true, ..Default::default() };
    pollster::block_on(generate(model, tokenizer, prompt, &params, &mut |_| {}))
        .expect("generate")
        .tokens
}

/// stories260K from BOS: all 200 greedy tokens of reference_greedy.json.
pub fn stories_greedy<B: Backend>(backend: B, opts: &ModelOptions) -> Result<(), Skip> {
    let dir = stories_dir()?;
    let reference = read_json(&dir.join("reference_greedy.json"));
    let source = loader::open(&dir).expect("open stories260K");
    let tokenizer = Tokenizer::load(&source.tokenizer).expect("tokenizer");
    let mut model = load(backend, &source, opts);
    let expected = ids(&reference["greedy_token_ids"]);
    let got = greedy(&mut model, &tokenizer, &ids(&reference["input_ids"]), expected.len());
    assert_tokens_eq(&got, &expected, model.backend.name());
    Ok(())
}

/// stories260K's reference sequence read teacher-forced (the prompt and all 200 greedy tokens in
/// one pass): how far below each row's top logit the reference's next token lies (0 where it is
/// the top), as (largest gap, rows where it is not the top).
pub fn stories_forced_gaps<B: Backend>(
    backend: B,
    opts: &ModelOptions,
) -> Result<(f32, usize), Skip> {
    let dir = stories_dir()?;
    let reference = read_json(&dir.join("reference_greedy.json"));
    let source = loader::open(&dir).expect("open stories260K");
    let mut model = load(backend, &source, opts);
    let (prompt, expected) = (ids(&reference["input_ids"]), ids(&reference["greedy_token_ids"]));
    let tokens = [&prompt[..], &expected[..expected.len() - 1]].concat();
    let mut seq = model.new_sequence();
    let Output::Logits(logits) =
        pollster::block_on(model.forward(&mut seq, &tokens, Want::AllLogits)).expect("forward")
    else {
        unreachable!("asked for every row's logits")
    };
    model.release(&mut seq);
    let vocab = model.config.vocab_size;
    let rows = logits.chunks_exact(vocab).skip(prompt.len() - 1);
    let gaps: Vec<f32> = rows
        .zip(&expected)
        .map(|(row, &t)| row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) - row[t as usize])
        .collect();
    assert_eq!(gaps.len(), expected.len());
    Ok((gaps.iter().fold(0f32, |m, &g| m.max(g)), gaps.iter().filter(|&&g| g > 0.0).count()))
}

/// SmolLM2's chat prompt through the chat template: exact input ids, then exact greedy ids
/// (up to and including EOS). With `check_logits`, the top-5 logits at the last prompt
/// position must match HF's within 0.05.
pub fn smollm_chat<B: Backend>(backend: B, check_logits: bool) -> Result<(), Skip> {
    smollm_chat_as(backend, check_logits, None)
}

/// [`smollm_chat`] with the weight matrices converted to `weight_dtype` at load time.
pub fn smollm_chat_as<B: Backend>(
    backend: B,
    check_logits: bool,
    weight_dtype: Option<DType>,
) -> Result<(), Skip> {
    smollm_chat_opts(backend, check_logits, ModelOptions { weight_dtype, ..Default::default() })
}

/// [`smollm_chat`] with these model options (a context of 512 whatever they say).
pub fn smollm_chat_opts<B: Backend>(
    backend: B,
    check_logits: bool,
    opts: ModelOptions,
) -> Result<(), Skip> {
    let gguf = smollm_gguf()?;
    let reference_path = smollm_reference()?;
    let reference = read_json(&reference_path);
    let source = loader::open(&gguf).expect("open SmolLM2 GGUF");
    let tokenizer = Tokenizer::load(&source.tokenizer).expect("tokenizer");
    let messages = [ChatMessage::new("user", "What is the capital of France?")];
    let prompt = tokenizer
        .encode(&tokenizer.apply_chat_template(&messages, true).expect("template"))
        .expect("encode");
    assert_eq!(prompt, ids(&reference["input_ids"]), "chat prompt tokens");

    let mut model = load(backend, &source, &ModelOptions { context: 512, ..opts });
    if check_logits {
        let mut seq = model.new_sequence();
        let Output::Logits(logits) =
            pollster::block_on(model.forward(&mut seq, &prompt, Want::Logits)).expect("forward")
        else {
            unreachable!("asked for logits")
        };
        model.release(&mut seq);
        for pair in reference["last_prompt_position_top5_logits"].as_array().expect("top5") {
            let (id, want) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap() as f32);
            assert!(
                (logits[id] - want).abs() <= 0.05,
                "logit of token {id}: {} vs HF {want}",
                logits[id]
            );
        }
    }
    let expected = ids(&reference["greedy_ids"]);
    let params = GenerateParams { max_tokens: 64, ..Default::default() };
    let gen = pollster::block_on(generate(&mut model, &tokenizer, &prompt, &params, &mut |_| {}))
        .expect("generate");
    assert_tokens_eq(&gen.tokens, &expected, model.backend.name());
    assert_eq!(gen.text, "The capital of France is Paris.");
    Ok(())
}

pub fn assert_tokens_eq(got: &[u32], expected: &[u32], backend: String) {
    if let Some(i) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!("{backend}: token {i} is {} but the reference has {}\n got: {got:?}\nwant: {expected:?}", got[i], expected[i]);
    }
    assert_eq!(got.len(), expected.len(), "{backend}: token count");
}
