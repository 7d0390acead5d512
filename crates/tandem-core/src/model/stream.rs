//! A whole model pushed file by file, each file in chunks: one GGUF, or an HF checkpoint's
//! config.json + tokenizer.json (+ tokenizer_config.json, generation_config.json,
//! chat_template.jinja) followed by its *.safetensors shards. The backend is chosen before the
//! first byte, so each tensor goes to it the moment its bytes are in (see `loader::stream`).
//!
//! The small files come first and are kept whole (the config decides which tensors the model
//! needs before any shard starts); a GGUF carries its config in its header. Files of other
//! names are skipped without being kept, unless their first bytes say GGUF.

use super::{Model, ModelBuilder, ModelOptions};
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::loader::gguf::{self, GgufFile};
use crate::loader::stream::{FileHeader, GgufStream, SafetensorsStream, TensorSink};
use crate::loader::{merge_generation_eos_json, HostTensor, LoadAs, TokenizerSource};
use crate::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// The most bytes a config, tokenizer or template file may have (a 256k-token tokenizer.json
/// is tens of MB).
pub const SMALL_FILE_LIMIT: usize = 256 << 20;

/// A model loaded from a stream, with what the files said about its tokenizer.
pub struct StreamedModel<B: Backend> {
    pub model: Model<B>,
    pub tokenizer: TokenizerSource,
    /// "safetensors" or "gguf vN".
    pub format: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Small {
    Config,
    GenerationConfig,
    TokenizerJson,
    TokenizerConfig,
    ChatTemplate,
}

impl Small {
    fn file_name(self) -> &'static str {
        match self {
            Small::Config => "config.json",
            Small::GenerationConfig => "generation_config.json",
            Small::TokenizerJson => "tokenizer.json",
            Small::TokenizerConfig => "tokenizer_config.json",
            Small::ChatTemplate => "chat_template.jinja",
        }
    }
}

fn small_role(name: &str) -> Option<Small> {
    Some(match name {
        "config.json" => Small::Config,
        "generation_config.json" => Small::GenerationConfig,
        "tokenizer.json" => Small::TokenizerJson,
        "tokenizer_config.json" => Small::TokenizerConfig,
        "chat_template.jinja" => Small::ChatTemplate,
        _ => return None,
    })
}

enum Open {
    Gguf(GgufStream),
    Shard(SafetensorsStream),
    Small(Small, Vec<u8>),
    /// A name that says nothing: its first 4 bytes decide (GGUF magic, or skipped).
    Sniff(Option<u64>, Vec<u8>),
    Skipped,
}

/// Where tensors go: the builder, once the config is known.
struct Target<B: Backend> {
    backend: Option<B>,
    opts: ModelOptions,
    builder: Option<ModelBuilder<B>>,
    gguf: Option<Arc<GgufFile>>,
}

impl<B: Backend> Target<B> {
    fn start(&mut self, config: ModelConfig) -> Result<()> {
        let backend = self
            .backend
            .take()
            .ok_or_else(|| Error::bad_file("model", "the model's weights already began loading"))?;
        self.builder = Some(ModelBuilder::new(backend, config, &self.opts)?);
        Ok(())
    }

    /// The GGUF's rope_freqs and LongRoPE factor tensors are read into the config, not
    /// uploaded.
    fn is_rope_config(&self, name: &str) -> bool {
        self.gguf.is_some()
            && (name == GgufFile::ROPE_FREQS || GgufFile::ROPE_FACTORS.contains(&name))
    }
}

impl<B: Backend> TensorSink for Target<B> {
    fn begin(&mut self, header: &FileHeader) -> Result<()> {
        if let FileHeader::Gguf(file) = header {
            self.start(file.header_config()?)?;
            self.gguf = Some(file.clone());
        }
        Ok(())
    }

    fn wants(&self, name: &str) -> Option<LoadAs> {
        if self.is_rope_config(name) {
            return Some(LoadAs::F32);
        }
        self.builder.as_ref()?.wants(name)
    }

    fn put(&mut self, name: &str, tensor: HostTensor) -> Result<()> {
        let builder = self
            .builder
            .as_mut()
            .ok_or_else(|| Error::bad_file(name, "a tensor arrived before the model's config"))?;
        match &self.gguf {
            Some(file) if name == GgufFile::ROPE_FREQS => {
                builder.update_config(|c| file.apply_rope_freqs(c, &tensor))
            }
            Some(file) if GgufFile::ROPE_FACTORS.contains(&name) => {
                builder.update_config(|c| file.apply_rope_factors(c, name, &tensor))
            }
            _ => builder.put(name, tensor),
        }
    }
}

/// See the module docs. Call `begin_file`, `push` (any number of times), `end_file` per
/// file, then `finish`.
pub struct ModelStream<B: Backend> {
    target: Target<B>,
    open: Option<(String, Open)>,
    small: Vec<(Small, Vec<u8>)>,
    /// Every file name given, for error messages.
    given: Vec<String>,
    ggufs: usize,
    shards: usize,
}

/// The name without any directory part ("models/x/config.json" -> "config.json").
fn base_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

impl<B: Backend> ModelStream<B> {
    /// Tensors will be uploaded to `backend` as they arrive.
    pub fn new(backend: B, opts: &ModelOptions) -> Self {
        let target =
            Target { backend: Some(backend), opts: opts.clone(), builder: None, gguf: None };
        ModelStream {
            target,
            open: None,
            small: Vec::new(),
            given: Vec::new(),
            ggufs: 0,
            shards: 0,
        }
    }

    /// Replaces the options given to [`ModelStream::new`] (a memory plan made once the config
    /// is known); only before the weights begin.
    pub fn set_options(&mut self, opts: &ModelOptions) -> Result<()> {
        if self.target.builder.is_some() {
            return Err(Error::InvalidParameter(
                "the model's options cannot change once its weights began loading".into(),
            ));
        }
        self.target.opts = opts.clone();
        Ok(())
    }

    /// Starts the file `name` (a path or URL's last segment is what counts), of `len` bytes if
    /// known. HF files must come config.json first, shards last.
    pub fn begin_file(&mut self, name: &str, len: Option<u64>) -> Result<()> {
        if let Some((open, _)) = &self.open {
            return Err(Error::bad_file(
                name,
                format!("'{open}' is still open: end it before the next file begins"),
            ));
        }
        let base = base_name(name).to_string();
        self.given.push(base.clone());
        let open = if base.ends_with(".gguf") {
            self.gguf_stream(&base, len)?
        } else if base.ends_with(".safetensors") {
            self.start_shard(&base, len)?
        } else if let Some(role) = small_role(&base) {
            if let Some(len) = len.filter(|&n| n > SMALL_FILE_LIMIT as u64) {
                return Err(Error::bad_file(
                    &base,
                    format!("{len} bytes is too large for a config, tokenizer or template file"),
                ));
            }
            Open::Small(role, Vec::new())
        } else {
            Open::Sniff(len, Vec::new())
        };
        self.open = Some((base, open));
        Ok(())
    }

    fn gguf_stream(&mut self, name: &str, len: Option<u64>) -> Result<Open> {
        self.ggufs += 1;
        if self.ggufs > 1 {
            return Err(Error::bad_file(
                "model",
                format!(
                    "{} GGUF files were given ({}); a model is one GGUF file",
                    self.ggufs,
                    self.given.join(", ")
                ),
            ));
        }
        if self.shards > 0 {
            return Err(Error::bad_file(
                name,
                "a GGUF file and .safetensors files were both given; give one or the other",
            ));
        }
        Ok(Open::Gguf(GgufStream::new(name, len)))
    }

    fn start_shard(&mut self, name: &str, len: Option<u64>) -> Result<Open> {
        if self.ggufs > 0 {
            return Err(Error::bad_file(
                name,
                "a GGUF file and .safetensors files were both given; give one or the other",
            ));
        }
        if self.target.builder.is_none() {
            let text = self.small_text(Small::Config).ok_or_else(|| {
                Error::bad_file(name, "config.json must come before the .safetensors files (it says which tensors the model needs)")
            })??;
            self.target.start(ModelConfig::from_hf_json(&text)?)?;
        }
        self.shards += 1;
        Ok(Open::Shard(SafetensorsStream::new(name, len)))
    }

    fn small_text(&self, role: Small) -> Option<Result<String>> {
        let (_, bytes) = self.small.iter().find(|(r, _)| *r == role)?;
        Some(
            String::from_utf8(bytes.clone())
                .map_err(|_| Error::bad_file(role.file_name(), "not UTF-8 text")),
        )
    }

    /// The next bytes of the open file; tensors they complete are uploaded before this returns.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        let Some((name, open)) = &mut self.open else {
            return Err(Error::bad_file("model", "bytes arrived before any file began"));
        };
        match open {
            Open::Gguf(s) => s.push(chunk, &mut self.target),
            Open::Shard(s) => s.push(chunk, &mut self.target),
            Open::Small(_, buf) => {
                if buf.len() + chunk.len() > SMALL_FILE_LIMIT {
                    return Err(Error::bad_file(
                        name.as_str(),
                        "too large for a config, tokenizer or template file",
                    ));
                }
                buf.extend_from_slice(chunk);
                Ok(())
            }
            Open::Sniff(len, buf) => {
                let n = (4 - buf.len()).min(chunk.len());
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() < 4 {
                    return Ok(());
                }
                if !gguf::is_gguf(buf) {
                    *open = Open::Skipped;
                    return Ok(());
                }
                let (len, head) = (*len, std::mem::take(buf));
                let name = name.clone();
                let mut stream = self.gguf_stream(&name, len)?;
                if let Open::Gguf(s) = &mut stream {
                    s.push(&head, &mut self.target)?;
                    s.push(&chunk[n..], &mut self.target)?;
                }
                self.open = Some((name, stream));
                Ok(())
            }
            Open::Skipped => Ok(()),
        }
    }

    /// The open file is complete: a stream must have received every tensor it lists.
    pub fn end_file(&mut self) -> Result<()> {
        let Some((_, open)) = self.open.take() else {
            return Err(Error::bad_file("model", "end_file without a file begun"));
        };
        match open {
            Open::Gguf(s) => s.finish(),
            Open::Shard(s) => s.finish(),
            Open::Small(role, bytes) => {
                self.small.retain(|(r, _)| *r != role);
                self.small.push((role, bytes));
                Ok(())
            }
            Open::Sniff(..) | Open::Skipped => Ok(()),
        }
    }

    /// (tensors uploaded, tensors the model needs), once the config is known.
    pub fn progress(&self) -> Option<(usize, usize)> {
        self.target.builder.as_ref().map(ModelBuilder::progress)
    }

    /// The loaded model. Errors name what is missing: files, or tensors.
    pub fn finish(mut self) -> Result<StreamedModel<B>> {
        if let Some((name, _)) = &self.open {
            return Err(Error::bad_file(name.as_str(), "the file was not ended"));
        }
        if self.given.is_empty() {
            return Err(Error::bad_file("model", "no files were given"));
        }
        if self.ggufs > 0 {
            let (file, builder) =
                self.target.gguf.take().zip(self.target.builder.take()).ok_or_else(|| {
                    Error::bad_file("model", "the GGUF file ended before its header was complete")
                })?;
            let mut builder = builder;
            // The LongRoPE lists came with the tensors: both must have arrived, and be right.
            builder.update_config(|c| match c.rope_scaling {
                crate::RopeScaling::LongRope { .. } => c.validate(),
                _ => Ok(()),
            })?;
            return Ok(StreamedModel {
                model: builder.finish()?,
                format: format!("gguf v{}", file.version),
                tokenizer: TokenizerSource::Gguf(file),
            });
        }
        let given = self.given.join(", ");
        let missing = |what: &str| {
            Error::bad_file("model", format!("{what} is missing: give one .gguf file, or config.json + tokenizer.json + *.safetensors (got {given})"))
        };
        let take = |small: &mut Vec<(Small, Vec<u8>)>, role| {
            small.iter().position(|(r, _)| *r == role).map(|i| small.swap_remove(i).1)
        };
        if !self.small.iter().any(|(r, _)| *r == Small::Config) {
            return Err(missing("config.json"));
        }
        let tokenizer_json =
            take(&mut self.small, Small::TokenizerJson).ok_or_else(|| missing("tokenizer.json"))?;
        let mut builder =
            self.target.builder.take().ok_or_else(|| missing("a .safetensors file"))?;
        if let Some(text) = self.small_text(Small::GenerationConfig) {
            let text = text?;
            builder.update_config(|c| {
                merge_generation_eos_json(Path::new("generation_config.json"), &text, c)
            })?;
        }
        let chat_template = self.small_text(Small::ChatTemplate).transpose()?;
        let tokenizer_config = take(&mut self.small, Small::TokenizerConfig);
        Ok(StreamedModel {
            model: builder.finish()?,
            format: "safetensors".into(),
            tokenizer: TokenizerSource::Bytes { tokenizer_json, tokenizer_config, chat_template },
        })
    }
}
