//! A model whose every layer slides (the Mistral fixture, window 16) generates through the
//! scheduler in a KV pool that cannot hold its sequence: blocks behind the window go back to
//! the pool, its used blocks stay within the window's bound, and transformers' greedy tokens
//! still come out. Models with a global layer keep every block.

use tandem_core::loader;
use tandem_core::model::{Model, ModelOptions};
use tandem_core::scheduler::{Event, GenerateParams, Scheduler, SchedulerConfig};
use tandem_core::tokenizer::Tokenizer;
use tandem_cpu::CpuBackend;
use tandem_tests::e2e::{ids, read_json};
use tandem_tests::families::dir;

#[test]
fn mistral_generates_past_a_pool_smaller_than_its_sequence() {
    let dir = dir("mistral");
    let reference = read_json(&dir.join("reference.json"));
    let (prompt, want) = (ids(&reference["prompt"]), ids(&reference["greedy"]));
    let source = loader::open(&dir).expect("open the Mistral fixture");
    let tokenizer = Tokenizer::load(&source.tokenizer).expect("tokenizer");
    let (block_size, kv_blocks, step) = (4, 12, 8);
    let opts = ModelOptions {
        context: 512,
        block_size,
        kv_blocks: Some(kv_blocks),
        max_step_tokens: step,
        ..ModelOptions::default()
    };
    let backend = CpuBackend::fast(2).expect("CPU backend");
    let mut model = Model::load(backend, &source, &opts, &mut |_, _| {}).expect("load");
    let window = model.config.kv_window();
    assert_eq!(window, 16);
    let total = prompt.len() + want.len();
    assert!(total > block_size * kv_blocks, "{total} positions fit the pool");

    let config = SchedulerConfig { max_seqs: 1, max_batched_tokens: step };
    let mut sched =
        Scheduler::<_, _, &Tokenizer>::new(&mut model, &tokenizer, config).expect("scheduler");
    let params = GenerateParams { max_tokens: want.len(), ignore_eos: true, ..Default::default() };
    sched.add(prompt, params).expect("a sliding model takes a request longer than its pool");
    let mut got = vec![];
    while sched.has_work() {
        for (_, event) in pollster::block_on(sched.step()) {
            match event {
                Event::Token { id, .. } => got.push(id),
                Event::Failed(e) => panic!("the request failed: {e}"),
                Event::Finished { .. } => {}
            }
        }
    }
    assert_eq!(got, want, "greedy tokens differ from transformers'");
    // A chunk of `step` rows reads its own positions and the `window - 1` before them.
    let bound = (window - 1 + step).div_ceil(block_size) + 1;
    let stats = sched.stats;
    assert!(stats.peak_blocks_used <= bound, "{} blocks used > {bound}", stats.peak_blocks_used);
    assert_eq!(stats.preemptions, 0);
    // Every block is back (free, or idle in the prefix cache).
    assert_eq!(sched.kv_blocks().free_blocks(), kv_blocks);
    eprintln!(
        "mistral: {total} positions in {kv_blocks} blocks of {block_size}, peak {} used, {} greedy tokens equal",
        stats.peak_blocks_used,
        want.len()
    );
}

#[test]
fn models_with_a_global_layer_keep_every_block() {
    for family in ["gemma2", "gemma3"] {
        let source = loader::open(&dir(family)).expect("open the fixture");
        assert!(source.config.features.sliding_window > 0, "{family} slides somewhere");
        assert_eq!(source.config.kv_window(), 0, "{family}");
    }
}
