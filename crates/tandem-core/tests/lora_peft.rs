//! PEFT adapter files: what tandem reads of them, and the clear refusals of what it cannot
//! apply (a module the base lacks or tandem does not adapt, shapes that do not fit, DoRA and
//! the other variants), on the Qwen3 fixture's real PEFT files with parts changed.

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tandem_core::lora::{Adapter, Target};
use tandem_core::ModelConfig;

fn fixture(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(file)
}

fn qwen3() -> ModelConfig {
    let text = std::fs::read_to_string(fixture("families/qwen3/config.json")).unwrap();
    ModelConfig::from_hf_json(&text).unwrap()
}

fn files() -> (String, Vec<u8>) {
    let dir = fixture("lora/qwen3-r8");
    (
        std::fs::read_to_string(dir.join("adapter_config.json")).unwrap(),
        std::fs::read(dir.join("adapter_model.safetensors")).unwrap(),
    )
}

/// The fixture's tensors with `edit` applied to the (name -> (shape, f32 values)) map.
fn tensors_with(edit: impl FnOnce(&mut HashMap<String, (Vec<usize>, Vec<f32>)>)) -> Vec<u8> {
    let (_, bytes) = files();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut map: HashMap<String, (Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, (t.shape().to_vec(), bytemuck::pod_collect_to_vec(t.data()))))
        .collect();
    edit(&mut map);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        map.into_iter().map(|(n, (s, v))| (n, s, bytemuck::cast_slice(&v).to_vec())).collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn err(config: &str, st: &[u8]) -> String {
    match Adapter::from_peft(config, st, &qwen3()) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn reads_every_module_with_its_rank_and_scale() {
    let (config, st) = files();
    let a = Adapter::from_peft(&config, &st, &qwen3()).unwrap();
    // 2 layers x 7 projections; o_proj at rank 4 (rank_pattern), the rest at 8.
    assert_eq!(a.modules.len(), 14);
    assert_eq!(a.rank(), 8);
    assert_eq!(a.module(0, Target::O).unwrap().rank, 4);
    assert_eq!(a.module(1, Target::Q).unwrap().rank, 8);
    // B carries the scale: alpha 16 / r 8 = 2, and layer 1's o_proj alpha 3 / r 4.
    let raw = SafeTensors::deserialize(&st).unwrap();
    let b =
        |name: &str| -> Vec<f32> { bytemuck::pod_collect_to_vec(raw.tensor(name).unwrap().data()) };
    let p = "base_model.model.model.layers";
    assert_eq!(
        a.module(0, Target::Q).unwrap().b[5],
        b(&format!("{p}.0.self_attn.q_proj.lora_B.weight"))[5] * 2.0
    );
    assert_eq!(
        a.module(1, Target::O).unwrap().b[3],
        b(&format!("{p}.1.self_attn.o_proj.lora_B.weight"))[3] * 0.75
    );
    assert_eq!(
        a.module(0, Target::O).unwrap().b[3],
        b(&format!("{p}.0.self_attn.o_proj.lora_B.weight"))[3] * 4.0
    );
}

#[test]
fn refuses_what_it_cannot_apply() {
    let (config, st) = files();
    let with = |key: &str, value: &str| {
        let mut v: serde_json::Value = serde_json::from_str(&config).unwrap();
        v[key] = serde_json::from_str(value).unwrap();
        v.to_string()
    };
    assert!(err(&with("use_dora", "true"), &st).contains("use_dora"));
    assert!(err(&with("bias", "\"all\""), &st).contains("bias"));
    assert!(err(&with("modules_to_save", "[\"lm_head\"]"), &st).contains("modules_to_save"));
    assert!(err(&with("peft_type", "\"IA3\""), &st).contains("IA3"));
    assert!(err(&with("alpha_pattern", "{\"(\": 2}"), &st).contains("alpha_pattern"));
    assert!(err("{", &st).contains("adapter_config.json"));
    assert!(err(&config, b"not safetensors").contains("adapter_model.safetensors"));

    let p = "base_model.model.model.layers";
    // B with the wrong rows: named by its module.
    let st = tensors_with(|m| {
        let (shape, v) = m.get_mut(&format!("{p}.1.self_attn.k_proj.lora_B.weight")).unwrap();
        shape[0] -= 1;
        v.truncate(shape[0] * shape[1]);
    });
    let e = err(&config, &st);
    assert!(e.contains("model.layers.1.self_attn.k_proj"), "{e}");
    // A layer the base does not have.
    let st = tensors_with(|m| {
        for ab in ["A", "B"] {
            let t = m.remove(&format!("{p}.1.mlp.up_proj.lora_{ab}.weight")).unwrap();
            m.insert(format!("{p}.7.mlp.up_proj.lora_{ab}.weight"), t);
        }
    });
    let e = err(&config, &st);
    assert!(e.contains("model.layers.7.mlp.up_proj") && e.contains("2 layers"), "{e}");
    // A module tandem does not adapt, and an A without its B.
    let st = tensors_with(|m| {
        m.insert("base_model.model.lm_head.lora_A.weight".into(), (vec![8, 64], vec![0.0; 512]));
    });
    assert!(err(&config, &st).contains("lm_head"));
    let st = tensors_with(|m| {
        m.remove(&format!("{p}.0.mlp.down_proj.lora_B.weight"));
    });
    assert!(err(&config, &st).contains("model.layers.0.mlp.down_proj"));
    // Not a finite number.
    let st = tensors_with(|m| {
        m.get_mut(&format!("{p}.0.self_attn.v_proj.lora_A.weight")).unwrap().1[9] = f32::NAN;
    });
    assert!(err(&config, &st).contains("not finite"));
}
