//! `tandem inspect PATH`

use clap::Args;
use std::path::PathBuf;
use tandem_core::config::RopeScaling;
use tandem_core::Result;

#[derive(Args)]
pub struct InspectArgs {
    /// A directory with config.json + *.safetensors + tokenizer.json, or a .gguf file.
    /// Defaults to SmolLM2-135M-Instruct.
    path: Option<PathBuf>,
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let path = crate::model_path(args.path)?;
    let src = tandem_core::loader::open(&path)?;
    let c = &src.config;
    println!("model:          {}", src.path.display());
    println!("format:         {}", src.format);
    println!("family:         {}", c.describe());
    println!("dim:            {}", c.dim);
    println!("layers:         {}", c.n_layers);
    println!("heads:          {} (kv heads {}, head_dim {})", c.n_heads, c.n_kv_heads, c.head_dim);
    println!("ffn dim:        {}", c.ffn_dim);
    println!("vocab:          {}", c.vocab_size);
    println!("context:        {}", c.max_position);
    let scaling = match &c.rope_scaling {
        RopeScaling::None => String::new(),
        s => format!(", scaling {s:?}"),
    };
    println!("rope:           theta {}{scaling}", c.rope_theta);
    if let Some(m) = &c.features.moe {
        println!(
            "experts:        {} of {} per token, width {}{}",
            m.top_k,
            m.experts,
            m.ffn_dim,
            if m.norm_topk { ", weights renormalized" } else { "" }
        );
    }
    println!("rms_norm_eps:   {}", c.rms_norm_eps);
    println!("tied embedding: {}", c.tie_embeddings);
    println!("qkv bias:       {}", c.qkv_bias);
    println!("bos / eos:      {:?} / {:?}", c.bos_token_id, c.eos_token_ids);
    println!();
    let infos = src.tensors.infos();
    let width = infos.iter().map(|t| t.name.len()).max().unwrap_or(0);
    println!("{:width$}  {:6}  {:>16}  {:>12}", "tensor", "dtype", "shape", "bytes");
    let mut total = 0usize;
    for t in infos {
        let shape = format!("{:?}", t.shape);
        println!("{:width$}  {:6}  {:>16}  {:>12}", t.name, t.file_dtype, shape, t.bytes);
        total += t.bytes;
    }
    println!();
    let params: usize = infos.iter().map(|t| t.shape.iter().product::<usize>()).sum();
    println!("tensors:        {}", infos.len());
    println!("parameters:     {params}");
    println!(
        "weight bytes:   {total} ({:.1} MiB, {:.2} bits/weight)",
        total as f64 / 1048576.0,
        total as f64 * 8.0 / params.max(1) as f64
    );
    let per_dtype: Vec<String> = tandem_core::quant::kv::KV_DTYPES
        .iter()
        .filter(|&&d| tandem_core::quant::kv::row_fits(d, c.n_kv_heads * c.head_dim))
        .map(|&d| format!("{} {d}", c.kv_bytes_per_token(d)))
        .collect();
    println!(
        "KV cache/token: {} bytes (2 x {} layers x {} kv heads x {} head_dim)",
        per_dtype.join(", "),
        c.n_layers,
        c.n_kv_heads,
        c.head_dim
    );
    Ok(())
}
