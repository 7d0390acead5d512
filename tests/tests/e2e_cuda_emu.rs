//! stories260K end to end on the CUDA kernels without a GPU (tandem-cuda's emulator, see
//! conformance_cuda_emu.rs): whole steps recorded by the CUDA backend's code, prompt and
//! decode, reproduce the reference's first greedy tokens, with f32, with f16 KV in 1-token
//! blocks and chunked prefill, and with q8_0 and fp8 KV caches (their rotation included). The
//! emulator runs each CUDA thread as an OS thread, so only a few tokens. No C++ compiler or no
//! model: SKIP.

use tandem_core::loader;
use tandem_core::model::{ModelOptions, Output, Want};
use tandem_core::DType;
use tandem_cuda::emu::EmuBackend;
use tandem_tests::e2e::{self, Skip};

const TOKENS: usize = 5;

fn first_tokens(opts: &ModelOptions) -> Result<(), Skip> {
    let backend = EmuBackend::new().map_err(Skip)?;
    let dir = e2e::stories_dir()?;
    let reference = e2e::read_json(&dir.join("reference_greedy.json"));
    let source = loader::open(&dir).expect("open stories260K");
    let mut model = e2e::load(backend, &source, opts);
    let expected = e2e::ids(&reference["greedy_token_ids"]);
    let mut seq = model.new_sequence();
    let mut input = e2e::ids(&reference["input_ids"]);
    let mut got = vec![];
    for _ in 0..TOKENS {
        match pollster::block_on(model.forward(&mut seq, &input, Want::argmax())).expect("forward")
        {
            Output::Token(t) => {
                got.push(t);
                input = vec![t];
            }
            Output::Logits(_) => unreachable!("asked for a token"),
        }
    }
    e2e::assert_tokens_eq(&got, &expected[..TOKENS], "cuda-emu".into());
    Ok(())
}

fn report(name: &str, r: Result<(), Skip>) {
    if let Err(Skip(why)) = r {
        eprintln!("SKIP {name}: {why}");
    }
}

#[test]
fn stories260k_first_tokens() {
    report("stories260k_first_tokens", first_tokens(&ModelOptions::default()));
}

#[test]
fn stories260k_first_tokens_f16_kv_small_blocks_chunked() {
    let opts = ModelOptions {
        kv_dtypes: DType::F16.into(),
        block_size: 1,
        max_step_tokens: 3,
        ..Default::default()
    };
    report("stories260k_first_tokens_f16_kv_small_blocks_chunked", first_tokens(&opts));
}

/// Continuous batching through the CUDA backend's recording and kernels: 5 concurrent requests
/// (a 12-block pool, so preemption), with aborts, and sharing a 16-token prefix, each equal to
/// its solo run. Short outputs: the emulator is slow.
#[test]
fn stories260k_batched_equals_solo() {
    let r = EmuBackend::new()
        .map_err(Skip)
        .and_then(|b| tandem_tests::batch::stories_battery(b, 5, 3, 16, 12));
    report("stories260k_batched_equals_solo", r);
}

/// A q8_0 KV cache through the CUDA kernels: kv_write's blocks, attention reading them, and the
/// Hadamard rotations around them (the CPU's teacher-forced gaps keep these tokens on top).
#[test]
fn stories260k_first_tokens_q8_0_kv() {
    let opts = ModelOptions { kv_dtypes: DType::Q8_0.into(), ..Default::default() };
    report("stories260k_first_tokens_q8_0_kv", first_tokens(&opts));
}

/// An fp8 KV cache through the CUDA kernels: e4m3 codes and head scales written by kv_write,
/// read by attention's prompt and decode kernels.
#[test]
fn stories260k_first_tokens_fp8_kv() {
    let opts = ModelOptions { kv_dtypes: DType::F8E4M3.into(), ..Default::default() };
    report("stories260k_first_tokens_fp8_kv", first_tokens(&opts));
}
