//! Real models end to end on WebGPU: the exact reference tokens, with native f16 allowed and
//! with the packed f16 path. No adapter or no model file: SKIP with the reason.

use tandem_core::model::ModelOptions;
use tandem_core::DType;
use tandem_tests::e2e::{self, Skip};
use tandem_wgpu::{WgpuBackend, WgpuOptions};

fn backend(allow_f16: bool) -> Result<WgpuBackend, Skip> {
    pollster::block_on(WgpuBackend::new(WgpuOptions { allow_f16, ..Default::default() }))
        .map_err(|e| Skip(e.to_string()))
}

fn report(name: &str, r: Result<(), Skip>) {
    if let Err(Skip(why)) = r {
        eprintln!("SKIP {name}: {why}");
    }
}

#[test]
fn stories260k_greedy_f16() {
    report(
        "stories260k_greedy_f16",
        backend(true).and_then(|b| e2e::stories_greedy(b, &ModelOptions::default())),
    );
}

#[test]
fn stories260k_greedy_packed() {
    report(
        "stories260k_greedy_packed",
        backend(false).and_then(|b| e2e::stories_greedy(b, &ModelOptions::default())),
    );
}

#[test]
fn stories260k_greedy_f16_kv_and_small_blocks() {
    // A 1-token block size and chunked prefill exercise the block tables and chunk boundaries;
    // a 300-token context has decode steps with several flash-decoding partitions.
    let opts = ModelOptions {
        kv_dtypes: DType::F16.into(),
        block_size: 1,
        max_step_tokens: 3,
        ..Default::default()
    };
    report(
        "stories260k_greedy_f16_kv_and_small_blocks",
        backend(false).and_then(|b| e2e::stories_greedy(b, &opts)),
    );
}

/// The reference's 200 greedy tokens read back teacher-forced through a q8_0 KV cache (K, V and
/// the queries rotated by the hadamard kernel): the CPU test's bounds, each row within half a
/// logit of its top and the top itself on all but a few; an f16 cache keeps every one on top.
#[test]
fn stories260k_reference_tokens_through_a_q8_0_kv_cache() {
    let opts = ModelOptions { kv_dtypes: DType::Q8_0.into(), ..Default::default() };
    match backend(false).and_then(|b| e2e::stories_forced_gaps(b, &opts)) {
        Ok((gap, missed)) => assert!(gap <= 0.5 && missed <= 5, "largest gap {gap}, {missed} rows"),
        Err(Skip(why)) => {
            eprintln!("SKIP stories260k_reference_tokens_through_a_q8_0_kv_cache: {why}")
        }
    }
    let f16 = ModelOptions { kv_dtypes: DType::F16.into(), ..Default::default() };
    if let Ok(r) = backend(false).and_then(|b| e2e::stories_forced_gaps(b, &f16)) {
        assert_eq!(r, (0.0, 0), "an f16 cache keeps every reference token on top");
    }
}

/// The same read-back through an fp8 cache (e4m3 codes, an f32 scale per head, written and
/// read by the WGSL kernels). Three mantissa bits on stories260K's 8-value heads cost more than
/// q8_0: measured, largest gap 0.49 and 14 rows of 200 not the top, on the CPU and here alike;
/// the bounds hold that, and the CPU's own figures pin the kernels to its arithmetic.
#[test]
fn stories260k_reference_tokens_through_an_fp8_kv_cache() {
    let opts = ModelOptions { kv_dtypes: DType::F8E4M3.into(), ..Default::default() };
    match backend(false).and_then(|b| e2e::stories_forced_gaps(b, &opts)) {
        Ok((gap, missed)) => {
            assert!(gap <= 0.75 && missed <= 20, "largest gap {gap}, {missed} rows");
            let cpu = tandem_cpu::CpuBackend::fast(1).expect("cpu backend");
            let (cpu_gap, cpu_missed) = e2e::stories_forced_gaps(cpu, &opts)
                .unwrap_or_else(|Skip(why)| panic!("the model ran on wgpu, not on the CPU: {why}"));
            assert!(
                (gap - cpu_gap).abs() <= 0.01 && missed.abs_diff(cpu_missed) <= 1,
                "wgpu: largest gap {gap}, {missed} rows; cpu: {cpu_gap}, {cpu_missed}"
            );
        }
        Err(Skip(why)) => {
            eprintln!("SKIP stories260k_reference_tokens_through_an_fp8_kv_cache: {why}")
        }
    }
}

#[test]
fn smollm2_chat_f16() {
    report("smollm2_chat_f16", backend(true).and_then(|b| e2e::smollm_chat(b, false)));
}

#[test]
fn smollm2_chat_packed() {
    report("smollm2_chat_packed", backend(false).and_then(|b| e2e::smollm_chat(b, false)));
}

/// The target: after the prompt, a greedy token costs one queue submission (the step,
/// with the token's copy to mappable memory inside it) and 4 bytes of readback.
#[test]
fn stories260k_decode_is_one_submission_and_4_bytes_per_token() {
    use tandem_core::loader;
    use tandem_core::model::{Output, Want};
    let run = || -> Result<(), Skip> {
        let dir = e2e::stories_dir()?;
        let reference = e2e::read_json(&dir.join("reference_greedy.json"));
        let source = loader::open(&dir).expect("open stories260K");
        let mut model = e2e::load(backend(false)?, &source, &ModelOptions::default());
        let expected = e2e::ids(&reference["greedy_token_ids"]);
        let mut seq = model.new_sequence();
        let prompt = e2e::ids(&reference["input_ids"]);
        let next = |model: &mut tandem_core::model::Model<WgpuBackend>, seq: &mut _, t: &[u32]| {
            match pollster::block_on(model.forward(seq, t, Want::argmax())).expect("forward") {
                Output::Token(t) => t,
                Output::Logits(_) => unreachable!("asked for a token"),
            }
        };
        let mut token = next(&mut model, &mut seq, &prompt);
        assert_eq!(token, expected[0]);
        for &want in &expected[1..32] {
            let before = model.backend.stats();
            token = next(&mut model, &mut seq, &[token]);
            let after = model.backend.stats();
            assert_eq!(token, want);
            assert_eq!(after.submissions - before.submissions, 1, "submissions per token");
            assert_eq!(after.readback_bytes - before.readback_bytes, 4, "readback bytes per token");
        }
        Ok(())
    };
    report("stories260k_decode_is_one_submission_and_4_bytes_per_token", run());
}
