//! Synthetic weights: random tensors with the shapes of a real model (an HF `config.json`),
//! generated on demand, for speed measurements where real weights cannot be brought.
//!
//! Every tensor the model needs is listed in [`TensorStore::infos`] and generated when it is
//! loaded, in the type asked, from a seed: the same seed gives the same bytes, whatever order
//! tensors are loaded in (each tensor's generator is seeded by the seed and its name). The
//! engine loads one tensor at a time and drops it after upload, so generating never holds
//! more than the largest tensor on the host.
//!
//! Values have the scale of a trained checkpoint, so activations stay finite through deep
//! stacks and greedy argmax moves from token to token: matrices (and biases) about
//! N(0, 0.02), norm weights 1 + N(0, 0.02).
//!
//! Speed: an 8B model at q4 is ~4.5 GB, so nothing is quantized. Float matrices (f32, f16,
//! bf16) pick each element from a table of 65536 normal samples (16 random bits an element).
//! Quantized matrices are written as blocks directly: random quant bytes (uniform levels) and
//! one of 256 block scales near the value that gives a standard deviation of 0.02 (Q4_1's
//! minimum centres the block on zero). Either way the tensor has exactly the bytes and layout
//! of the same model loaded from a real checkpoint in that type, and every kernel does the
//! same work whatever the values (no kernel branches on them), so speeds measured on
//! synthetic weights are the speeds of the real model. Only the outputs are meaningless.

use half::{bf16, f16};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tandem_core::config::ModelConfig;
use tandem_core::dtype::{DType, QBLOCK};
use tandem_core::loader::names::model_tensors;
use tandem_core::loader::{
    HostTensor, LoadAs, ModelSource, TensorInfo, TensorStore, TokenizerSource,
};
use tandem_core::sampling::Rng;
use tandem_core::{Error, Result};

/// Standard deviation of generated matrix elements (a typical trained init scale).
const STD: f32 = 0.02;

/// `ModelSource::format` of synthetic models.
pub const FORMAT: &str = "synthetic";

/// What [`open`] and [`source`] generate.
#[derive(Debug, Clone)]
pub struct SyntheticOptions {
    /// The type weight matrices load as under [`LoadAs::Native`] (vectors are f32).
    pub dtype: DType,
    pub seed: u64,
    /// Refuse a config whose weights would take more bytes than this (the memory they must
    /// fit in), before generating anything.
    pub max_weight_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Matrix,
    /// RMSNorm weights: around 1.
    Norm,
    /// q/k/v biases: around 0.
    Bias,
}

pub struct SyntheticStore {
    dtype: DType,
    seed: u64,
    infos: Vec<TensorInfo>,
    /// name -> (index in `infos`, kind)
    kinds: HashMap<String, (usize, Kind)>,
    total_bytes: u64,
    /// N(0, STD) samples; element values are drawn from here by 16 random bits.
    normal: Vec<f32>,
}

impl SyntheticStore {
    /// The tensors `config` needs, with matrices of `dtype`. Errors if `dtype` is not a weight
    /// type or a tensor's size does not fit this platform's address space.
    pub fn new(config: &ModelConfig, dtype: DType, seed: u64) -> Result<SyntheticStore> {
        if dtype == DType::U32 {
            return Err(Error::InvalidParameter(
                "synthetic weights must be a float or quantized type, not u32".into(),
            ));
        }
        if !tandem_core::quant::can_encode(dtype) {
            return Err(Error::InvalidParameter(format!(
                "synthetic weights in {dtype} are not implemented yet"
            )));
        }
        let mut store = SyntheticStore {
            dtype,
            seed,
            infos: Vec::new(),
            kinds: HashMap::new(),
            total_bytes: 0,
            normal: normal_table(seed),
        };
        for (name, shape, kind) in tensor_list(config) {
            store.add(name, shape, kind)?;
        }
        Ok(store)
    }

    fn add(&mut self, name: String, shape: Vec<usize>, kind: Kind) -> Result<()> {
        let too_big = || {
            Error::InvalidParameter(format!(
                "synthetic tensor '{name}' {shape:?} is too large for this platform"
            ))
        };
        let numel =
            shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).ok_or_else(too_big)?;
        let numel = usize::try_from(numel)
            .ok()
            .filter(|n| n.checked_mul(4).is_some())
            .ok_or_else(too_big)?;
        let dtype = if kind == Kind::Matrix { self.matrix_dtype(&shape) } else { DType::F32 };
        let bytes = dtype.storage_bytes(numel);
        self.total_bytes += bytes as u64;
        self.kinds.insert(name.clone(), (self.infos.len(), kind));
        self.infos.push(TensorInfo {
            file_name: name.clone(),
            name,
            shape,
            file_dtype: dtype.name().to_uppercase(),
            bytes,
        });
        Ok(())
    }

    /// The type a matrix of `shape` is made in under [`LoadAs::Native`]: the store's type,
    /// with K-quants falling back where rows are not whole blocks, as loading real weights
    /// with that type asked does ([`tandem_core::quant::matrix_dtype`]).
    fn matrix_dtype(&self, shape: &[usize]) -> DType {
        tandem_core::quant::matrix_dtype(self.dtype, shape.last().copied().unwrap_or(1))
    }

    /// Bytes of every tensor in its native type: what the model's weights will occupy.
    pub fn weight_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The element table as `dtype` (f32, f16 or bf16) bit patterns.
    fn table_bits(&self, dtype: DType) -> Vec<u32> {
        match dtype {
            DType::F16 => self.normal.iter().map(|&x| f16::from_f32(x).to_bits() as u32).collect(),
            DType::BF16 => {
                self.normal.iter().map(|&x| bf16::from_f32(x).to_bits() as u32).collect()
            }
            _ => self.normal.iter().map(|&x| x.to_bits()).collect(),
        }
    }

    /// Values for small tensors (vectors), generated as f32 and encoded as asked.
    fn values(&self, rng: &mut Rng, numel: usize, kind: Kind) -> Vec<f32> {
        let offset = if kind == Kind::Norm { 1.0 } else { 0.0 };
        (0..numel).map(|_| offset + self.normal[(rng.next_u64() >> 48) as usize]).collect()
    }
}

impl TensorStore for SyntheticStore {
    fn infos(&self) -> &[TensorInfo] {
        &self.infos
    }

    fn load(&self, name: &str, as_: LoadAs) -> Result<HostTensor> {
        let &(i, kind) =
            self.kinds.get(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let info = &self.infos[i];
        let dtype = match as_ {
            LoadAs::F32 => DType::F32,
            LoadAs::Native if kind == Kind::Matrix => self.matrix_dtype(&info.shape),
            LoadAs::Native => DType::F32,
            LoadAs::Exactly(DType::U32) => {
                return Err(Error::InvalidParameter(format!("cannot load '{name}' as u32")))
            }
            LoadAs::Exactly(d) => match tandem_core::quant::encode_refusal(d, &info.shape) {
                Some(why) => {
                    return Err(Error::InvalidParameter(format!("cannot make '{name}' {d}: {why}")))
                }
                None => d,
            },
        };
        let numel: usize = info.shape.iter().product();
        let mut rng = Rng::new(tensor_seed(self.seed, name));
        let bytes = match kind {
            Kind::Matrix if dtype.block_layout().is_some() => gguf_blocks(&mut rng, dtype, numel),
            Kind::Matrix if dtype.is_quantized() => quant_blocks(&mut rng, dtype, numel),
            Kind::Matrix => from_table(&mut rng, &self.table_bits(dtype), dtype, numel),
            _ => tandem_core::quant::encode(&self.values(&mut rng, numel, kind), dtype),
        };
        Ok(HostTensor { dtype, shape: info.shape.clone(), bytes })
    }
}

/// Every tensor a model of `c` loads, by HF name, in load order, with its kind.
fn tensor_list(c: &ModelConfig) -> Vec<(String, Vec<usize>, Kind)> {
    let kind = |name: &str, shape: &[usize]| match shape.len() {
        2 => Kind::Matrix,
        _ if name.ends_with(".bias") => Kind::Bias,
        _ => Kind::Norm,
    };
    model_tensors(c)
        .into_iter()
        .map(|t| {
            let k = kind(&t.name, &t.shape);
            (t.name, t.shape, k)
        })
        .collect()
}

/// A generator seed per tensor, so each tensor's bytes depend only on the seed and its name.
fn tensor_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, then one splitmix64 round to spread it.
    let h = name
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    Rng::new(seed ^ h).next_u64()
}

/// 65536 samples of N(0, STD) (Box-Muller over the seeded generator).
fn normal_table(seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed ^ 0x6e6f_726d_616c); // "normal": apart from the tensor streams
    let mut out = Vec::with_capacity(1 << 16);
    while out.len() < 1 << 16 {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt() * STD as f64;
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out
}

/// `numel` elements of a float `dtype`, each a table entry (its bit pattern, 2 or 4 bytes)
/// picked by 16 random bits: four elements per random u64, written a word at a time.
fn from_table(rng: &mut Rng, table: &[u32], dtype: DType, numel: usize) -> Vec<u8> {
    let mut out = vec![0u8; dtype.storage_bytes(numel)];
    let elem = if dtype == DType::F32 { 4 } else { 2 };
    let pick = |r: u64, j: usize| table[((r >> (16 * j)) & 0xffff) as usize] as u64;
    let body = &mut out[..numel * elem];
    let mut groups = body.chunks_exact_mut(4 * elem);
    for g in &mut groups {
        let r = rng.next_u64();
        if elem == 2 {
            let v = pick(r, 0) | pick(r, 1) << 16 | pick(r, 2) << 32 | pick(r, 3) << 48;
            g.copy_from_slice(&v.to_le_bytes());
        } else {
            g[..8].copy_from_slice(&(pick(r, 0) | pick(r, 1) << 32).to_le_bytes());
            g[8..].copy_from_slice(&(pick(r, 2) | pick(r, 3) << 32).to_le_bytes());
        }
    }
    let r = rng.next_u64();
    for (j, o) in groups.into_remainder().chunks_exact_mut(elem).enumerate() {
        o.copy_from_slice(&pick(r, j).to_le_bytes()[..elem]);
    }
    out
}

/// A quantized tensor of `numel` elements in tandem's layout, written block by block without
/// quantizing: random quant bytes (every level equally likely) and per-block scales from a
/// table of 256 around the one that gives a standard deviation of STD.
fn quant_blocks(rng: &mut Rng, dtype: DType, numel: usize) -> Vec<u8> {
    let l = dtype.quant_layout(numel).expect("a quantized type");
    let mut out = vec![0u8; l.total_bytes];
    let qs_len = if dtype == DType::Q8_0 { l.blocks * QBLOCK } else { l.blocks * QBLOCK / 2 };
    fill_random(rng, &mut out[..qs_len]);
    // Standard deviation of the quant levels: uniform i8 for Q8_0, uniform 0..=15 for Q4.
    let level_std = if dtype == DType::Q8_0 { 73.9 } else { 4.61 };
    let d_base = STD / level_std;
    // Scales from 0.75x to 1.25x the base: blocks differ, as in real checkpoints.
    let scales: Vec<f32> = (0..256).map(|i| d_base * (0.75 + 0.5 * i as f32 / 255.0)).collect();
    let d_bits: Vec<[u8; 2]> = scales.iter().map(|&d| f16::from_f32(d).to_le_bytes()).collect();
    // Q4_1: x = d q + m with q averaging 7.5, so m = -7.5 d centres the block on zero.
    let m_bits: Vec<[u8; 2]> =
        scales.iter().map(|&d| f16::from_f32(-7.5 * d).to_le_bytes()).collect();
    let mut r = 0u64;
    for b in 0..l.blocks {
        if b % 8 == 0 {
            r = rng.next_u64();
        }
        let i = ((r >> (8 * (b % 8))) & 0xff) as usize;
        out[l.d_offset + 2 * b..l.d_offset + 2 * b + 2].copy_from_slice(&d_bits[i]);
        if dtype == DType::Q4_1 {
            out[l.m_offset + 2 * b..l.m_offset + 2 * b + 2].copy_from_slice(&m_bits[i]);
        }
    }
    out
}

/// A tensor of a GGUF block type, written without quantizing: random bytes (levels and
/// sub-block scales), then each block's f16 super-scales set so that the block's values have
/// a root mean square of STD (Q4_K's random mins shift blocks off zero: the RMS bounds them). Every field is linear in the super-scales together, so the
/// block is decoded once with them at 1 and all of them are scaled by the same factor.
fn gguf_blocks(rng: &mut Rng, dtype: DType, numel: usize) -> Vec<u8> {
    let l = dtype.block_layout().expect("a GGUF block type");
    let mut out = vec![0u8; dtype.storage_bytes(numel)];
    fill_random(rng, &mut out);
    let fields = tandem_core::quant::blocks::f16_fields(dtype);
    let one = f16::from_f32(1.0).to_le_bytes();
    let mut tmp = [0f32; 256];
    for blk in out.chunks_exact_mut(l.stride) {
        // Padding is zero, as a loaded file's is.
        blk[l.pad_at..l.pad_at + l.stride - l.ggml_bytes].fill(0);
        for &f in fields {
            blk[f..f + 2].copy_from_slice(&one);
        }
        tandem_core::quant::BlockView::new(dtype, l.elems, blk).decode_block(0, &mut tmp);
        let rms = (tmp[..l.elems].iter().map(|v| v * v).sum::<f32>() / l.elems as f32).sqrt();
        let scale = f16::from_f32(if rms > 0.0 { STD / rms } else { 0.0 }).to_le_bytes();
        for &f in fields {
            blk[f..f + 2].copy_from_slice(&scale);
        }
    }
    out
}

fn fill_random(rng: &mut Rng, out: &mut [u8]) {
    let mut chunks = out.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let rest = chunks.into_remainder();
    let r = rng.next_u64().to_le_bytes();
    rest.copy_from_slice(&r[..rest.len()]);
}

/// A model of `config`'s shape with synthetic weights. Refuses, before generating anything,
/// a config whose weights exceed `opts.max_weight_bytes`. `path` names it (the config file).
pub fn source(path: PathBuf, config: ModelConfig, opts: &SyntheticOptions) -> Result<ModelSource> {
    let store = SyntheticStore::new(&config, opts.dtype, opts.seed)?;
    let need = store.weight_bytes();
    if need > opts.max_weight_bytes {
        let c = &config;
        return Err(Error::InvalidParameter(format!(
            "synthetic weights for {} ({} layers, dim {}, ffn {}, vocab {}) need {:.2} GiB at {}, more than the {:.2} GiB available; \
             pick a smaller config or dtype",
            path.display(),
            c.n_layers,
            c.dim,
            c.ffn_dim,
            c.vocab_size,
            need as f64 / GIB,
            opts.dtype,
            opts.max_weight_bytes as f64 / GIB,
        )));
    }
    Ok(ModelSource {
        path,
        format: FORMAT.into(),
        config,
        tensors: Box::new(store),
        tokenizer: TokenizerSource::None("synthetic weights come with no tokenizer".into()),
    })
}

const GIB: f64 = (1u64 << 30) as f64;

/// [`source`] for an HF `config.json` (or a directory holding one).
pub fn open(path: &Path, opts: &SyntheticOptions) -> Result<ModelSource> {
    let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
    let config = ModelConfig::from_hf_json(&text).map_err(|e| match e {
        Error::BadConfig(m) => Error::BadConfig(format!(
            "{}: {}",
            file.display(),
            m.strip_prefix("config.json: ").unwrap_or(&m)
        )),
        other => other,
    })?;
    source(file, config, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tied: bool, bias: bool) -> ModelConfig {
        let json = format!(
            r#"{{"architectures": ["{}"], "hidden_size": 64, "intermediate_size": 100, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50, "max_position_embeddings": 128,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": {tied}}}"#,
            if bias { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }
        );
        ModelConfig::from_hf_json(&json).unwrap()
    }

    #[test]
    fn lists_every_tensor_with_its_shape_and_type() {
        let s = SyntheticStore::new(&config(false, true), DType::Q4_1, 1).unwrap();
        let find =
            |n: &str| s.infos().iter().find(|i| i.name == n).unwrap_or_else(|| panic!("{n}"));
        assert_eq!(s.infos().len(), 1 + 2 * 12 + 2);
        assert_eq!(find("model.layers.1.self_attn.k_proj.weight").shape, [32, 64]);
        assert_eq!(find("model.layers.1.mlp.down_proj.weight").shape, [64, 100]);
        assert_eq!(find("model.layers.0.self_attn.v_proj.bias").shape, [32]);
        assert_eq!(find("lm_head.weight").file_dtype, "Q4_1");
        assert_eq!(find("model.norm.weight").file_dtype, "F32");
        let total: usize = s.infos().iter().map(|i| i.bytes).sum();
        assert_eq!(s.weight_bytes(), total as u64);
        let tied = SyntheticStore::new(&config(true, false), DType::F16, 1).unwrap();
        assert!(tied
            .infos()
            .iter()
            .all(|i| i.name != "lm_head.weight" && !i.name.ends_with(".bias")));
    }

    #[test]
    fn loads_in_the_type_asked_deterministically() {
        let c = config(false, true);
        let a = SyntheticStore::new(&c, DType::Q8_0, 7).unwrap();
        let b = SyntheticStore::new(&c, DType::Q8_0, 7).unwrap();
        let other = SyntheticStore::new(&c, DType::Q8_0, 8).unwrap();
        let name = "model.layers.1.mlp.gate_proj.weight";
        for as_ in [
            LoadAs::Native,
            LoadAs::F32,
            LoadAs::Exactly(DType::F16),
            LoadAs::Exactly(DType::BF16),
            LoadAs::Exactly(DType::Q4_0),
            LoadAs::Exactly(DType::Q4_1),
            LoadAs::Exactly(DType::Q5_0),
        ] {
            let t = a.load(name, as_).unwrap();
            let want = match as_ {
                LoadAs::Native => DType::Q8_0,
                LoadAs::F32 => DType::F32,
                LoadAs::Exactly(d) => d,
            };
            assert_eq!((t.dtype, t.shape.clone()), (want, vec![100, 64]), "{as_:?}");
            assert_eq!(t.bytes.len(), want.storage_bytes(6400), "{as_:?}");
            assert_eq!(
                t.bytes,
                b.load(name, as_).unwrap().bytes,
                "same seed, same bytes ({as_:?})"
            );
            assert_ne!(t.bytes, other.load(name, as_).unwrap().bytes, "another seed ({as_:?})");
            // Realistic scale: mean near 0, standard deviation near STD, every value finite.
            let v = tandem_core::quant::decode(&t.bytes, t.dtype, 6400);
            let mean = v.iter().sum::<f32>() / v.len() as f32;
            let std =
                (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32).sqrt();
            assert!(
                v.iter().all(|x| x.is_finite())
                    && mean.abs() < 0.002
                    && (std / STD - 1.0).abs() < 0.2,
                "{as_:?}: mean {mean}, std {std}"
            );
        }
        // Load order does not matter: each tensor has its own stream.
        let up = "model.layers.0.mlp.up_proj.weight";
        let first = a.load(up, LoadAs::Native).unwrap().bytes;
        let _ = b.load(name, LoadAs::Native).unwrap();
        assert_eq!(first, b.load(up, LoadAs::Native).unwrap().bytes);
        assert_ne!(
            first,
            a.load("model.layers.1.mlp.up_proj.weight", LoadAs::Native).unwrap().bytes
        );

        let norm = tandem_core::quant::decode(
            &a.load("model.norm.weight", LoadAs::F32).unwrap().bytes,
            DType::F32,
            64,
        );
        assert!(norm.iter().all(|x| (x - 1.0).abs() < 0.2), "{norm:?}");
        assert!(matches!(a.load("nope", LoadAs::F32), Err(Error::MissingTensor(_))));
        assert!(a.load(name, LoadAs::Exactly(DType::U32)).is_err());
        // Rows of 64 are not K-quant blocks: asked for, refused; as the store's type, the
        // fallback (Q5_0 for Q4_K, Q8_0 for Q6_K), as loading real weights would give.
        let e = a.load(name, LoadAs::Exactly(DType::Q4_K)).unwrap_err().to_string();
        assert!(e.contains("not whole q4_k blocks"), "{e}");
        assert!(a.load(name, LoadAs::Exactly(DType::Q5_K)).is_err());
        for (want, got) in [(DType::Q4_K, DType::Q5_0), (DType::Q6_K, DType::Q8_0)] {
            let k = SyntheticStore::new(&c, want, 7).unwrap();
            assert_eq!(k.load(name, LoadAs::Native).unwrap().dtype, got);
        }
    }

    #[test]
    fn refuses_weights_beyond_the_limit_before_generating() {
        let mut c = config(false, false);
        // 1024 layers of dim 65536 and ffn 262144: about 70 TB of q4, listed but never made.
        (c.n_layers, c.dim, c.ffn_dim, c.n_heads, c.n_kv_heads, c.head_dim) =
            (1024, 65536, 262144, 512, 512, 128);
        let opts = SyntheticOptions { dtype: DType::Q4_1, seed: 0, max_weight_bytes: 16 << 30 };
        let e = source(PathBuf::from("huge.json"), c, &opts).err().expect("refused");
        let msg = e.to_string();
        assert!(
            msg.contains("huge.json") && msg.contains("1024 layers") && msg.contains("GiB"),
            "{msg}"
        );
        let small = source(PathBuf::from("small.json"), config(true, false), &opts).expect("fits");
        assert_eq!(small.format, FORMAT);
        let tok =
            tandem_core::tokenizer::Tokenizer::load(&small.tokenizer).err().expect("no tokenizer");
        assert!(tok.to_string().contains("synthetic"), "{tok}");
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn written_as_gguf_loads_back_bit_for_bit() {
        use crate::gguf_writer::{placeholder_vocab, write_llama_gguf};
        use tandem_core::config::RopeScaling;
        let dir =
            std::env::temp_dir().join(format!("tandem-synthetic-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (dtype, tied) in [
            (DType::Q4_1, true),
            (DType::Q8_0, false),
            (DType::Q4_0, true),
            (DType::F16, false),
            (DType::BF16, true),
        ] {
            let mut c = config(tied, false);
            // head_dim 32 with dim 64 and 4 heads: key_length must be written.
            (c.head_dim, c.vocab_size, c.ffn_dim) = (32, 300, 96);
            c.rope_scaling = RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position: 64,
            };
            let opts = SyntheticOptions { dtype, seed: 3, max_weight_bytes: 1 << 30 };
            let src = source(PathBuf::from("tiny.json"), c.clone(), &opts).unwrap();
            let path = dir.join(format!("{dtype}-{tied}.gguf"));
            let size = write_llama_gguf(&src, placeholder_vocab(c.vocab_size), &path).unwrap();
            assert_eq!(size, std::fs::metadata(&path).unwrap().len());
            let back = tandem_core::loader::open(&path).unwrap();
            // Special tokens are the placeholder vocabulary's.
            let want = ModelConfig { bos_token_id: Some(1), eos_token_ids: vec![2], ..c.clone() };
            assert_eq!(back.config, want, "{dtype}");
            for info in src.tensors.infos() {
                let a = src.tensors.load(&info.name, LoadAs::Native).unwrap();
                // (A GGUF's bf16 loads as f32 unless asked for bf16.)
                let b = back.tensors.load(&info.name, LoadAs::Exactly(a.dtype)).unwrap();
                assert_eq!((a.dtype, &a.shape), (b.dtype, &b.shape), "{dtype} {}", info.name);
                assert!(a.bytes == b.bytes, "{dtype} {}: bytes differ", info.name);
            }
            let tok = tandem_core::tokenizer::Tokenizer::load(&back.tokenizer).unwrap();
            let ids = tok.encode("a b").unwrap();
            assert!(!ids.is_empty() && ids.iter().all(|&i| (3..260).contains(&i)), "{ids:?}");
            assert_eq!(tok.decode(&ids, true).unwrap().trim(), "a b");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
