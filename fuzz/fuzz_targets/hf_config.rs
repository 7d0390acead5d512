//! HF config.json (and generation_config.json after a NUL byte) to `ModelConfig`: a config that
//! passes validation gives finite RoPE frequencies and a KV size that does not overflow.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tandem_core::loader::merge_generation_eos_json;
use tandem_core::ModelConfig;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |&b| b == 0);
    let Ok(config) = std::str::from_utf8(parts.next().unwrap_or_default()) else { return };
    let Ok(mut cfg) = ModelConfig::from_hf_json(config) else { return };
    if let Some(gen) = parts.next().and_then(|g| std::str::from_utf8(g).ok()) {
        if merge_generation_eos_json(Path::new("generation_config.json"), gen, &mut cfg).is_ok() {
            assert!(cfg.validate().is_ok(), "merging generation_config.json broke {cfg:?}");
        }
    }
    let freqs = cfg.rope_inv_freq();
    assert_eq!(freqs.len(), cfg.rot_dim() / 2);
    assert!(freqs.iter().all(|f| f.is_finite() && *f > 0.0), "{cfg:?}: {freqs:?}");
    // (head_dim + 4) x 8 bytes a head and layer bound every KV type's (f32: 4 a value; fp8: 1
    // a value and 4 a head): if they fit, every type's do.
    cfg.n_layers
        .checked_mul(cfg.n_kv_heads)
        .and_then(|n| n.checked_mul(cfg.head_dim.checked_add(4)?))
        .and_then(|n| n.checked_mul(2 * 4))
        .expect("KV bytes per token fit usize");
    for dtype in tandem_core::quant::kv::KV_DTYPES {
        let _ = cfg.kv_bytes_per_token(dtype);
    }
});
