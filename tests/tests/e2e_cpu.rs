//! Real models end to end on both CPU modes.

use tandem_core::model::ModelOptions;
use tandem_core::{DType, KvDtypes};
use tandem_cpu::CpuBackend;
use tandem_tests::e2e::{self, Skip};

fn report(name: &str, r: Result<(), Skip>) {
    if let Err(Skip(why)) = r {
        eprintln!("SKIP {name}: {why}");
    }
}

#[test]
fn stories260k_greedy_reference() {
    report(
        "stories260k_greedy_reference",
        e2e::stories_greedy(CpuBackend::reference(), &ModelOptions::default()),
    );
}

#[test]
fn stories260k_greedy_fast() {
    report(
        "stories260k_greedy_fast",
        e2e::stories_greedy(CpuBackend::fast(2).unwrap(), &ModelOptions::default()),
    );
}

#[test]
fn stories260k_greedy_f16_kv_and_small_blocks() {
    // A 1-token block size and chunked prefill exercise the block tables and chunk boundaries.
    let opts = ModelOptions {
        kv_dtypes: DType::F16.into(),
        block_size: 1,
        max_step_tokens: 3,
        ..Default::default()
    };
    report(
        "stories260k_greedy_f16_kv_and_small_blocks",
        e2e::stories_greedy(CpuBackend::fast(2).unwrap(), &opts),
    );
}

/// The reference's 200 greedy tokens read back through a q8_0 KV cache (teacher-forced, as
/// llama.cpp's perplexity reads a text): each within half a logit of the row's top, and the top
/// itself on all but a few rows. Measured: largest gap 0.19, 1 row of 200 not the top (f32
/// and f16 caches: 0 and 0). Free-running, one near-tie tipped the other way sends a greedy
/// decode elsewhere for good; quantization noise moves logits by tenths, not whole answers.
#[test]
fn stories260k_reference_tokens_through_a_q8_0_kv_cache() {
    let opts = ModelOptions { kv_dtypes: DType::Q8_0.into(), ..Default::default() };
    match e2e::stories_forced_gaps(CpuBackend::fast(2).unwrap(), &opts) {
        Ok((gap, missed)) => assert!(gap <= 0.5 && missed <= 5, "largest gap {gap}, {missed} rows"),
        Err(Skip(why)) => {
            eprintln!("SKIP stories260k_reference_tokens_through_a_q8_0_kv_cache: {why}")
        }
    }
    let f16 = ModelOptions { kv_dtypes: DType::F16.into(), ..Default::default() };
    if let Ok(r) = e2e::stories_forced_gaps(CpuBackend::fast(2).unwrap(), &f16) {
        assert_eq!(r, (0.0, 0), "an f16 cache keeps every reference token on top");
    }
    // f16 keys, q8_0 values: the same bounds (measured: 0 and 0).
    let kv_dtypes = KvDtypes { k: DType::F16, v: DType::Q8_0 };
    let mixed = ModelOptions { kv_dtypes, ..Default::default() };
    if let Ok((gap, missed)) = e2e::stories_forced_gaps(CpuBackend::fast(2).unwrap(), &mixed) {
        eprintln!("f16/q8_0: largest gap {gap}, {missed} rows");
        assert!(gap <= 0.5 && missed <= 5, "f16/q8_0: largest gap {gap}, {missed} rows");
    }
}

/// The reference's 200 greedy tokens read back through an fp8 cache (e4m3, an f32 scale a
/// head), teacher-forced as above. Three mantissa bits on stories260K's 8-value heads cost
/// more than q8_0's eight: measured, largest gap 0.49 and 14 rows of 200 not the top (e2e_wgpu
/// holds the same bounds and pins WebGPU to these figures).
#[test]
fn stories260k_reference_tokens_through_an_fp8_kv_cache() {
    let opts = ModelOptions { kv_dtypes: DType::F8E4M3.into(), ..Default::default() };
    match e2e::stories_forced_gaps(CpuBackend::fast(2).unwrap(), &opts) {
        Ok((gap, missed)) => {
            assert!(gap <= 0.75 && missed <= 20, "largest gap {gap}, {missed} rows")
        }
        Err(Skip(why)) => {
            eprintln!("SKIP stories260k_reference_tokens_through_an_fp8_kv_cache: {why}")
        }
    }
}

/// SmolLM2's chat answer, token for token, with an fp8 KV cache.
#[test]
fn smollm2_chat_fp8_kv() {
    let opts = ModelOptions { kv_dtypes: DType::F8E4M3.into(), ..Default::default() };
    report("smollm2_chat_fp8_kv", e2e::smollm_chat_opts(CpuBackend::fast(2).unwrap(), false, opts));
}

/// SmolLM2's chat answer, token for token, with f16 keys and q4_0 values.
#[test]
fn smollm2_chat_f16_keys_q4_0_values() {
    let kv_dtypes = KvDtypes { k: DType::F16, v: DType::Q4_0 };
    let opts = ModelOptions { kv_dtypes, ..Default::default() };
    report(
        "smollm2_chat_f16_keys_q4_0_values",
        e2e::smollm_chat_opts(CpuBackend::fast(2).unwrap(), false, opts),
    );
}

/// SmolLM2's chat answer, token for token, with a q8_0 KV cache (HF computes in f32).
#[test]
fn smollm2_chat_q8_0_kv() {
    let opts = ModelOptions { kv_dtypes: DType::Q8_0.into(), ..Default::default() };
    report(
        "smollm2_chat_q8_0_kv",
        e2e::smollm_chat_opts(CpuBackend::fast(2).unwrap(), false, opts),
    );
}

#[test]
fn smollm2_chat_reference() {
    report("smollm2_chat_reference", e2e::smollm_chat(CpuBackend::reference(), true));
}

#[test]
fn smollm2_chat_fast() {
    report("smollm2_chat_fast", e2e::smollm_chat(CpuBackend::fast(2).unwrap(), false));
}

/// Q8_0 weights (the file's Q4_1 converted at load): on a CPU with AVX-512 VNNI their prompt
/// rows compute in the 16-bit activation class (prefill_vnni.rs), which must keep the
/// reference's answer (a near-tie decides its first token). Not its logits: converting the
/// weights moves them ~0.3 from HF's, with f32 and 16-bit activations alike (25.6249 and
/// 25.6259 against HF's 25.3254 for the top one, measured).
#[test]
fn smollm2_chat_fast_q8() {
    report(
        "smollm2_chat_fast_q8",
        e2e::smollm_chat_as(CpuBackend::fast(2).unwrap(), false, Some(DType::Q8_0)),
    );
}
