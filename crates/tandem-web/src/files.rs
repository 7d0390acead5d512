//! Turning the files a page hands over (by name) into a model source: one GGUF, or an HF
//! checkpoint's config.json + tokenizer.json (+ tokenizer_config.json, generation_config.json,
//! chat_template.jinja) + *.safetensors shards.

use tandem_core::loader::{self, gguf, HfBytes, ModelSource};
use tandem_core::{Error, Result};

/// A file from the page: a `File`'s name (a URL's last segment for downloads) and its bytes.
pub struct NamedFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// The name without any directory part ("models/x/config.json" -> "config.json").
fn base_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

/// Opens the model the files make up. Files of other names (README.md, the safetensors index,
/// special_tokens_map.json) are ignored; a missing required file is an error naming it and
/// listing what was given.
pub fn open_files(files: Vec<NamedFile>) -> Result<ModelSource> {
    if files.is_empty() {
        return Err(Error::bad_file("model", "no files were given"));
    }
    let given: Vec<String> = files.iter().map(|f| base_name(&f.name).to_string()).collect();
    let is_gguf = |f: &NamedFile| gguf::is_gguf(&f.bytes) || base_name(&f.name).ends_with(".gguf");
    let ggufs = files.iter().filter(|f| is_gguf(f)).count();
    if ggufs > 1 {
        return Err(Error::bad_file("model", format!("{ggufs} GGUF files were given; a model is one GGUF file")));
    }
    if ggufs == 1 {
        let file = files.into_iter().find(is_gguf).expect("counted above");
        let name = base_name(&file.name).to_string();
        if !gguf::is_gguf(&file.bytes) {
            return Err(Error::bad_file(name, "not a GGUF file (no GGUF magic)"));
        }
        return loader::open_gguf_bytes(&name, file.bytes);
    }

    let mut config_json = None;
    let mut generation_config_json = None;
    let mut tokenizer_json = None;
    let mut tokenizer_config_json = None;
    let mut chat_template = None;
    let mut shards = Vec::new();
    for file in files {
        let name = base_name(&file.name).to_string();
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|_| Error::bad_file(&name, "not UTF-8 text"));
        match name.as_str() {
            "config.json" => config_json = Some(text(file.bytes)?),
            "generation_config.json" => generation_config_json = Some(text(file.bytes)?),
            "tokenizer.json" => tokenizer_json = Some(file.bytes),
            "tokenizer_config.json" => tokenizer_config_json = Some(file.bytes),
            "chat_template.jinja" => chat_template = Some(text(file.bytes)?),
            n if n.ends_with(".safetensors") => shards.push((name, file.bytes)),
            _ => {}
        }
    }
    let missing = |what: &str| {
        Error::bad_file("model", format!("{what} is missing: give one .gguf file, or config.json + tokenizer.json + *.safetensors (got {})", given.join(", ")))
    };
    let config_json = config_json.ok_or_else(|| missing("config.json"))?;
    let tokenizer_json = tokenizer_json.ok_or_else(|| missing("tokenizer.json"))?;
    if shards.is_empty() {
        return Err(missing("a .safetensors file"));
    }
    shards.sort_by(|a, b| a.0.cmp(&b.0));
    loader::open_hf_bytes(HfBytes { config_json, generation_config_json, tokenizer_json, tokenizer_config_json, chat_template, shards })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, bytes: &[u8]) -> NamedFile {
        NamedFile { name: name.into(), bytes: bytes.to_vec() }
    }

    fn err(files: Vec<NamedFile>) -> String {
        match open_files(files) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn missing_files_are_named() {
        assert!(err(vec![]).contains("no files"));
        let e = err(vec![file("model.safetensors", b"x"), file("tokenizer.json", b"{}")]);
        assert!(e.contains("config.json is missing") && e.contains("model.safetensors, tokenizer.json"), "{e}");
        let e = err(vec![file("config.json", b"{}"), file("tokenizer.json", b"{}")]);
        assert!(e.contains(".safetensors file is missing"), "{e}");
    }

    #[test]
    fn bad_gguf_is_an_error_not_a_panic() {
        assert!(err(vec![file("m.gguf", b"not gguf")]).contains("no GGUF magic"));
        assert!(err(vec![file("m.gguf", b"GGUF\x03\0\0\0")]).contains("m.gguf"));
        assert!(err(vec![file("a.gguf", b"GGUF"), file("b.gguf", b"GGUF")]).contains("2 GGUF files"));
    }

    #[test]
    fn directory_parts_of_names_are_ignored() {
        assert_eq!(base_name("a/b/config.json"), "config.json");
        assert_eq!(base_name("config.json"), "config.json");
    }
}
