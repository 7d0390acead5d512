//! A pool's block accounting has one owner at a time: the model, or the scheduler running on
//! it (its KV manager), which takes it when made and gives it back when it ends (dropped or
//! `into_model`), with the prefix cache; a draft model's moves in and out with
//! `set_speculation`. Runs on a backend with no kernels (every token read back is 0).

mod common {
    pub mod fake;
}

use common::fake::Fake;

use tandem_core::model::{Model, ModelOptions, Want};
use tandem_core::scheduler::{Event, GenerateParams, Scheduler, SchedulerConfig, Speculation};
use tandem_core::tokenizer::Tokenizer;
use tandem_core::{DType, ModelConfig};
use tandem_tools::synthetic::{self, SyntheticOptions};

const CONFIG: &str = r#"{
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 32,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "intermediate_size": 48,
    "num_hidden_layers": 1,
    "vocab_size": 40,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 128
}"#;
const VOCAB: usize = 40;
const BLOCK: usize = 4;

fn model() -> Model<Fake> {
    let config = ModelConfig::from_hf_json(CONFIG).unwrap();
    let opts = SyntheticOptions { dtype: DType::F32, seed: 1, max_weight_bytes: 1 << 30 };
    let source = synthetic::source("config.json".into(), config, &opts).unwrap();
    let opts = ModelOptions { block_size: BLOCK, kv_blocks: Some(16), ..Default::default() };
    Model::load(Fake::default(), &source, &opts, &mut |_, _| {}).unwrap()
}

/// Runs one greedy request of `prompt` and 3 tokens to its end; the tokens it got.
fn run<M: std::borrow::BorrowMut<Model<Fake>>>(
    sched: &mut Scheduler<Fake, M, &Tokenizer>,
    prompt: &[u32],
) -> usize {
    let params = GenerateParams { max_tokens: 3, ..Default::default() };
    sched.add(prompt.to_vec(), params).unwrap();
    let mut tokens = 0;
    while sched.has_work() {
        for (_, ev) in pollster::block_on(sched.step()) {
            match ev {
                Event::Token { .. } => tokens += 1,
                Event::Failed(e) => panic!("failed: {e}"),
                Event::Finished { .. } => {}
            }
        }
    }
    tokens
}

#[test]
fn a_borrowing_scheduler_holds_the_blocks_and_gives_them_back_when_dropped() {
    let tok = Tokenizer::placeholder(VOCAB).unwrap();
    let mut m = model();
    let total = m.kv_blocks().unwrap().total_blocks();
    let prompt: Vec<u32> = (1..=10).collect();
    {
        let mut sched = Scheduler::new(&mut m, &tok, SchedulerConfig::default()).unwrap();
        assert!(sched.model().kv_blocks().is_err(), "the model has none while it runs");
        assert_eq!(sched.kv_blocks().total_blocks(), total);
        assert_eq!(run(&mut sched, &prompt), 3);
        assert_eq!(sched.kv_blocks().free_blocks(), total);
        assert!(sched.kv_blocks().cached_blocks() >= 2, "the prompt's full blocks are cached");
    }
    let blocks = m.kv_blocks().expect("back in the model");
    assert_eq!(blocks.free_blocks(), total);
    let cached = blocks.cached_blocks();
    assert!(cached >= 2);

    // The next scheduler finds the prefix cache the first one left.
    let mut sched = Scheduler::new(&mut m, &tok, SchedulerConfig::default()).unwrap();
    run(&mut sched, &prompt);
    assert_eq!(sched.stats.cached_prompt_tokens, 8, "two blocks of 4 from the cache");
    drop(sched);

    // And the model's own forward has its blocks again.
    let mut seq = m.new_sequence();
    pollster::block_on(m.forward(&mut seq, &prompt, Want::argmax())).unwrap();
    assert_eq!(m.kv_blocks().unwrap().free_blocks(), total - 3);
    m.release(&mut seq);
    assert_eq!(m.kv_blocks().unwrap().free_blocks(), total);
}

#[test]
fn into_model_and_set_speculation_hand_the_blocks_back() {
    let tok = Tokenizer::placeholder(VOCAB).unwrap();
    let mut sched = Scheduler::new(model(), &tok, SchedulerConfig::default()).unwrap();
    let draft = model();
    let draft_total = draft.kv_blocks().unwrap().total_blocks();
    assert!(sched.draft_kv_blocks().is_none());
    sched.set_speculation(Some(Speculation::draft_model(draft, 2))).unwrap();
    assert_eq!(sched.draft_kv_blocks().map(|b| b.total_blocks()), Some(draft_total));
    assert!(sched.speculation().and_then(|s| s.draft()).unwrap().kv_blocks().is_err());
    assert_eq!(run(&mut sched, &(1..=10).collect::<Vec<u32>>()), 3);

    let spec = sched.set_speculation(None).unwrap().expect("the draft model back");
    assert!(sched.draft_kv_blocks().is_none());
    let blocks = spec.draft().unwrap().kv_blocks().expect("back in the draft model");
    assert_eq!(blocks.free_blocks(), draft_total);

    let m = sched.into_model().unwrap();
    let blocks = m.kv_blocks().expect("back in the model");
    assert_eq!(blocks.free_blocks(), blocks.total_blocks());
}
