//! Matmuls that share an input are a group in the step: the model records q/k/v and gate/up as
//! groups, and the engine refuses a group whose members are not matmuls over one x (at
//! `Step::group` and again in `execute`, before the backend runs anything).

mod common {
    pub mod fake;
}

use common::fake::Fake;
use std::ops::Range;

use tandem_core::model::{Model, ModelOptions, Want};
use tandem_core::ops::{Add, Matmul, Op};
use tandem_core::{Backend, BufId, DType, ModelConfig, Step};
use tandem_tools::synthetic::{self, SyntheticOptions};

const CONFIG: &str = r#"{
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "vocab_size": 50,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 128
}"#;

fn model() -> Model<Fake> {
    let config = ModelConfig::from_hf_json(CONFIG).unwrap();
    let opts = SyntheticOptions { dtype: DType::Q8_0, seed: 1, max_weight_bytes: 1 << 30 };
    let source = synthetic::source("config.json".into(), config, &opts).unwrap();
    Model::load(Fake::default(), &source, &ModelOptions::default(), &mut |_, _| {}).unwrap()
}

fn matmul(op: &Op) -> &Matmul {
    match op {
        Op::Matmul(m) => m,
        other => panic!("a group member is {}", other.name()),
    }
}

/// A prompt step and a decode step: each layer's groups are its q, k, v projections (with
/// their biases) and its gate and up, each group right after the norm that writes its x; the
/// other matmuls (o, down, the head) stand alone.
#[test]
fn the_model_records_qkv_and_gate_up_as_groups() {
    let mut m = model();
    let c = m.config.clone();
    let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let mut seq = m.new_sequence();
    pollster::block_on(m.forward(&mut seq, &[1, 2, 3, 4, 5], Want::argmax())).unwrap();
    pollster::block_on(m.forward(&mut seq, &[6], Want::argmax())).unwrap();
    let steps = &m.backend.steps;
    assert_eq!(steps.len(), 2);
    for (step, n) in steps.iter().zip([5, 1]) {
        assert_eq!(step.groups.len(), 2 * c.n_layers, "two groups a layer");
        for (i, g) in step.groups.iter().enumerate() {
            let members: Vec<&Matmul> = step.ops[g.clone()].iter().map(matmul).collect();
            let rows: Vec<usize> = members.iter().map(|m| m.m).collect();
            if i % 2 == 0 {
                assert_eq!(rows, [q_dim, kv_dim, kv_dim], "q, k and v");
                assert!(members.iter().all(|m| m.bias.is_some()), "qwen2's q/k/v biases");
            } else {
                assert_eq!(rows, [c.ffn_dim, c.ffn_dim], "gate and up");
            }
            assert!(members.iter().all(|m| m.n == n && m.k == c.dim));
            let Op::RmsNorm(norm) = &step.ops[g.start - 1] else { panic!("a norm before") };
            assert_eq!(norm.out, members[0].x);
        }
        let grouped: usize = step.groups.iter().map(|g| g.len()).sum();
        let matmuls = step.ops.iter().filter(|o| matches!(o, Op::Matmul(_))).count();
        assert_eq!(matmuls - grouped, 2 * c.n_layers + 1, "o, down and the head alone");
    }
}

/// A group that is not matmuls over one x is refused where it is recorded (and nothing is
/// pushed), and a step carrying one anyway is refused by `execute` before the backend runs.
#[test]
fn an_invalid_group_is_refused() {
    let mut b = Fake::default();
    let (n, k) = (2, 32);
    let x = b.alloc(DType::F32, n * k).unwrap();
    let y = b.alloc(DType::F32, n * k).unwrap();
    let mut product = |x: BufId, m: usize| {
        let w = b.alloc(DType::Q8_0, m * k).unwrap();
        let out = b.alloc(DType::F32, n * m).unwrap();
        Matmul { x, w, wdtype: DType::Q8_0, bias: None, out, n, k, m, decode_rows: n }
    };
    let (q, kk, other_x) = (product(x, 64), product(x, 32), product(y, 32));
    let refused = |ops: Vec<Matmul>, what: &str| {
        let mut s = Step::default();
        let e = s.group(ops).expect_err(what).to_string();
        assert!(s.ops.is_empty() && s.groups.is_empty(), "{what}: nothing pushed");
        e
    };
    refused(vec![q.clone()], "a group of one");
    let e = refused(vec![q.clone(), other_x.clone()], "another x");
    assert!(e.contains("shared x"), "{e}");
    refused(vec![q.clone(), Matmul { out: x, ..kk.clone() }], "an output that is x");
    refused(vec![q.clone(), Matmul { out: q.out, ..kk.clone() }], "one output twice");
    refused(vec![q.clone(), Matmul { out: q.w, ..kk.clone() }], "an output that is a weight");
    refused(vec![q.clone(), Matmul { n: 1, decode_rows: 1, ..kk.clone() }], "another n");
    refused(vec![q.clone(), Matmul { decode_rows: 1, ..kk.clone() }], "other decode rows");

    let mut good = Step::default();
    good.group([q.clone(), kk.clone()]).unwrap();
    assert_eq!(good.groups.first(), Some(&(0..2)));
    assert_eq!(good.groups.len(), 1);
    b.execute(&good).unwrap();
    assert_eq!(b.steps.len(), 1);
    // Steps whose groups were not recorded through `Step::group`.
    let add = Op::Add(Add { x: y, y: x, len: n * k });
    let ops = vec![Op::Matmul(q.clone()), Op::Matmul(other_x), add, Op::Matmul(kk.clone())];
    // Another x; an add; one member; past the end; overlapping.
    for groups in [&[(0, 2)][..], &[(1, 3)], &[(0, 1)], &[(2, 5)], &[(0, 2), (1, 3)]] {
        let groups: Vec<Range<usize>> = groups.iter().map(|&(a, z)| a..z).collect();
        let s = Step { ops: ops.clone(), groups: groups.clone(), ..Default::default() };
        assert!(b.execute(&s).is_err(), "groups {groups:?}");
    }
    assert_eq!(b.steps.len(), 1, "no refused step ran");
}
