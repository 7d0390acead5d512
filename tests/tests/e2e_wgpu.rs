//! Real models end to end on WebGPU: the exact reference tokens, with native f16 allowed and
//! with the packed f16 path. No adapter or no model file: SKIP with the reason.

use tandem_core::model::ModelOptions;
use tandem_core::DType;
use tandem_tests::e2e::{self, Skip};
use tandem_wgpu::{WgpuBackend, WgpuOptions};

fn backend(allow_f16: bool) -> Result<WgpuBackend, Skip> {
    pollster::block_on(WgpuBackend::new(WgpuOptions {
        allow_f16,
        ..Default::default()
    }))
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
        kv_dtype: DType::F16,
        block_size: 1,
        max_step_tokens: 3,
        ..Default::default()
    };
    report(
        "stories260k_greedy_f16_kv_and_small_blocks",
        backend(false).and_then(|b| e2e::stories_greedy(b, &opts)),
    );
}

#[test]
fn smollm2_chat_f16() {
    report(
        "smollm2_chat_f16",
        backend(true).and_then(|b| e2e::smollm_chat(b, false)),
    );
}

#[test]
fn smollm2_chat_packed() {
    report(
        "smollm2_chat_packed",
        backend(false).and_then(|b| e2e::smollm_chat(b, false)),
    );
}
