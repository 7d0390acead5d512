//! Real models end to end on CUDA: the exact reference tokens (stories260K's 200, SmolLM2's
//! chat answer), the same tokens as the CPU backend for quantized weights and for sampling,
//! with and without CUDA graphs, and a decode step that costs one step, one graph launch and
//! 4 bytes of readback. No GPU or no model file: SKIP with the reason.

use tandem_core::generate::{generate, GenerateParams};
use tandem_core::loader;
use tandem_core::model::{Model, ModelOptions, Output, Want};
use tandem_core::sampling::SamplingParams;
use tandem_core::tokenizer::Tokenizer;
use tandem_core::{Backend, DType};
use tandem_cpu::CpuBackend;
use tandem_cuda::{CudaBackend, CudaOptions};
use tandem_tests::e2e::{self, Skip};

fn backend(graphs: bool) -> Result<CudaBackend, Skip> {
    CudaBackend::new(CudaOptions { graphs, ..Default::default() }).map_err(|e| Skip(e.to_string()))
}

fn report(name: &str, r: Result<(), Skip>) {
    if let Err(Skip(why)) = r {
        eprintln!("SKIP {name}: {why}");
    }
}

#[test]
fn stories260k_greedy() {
    report(
        "stories260k_greedy",
        backend(true).and_then(|b| e2e::stories_greedy(b, &ModelOptions::default())),
    );
}

#[test]
fn stories260k_greedy_without_graphs() {
    report(
        "stories260k_greedy_without_graphs",
        backend(false).and_then(|b| e2e::stories_greedy(b, &ModelOptions::default())),
    );
}

#[test]
fn stories260k_greedy_f16_kv_and_small_blocks() {
    // A 1-token block size and chunked prefill exercise the block tables and chunk boundaries
    // (equal chunks repeat, so prefill steps are captured and replayed too); a 300-token
    // context has decode steps with several flash-decoding partitions.
    let opts = ModelOptions {
        kv_dtypes: DType::F16.into(),
        block_size: 1,
        max_step_tokens: 3,
        ..Default::default()
    };
    report(
        "stories260k_greedy_f16_kv_and_small_blocks",
        backend(true).and_then(|b| e2e::stories_greedy(b, &opts)),
    );
}

#[test]
fn smollm2_chat() {
    report("smollm2_chat", backend(true).and_then(|b| e2e::smollm_chat(b, true)));
}

/// Tokens of `params` from the stories260K prompt on `b`, weights converted to `dtype`.
fn stories_tokens<B: Backend>(
    b: B,
    dtype: Option<DType>,
    params: &GenerateParams,
) -> Result<Vec<u32>, Skip> {
    stories_tokens_after(b, dtype, params, 0)
}

/// The same, with the prompt followed by the first `extra` reference tokens (a prompt long
/// enough for the tensor-core products).
fn stories_tokens_after<B: Backend>(
    b: B,
    dtype: Option<DType>,
    params: &GenerateParams,
    extra: usize,
) -> Result<Vec<u32>, Skip> {
    let dir = e2e::stories_dir()?;
    let reference = e2e::read_json(&dir.join("reference_greedy.json"));
    let source = loader::open(&dir).expect("open stories260K");
    let tokenizer = Tokenizer::load(&source.tokenizer).expect("tokenizer");
    let opts = ModelOptions { weight_dtype: dtype, ..Default::default() };
    let mut model = e2e::load(b, &source, &opts);
    let mut prompt = e2e::ids(&reference["input_ids"]);
    prompt.extend_from_slice(&e2e::ids(&reference["greedy_token_ids"])[..extra]);
    Ok(pollster::block_on(generate(&mut model, &tokenizer, &prompt, params, &mut |_| {}))
        .expect("generate")
        .tokens)
}

/// A 121-token prompt: its products run on tensor cores (bf16 operands) where cuBLAS is
/// present, and the greedy tokens after it must still be the CPU reference's, per dtype.
#[test]
fn long_prompt_tokens_match_the_cpu() {
    let run = || -> Result<(), Skip> {
        drop(backend(true)?);
        let greedy = GenerateParams { max_tokens: 60, ignore_eos: true, ..Default::default() };
        for dtype in
            [Some(DType::BF16), Some(DType::Q8_0), Some(DType::Q4_0), Some(DType::Q4_1), None]
        {
            let want = stories_tokens_after(CpuBackend::reference(), dtype, &greedy, 120)?;
            let got = stories_tokens_after(backend(true)?, dtype, &greedy, 120)?;
            e2e::assert_tokens_eq(&got, &want, format!("cuda, 121-token prompt ({dtype:?})"));
        }
        Ok(())
    };
    report("long_prompt_tokens_match_the_cpu", run());
}

#[test]
fn quantized_and_sampled_tokens_match_the_cpu() {
    let run = || -> Result<(), Skip> {
        drop(backend(true)?); // skip before the CPU runs
        let greedy = GenerateParams { max_tokens: 100, ignore_eos: true, ..Default::default() };
        let sampled = GenerateParams {
            max_tokens: 100,
            ignore_eos: true,
            sampling: SamplingParams {
                temperature: 0.9,
                top_k: 40,
                top_p: 0.95,
                min_p: 0.02,
                seed: 7,
                ..Default::default()
            },
            ..Default::default()
        };
        for (dtype, params) in [
            (Some(DType::Q8_0), &greedy),
            (Some(DType::Q4_0), &greedy),
            (Some(DType::Q4_1), &greedy),
            (Some(DType::F16), &greedy),
            (Some(DType::BF16), &greedy),
            (None, &sampled),
        ] {
            let want = stories_tokens(CpuBackend::reference(), dtype, params)?;
            let got = stories_tokens(backend(true)?, dtype, params)?;
            e2e::assert_tokens_eq(
                &got,
                &want,
                format!("cuda ({dtype:?}, T={})", params.sampling.temperature),
            );
        }
        Ok(())
    };
    report("quantized_and_sampled_tokens_match_the_cpu", run());
}

/// After the prompt, a greedy token costs one step, 4 bytes of readback and, from the second
/// decode step on, one graph launch and no kernel launched on its own.
#[test]
fn stories260k_decode_replays_one_graph_per_token() {
    let run = || -> Result<(), Skip> {
        let dir = e2e::stories_dir()?;
        let reference = e2e::read_json(&dir.join("reference_greedy.json"));
        let source = loader::open(&dir).expect("open stories260K");
        let mut model = e2e::load(backend(true)?, &source, &ModelOptions::default());
        let expected = e2e::ids(&reference["greedy_token_ids"]);
        let mut seq = model.new_sequence();
        let next =
            |model: &mut Model<CudaBackend>, seq: &mut _, t: &[u32]| match pollster::block_on(
                model.forward(seq, t, Want::argmax()),
            )
            .expect("forward")
            {
                Output::Token(t) => t,
                Output::Logits(_) => unreachable!("asked for a token"),
            };
        let mut token = next(&mut model, &mut seq, &e2e::ids(&reference["input_ids"]));
        assert_eq!(token, expected[0]);
        for (i, &want) in expected[1..40].iter().enumerate() {
            let before = model.backend.stats();
            token = next(&mut model, &mut seq, &[token]);
            let after = model.backend.stats();
            assert_eq!(token, want, "token {}", i + 1);
            assert_eq!(after.steps - before.steps, 1, "steps per token");
            assert_eq!(after.readback_bytes - before.readback_bytes, 4, "readback bytes per token");
            if i >= 1 {
                assert_eq!(
                    after.graph_launches - before.graph_launches,
                    1,
                    "graph launches per token {}",
                    i + 1
                );
                assert_eq!(
                    after.kernel_launches, before.kernel_launches,
                    "kernels launched outside the graph"
                );
            }
        }
        let (graphs, disabled) = model.backend.graph_status();
        assert_eq!(disabled, None);
        assert!(graphs >= 1);
        Ok(())
    };
    report("stories260k_decode_replays_one_graph_per_token", run());
}
