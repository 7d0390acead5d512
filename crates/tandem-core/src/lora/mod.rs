//! LoRA adapters: fine-tunes of a base model as low-rank updates of its projections, applied
//! unmerged (`out += B·(A·x)·scale` beside the base matmul, see [`crate::ops::LoraShrink`]), so
//! one copy of the base weights serves many adapters, each row of a step with its own.
//!
//! An [`Adapter`] is what a file holds, checked against the base model's shapes and split to
//! the projections tandem runs: Phi-3's fused `qkv_proj` and `gate_up_proj` become q, k, v and
//! gate, up (the fused B's rows, the same A). The scale is folded into B.

mod gguf;
mod peft;

use crate::config::ModelConfig;
use crate::{Error, Result};

pub use peft::PEFT_FILES;

/// The largest rank an adapter file may have (PEFT's are 4 to 256).
pub const MAX_FILE_RANK: usize = 1024;

/// A projection an adapter may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] =
        [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// The module's name in an HF layer.
    pub fn hf_name(self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        }
    }

    /// (in features k, out features m) of the projection in `c`'s layers.
    pub fn shape(self, c: &ModelConfig) -> (usize, usize) {
        let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        match self {
            Target::Q => (c.dim, q),
            Target::K | Target::V => (c.dim, kv),
            Target::O => (q, c.dim),
            Target::Gate | Target::Up => (c.dim, c.ffn_dim),
            Target::Down => (c.ffn_dim, c.dim),
        }
    }

    /// Index in [`Target::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One projection's update: A [rank, k] and B [m, rank] with the scale folded in, f32.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleLora {
    pub layer: usize,
    pub target: Target,
    pub rank: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// An adapter checked against its base model: every module's shapes are the base's.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter {
    /// Sorted by (layer, target), one entry each.
    pub modules: Vec<ModuleLora>,
    fingerprint: u64,
}

impl Adapter {
    /// A hash of every module and value (never 0): what keys its sequences' cached KV blocks,
    /// so two adapters never share them and the same adapter loaded again finds its own.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The largest rank of its modules.
    pub fn rank(&self) -> usize {
        self.modules.iter().map(|m| m.rank).max().unwrap_or(0)
    }

    /// f32 values it holds (A and B of every module).
    pub fn numel(&self) -> usize {
        self.modules.iter().map(|m| m.a.len() + m.b.len()).sum()
    }

    /// The module of `layer` and `target`, if the adapter changes it.
    pub fn module(&self, layer: usize, target: Target) -> Option<&ModuleLora> {
        self.modules
            .binary_search_by_key(&(layer, target), |m| (m.layer, m.target))
            .ok()
            .map(|i| &self.modules[i])
    }

    /// The same adapter with its effect multiplied by `scale` (llama.cpp's `--lora-scaled`):
    /// B times `scale`.
    pub fn scaled(mut self, scale: f32) -> Result<Adapter> {
        if !scale.is_finite() {
            return Err(Error::InvalidParameter(format!("a LoRA scale of {scale}")));
        }
        for m in &mut self.modules {
            m.b.iter_mut().for_each(|v| *v *= scale);
        }
        let modules = std::mem::take(&mut self.modules);
        // Refinger-printed: a scaled adapter is another adapter to the prefix cache.
        Adapter::checked(modules, None).map_err(Error::BadConfig)
    }

    /// A PEFT adapter directory (`adapter_config.json` and `adapter_model.safetensors`) for a
    /// base model of config `c`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_peft_dir(dir: &std::path::Path, c: &ModelConfig) -> Result<Adapter> {
        let [config, weights] = PEFT_FILES.map(|f| dir.join(f));
        let config_text = std::fs::read_to_string(&config).map_err(|e| Error::io(&config, e))?;
        let bytes = std::fs::read(&weights).map_err(|e| Error::io(&weights, e))?;
        peft::parse(&config_text, &bytes, c)
            .map_err(|e| Error::bad_file(dir, format!("LoRA adapter: {e}")))
    }

    /// An adapter of these modules (in any order) for a base model of config `c`; what the
    /// file readers make, for callers that make adapters themselves (benchmarks).
    pub fn from_modules(modules: Vec<ModuleLora>, c: &ModelConfig) -> Result<Adapter> {
        Adapter::checked(modules, Some(c)).map_err(Error::BadConfig)
    }

    /// llama.cpp's LoRA GGUF (`convert_lora_to_gguf.py`) for a base model of config `c`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_gguf(path: &std::path::Path, c: &ModelConfig) -> Result<Adapter> {
        let file = crate::loader::gguf::GgufFile::open(path)?;
        gguf::parse(&file, c).map_err(|e| Error::bad_file(path, format!("LoRA adapter: {e}")))
    }

    /// A LoRA GGUF from its bytes.
    pub fn from_gguf_bytes(bytes: Vec<u8>, c: &ModelConfig) -> Result<Adapter> {
        let file = crate::loader::gguf::GgufFile::from_bytes("LoRA adapter", bytes)?;
        gguf::parse(&file, c).map_err(|e| Error::BadConfig(format!("LoRA adapter: {e}")))
    }

    /// A PEFT directory or a LoRA GGUF file, by what `path` is.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path, c: &ModelConfig) -> Result<Adapter> {
        match path.is_dir() {
            true => Adapter::from_peft_dir(path, c),
            false => Adapter::from_gguf(path, c),
        }
    }

    /// A PEFT adapter from its two files' contents.
    pub fn from_peft(config_json: &str, safetensors: &[u8], c: &ModelConfig) -> Result<Adapter> {
        peft::parse(config_json, safetensors, c)
            .map_err(|e| Error::BadConfig(format!("LoRA adapter: {e}")))
    }

    /// Checks the modules against `c` (when given; a scaled adapter was checked before) and
    /// sorts them (what every reader ends with).
    fn checked(
        mut modules: Vec<ModuleLora>,
        c: Option<&ModelConfig>,
    ) -> std::result::Result<Self, String> {
        modules.sort_by_key(|m| (m.layer, m.target));
        for w in modules.windows(2) {
            if (w[0].layer, w[0].target) == (w[1].layer, w[1].target) {
                return Err(format!(
                    "layer {} {} is changed twice",
                    w[0].layer,
                    w[0].target.hf_name()
                ));
            }
        }
        for m in &modules {
            let name = format!("model.layers.{}.{}", m.layer, m.target.hf_name());
            if let Some(i) = m.a.iter().chain(&m.b).position(|v| !v.is_finite()) {
                return Err(format!("{name}: a value that is not finite (at {i})"));
            }
            let Some(c) = c else { continue };
            if m.layer >= c.n_layers {
                return Err(format!("{name}: the base model has {} layers", c.n_layers));
            }
            if c.features.moe.is_some()
                && matches!(m.target, Target::Gate | Target::Up | Target::Down)
            {
                return Err(format!("{name}: the base model's MLPs are experts (adapters on experts are not supported)"));
            }
            let (k, mm) = m.target.shape(c);
            if m.rank == 0 || m.rank > MAX_FILE_RANK {
                return Err(format!("{name}: rank {} (1 to {MAX_FILE_RANK})", m.rank));
            }
            if m.a.len() != m.rank * k || m.b.len() != mm * m.rank {
                return Err(format!(
                    "{name}: A has {} values and B {}, the base's [{}, {k}] and [{mm}, {}] at rank {} need {} and {}",
                    m.a.len(),
                    m.b.len(),
                    m.rank,
                    m.rank,
                    m.rank,
                    m.rank * k,
                    mm * m.rank
                ));
            }
        }
        if modules.is_empty() {
            return Err("no LoRA weights (lora_A / lora_B tensors) in the file".into());
        }
        let h = crate::kv::fnv1a(modules.iter().flat_map(|m| {
            let head = ((m.layer as u64) << 32) | ((m.target.index() as u64) << 16) | m.rank as u64;
            std::iter::once(head).chain(m.a.iter().chain(&m.b).map(|v| v.to_bits() as u64))
        }));
        Ok(Adapter { modules, fingerprint: h.max(1) })
    }
}
