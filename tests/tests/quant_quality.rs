//! Weight quantization quality on stories260K: perplexity over a fixed story, f32 against
//! tandem's q8 (8.5 bits/weight) and q4 (5 bits/weight) formats and bf16, made at load time.

use tandem_core::loader;
use tandem_core::model::{ModelOptions, Output, Want};
use tandem_core::tokenizer::Tokenizer;
use tandem_core::DType;
use tandem_cpu::CpuBackend;
use tandem_tests::e2e;

/// A TinyStories-style text the model has not memorized verbatim.
const TEXT: &str = "Once upon a time, there was a little girl named Lily. She loved to play in the park with her \
ball. One day, she saw a big dog near the tree. The dog was sad because it was lost. Lily said, \"Do not be \
sad, dog. I will help you find your home.\" They walked together and looked for the dog's house. At last they \
found a small red house with a happy boy in the garden. The boy hugged the dog and said thank you to Lily. \
Lily smiled and went home to tell her mom about her new friend.";

/// Perplexity of TEXT and the model's own greedy continuation from BOS (text and token ids).
fn perplexity(weights: Option<DType>, max_step_tokens: usize) -> Option<(f64, String)> {
    perplexity_tokens(weights, max_step_tokens).map(|(ppl, text, _)| (ppl, text))
}

fn perplexity_tokens(weights: Option<DType>, max_step_tokens: usize) -> Option<(f64, String, Vec<u32>)> {
    let dir = match e2e::stories_dir() {
        Ok(d) => d,
        Err(e2e::Skip(why)) => {
            eprintln!("SKIP quant_quality: {why}");
            return None;
        }
    };
    let source = loader::open(&dir).expect("open");
    let tokenizer = Tokenizer::load(&source.tokenizer).expect("tokenizer");
    let mut ids = vec![tokenizer.bos_id().expect("bos")];
    ids.extend(tokenizer.encode(TEXT).expect("encode"));
    let opts = ModelOptions { weight_dtype: weights, max_step_tokens, ..Default::default() };
    let mut model = e2e::load(CpuBackend::fast(2).unwrap(), &source, &opts);
    let mut seq = model.new_sequence();
    let Output::Logits(logits) = pollster::block_on(model.forward(&mut seq, &ids, Want::AllLogits)).expect("forward") else {
        unreachable!()
    };
    model.release(&mut seq);
    let vocab = model.config.vocab_size;
    assert_eq!(logits.len(), ids.len() * vocab);
    let mut nll = 0.0f64;
    for (i, &next) in ids[1..].iter().enumerate() {
        let row = &logits[i * vocab..(i + 1) * vocab];
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = max + row.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
        nll += lse - row[next as usize] as f64;
    }
    let ppl = (nll / (ids.len() - 1) as f64).exp();
    let tokens = e2e::greedy(&mut model, &tokenizer, &ids[..1], 60);
    Some((ppl, tokenizer.decode(&tokens, true).expect("decode"), tokens))
}

#[test]
fn q8_and_q4_perplexity_against_f32() {
    let Some((f32_ppl, _)) = perplexity(None, 256) else { return };
    let (q8_ppl, _) = perplexity(Some(DType::Q8_0), 256).unwrap();
    let (q4_ppl, q4_text) = perplexity(Some(DType::Q4_1), 256).unwrap();
    eprintln!("stories260K perplexity: f32 {f32_ppl:.4}, q8 {q8_ppl:.4} ({:+.2}%), q4 {q4_ppl:.4} ({:+.2}%)",
        (q8_ppl / f32_ppl - 1.0) * 100.0, (q4_ppl / f32_ppl - 1.0) * 100.0);
    eprintln!("q4 greedy text: {q4_text}");
    assert!(f32_ppl > 1.0 && f32_ppl < 20.0, "f32 perplexity {f32_ppl} is implausible for a story");
    assert!((q8_ppl / f32_ppl - 1.0).abs() <= 0.01, "q8 perplexity {q8_ppl} is not within 1% of f32 {f32_ppl}");
    // 5-bit weights on a 260K-parameter model cost real quality; it must stay the same model.
    assert!(q4_ppl / f32_ppl < 1.25, "q4 perplexity {q4_ppl} vs f32 {f32_ppl}");
    let words: Vec<&str> = q4_text.split_whitespace().collect();
    assert!(words.len() >= 20, "q4 text too short: {q4_text:?}");
    assert!(q4_text.chars().all(|c| c.is_ascii() && (!c.is_ascii_control() || c == '\n')), "q4 text: {q4_text:?}");
}

#[test]
fn bf16_perplexity_and_greedy_tokens_against_f32() {
    let Some((f32_ppl, _, f32_tokens)) = perplexity_tokens(None, 256) else { return };
    let (bf16_ppl, bf16_text, bf16_tokens) = perplexity_tokens(Some(DType::BF16), 256).unwrap();
    let same = f32_tokens.iter().zip(&bf16_tokens).take_while(|(a, b)| a == b).count();
    eprintln!(
        "stories260K perplexity: f32 {f32_ppl:.4}, bf16 {bf16_ppl:.4} ({:+.2}%); greedy tokens equal to f32's: first {same} of {}",
        (bf16_ppl / f32_ppl - 1.0) * 100.0,
        f32_tokens.len()
    );
    eprintln!("bf16 greedy text: {bf16_text}");
    // 8 mantissa bits: a rounding error of 2^-9 per weight moves perplexity well under 1%.
    assert!((bf16_ppl / f32_ppl - 1.0).abs() <= 0.01, "bf16 perplexity {bf16_ppl} is not within 1% of f32 {f32_ppl}");
    assert_eq!(bf16_tokens.len(), f32_tokens.len());
    // Greedy decoding may flip at a near-tie and then diverge; most of the run must agree.
    assert!(same * 2 >= f32_tokens.len(), "bf16 greedy tokens diverge from f32's after {same}: {bf16_text:?}");
}

#[test]
fn chunked_prefill_matches_one_step() {
    let Some((whole, _)) = perplexity(None, 256) else { return };
    let (chunked, _) = perplexity(None, 7).unwrap();
    assert!((whole - chunked).abs() / whole < 1e-4, "one step {whole} vs chunks of 7 {chunked}");
}
