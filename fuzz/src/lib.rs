//! What the fuzz targets share: how an input's first bytes choose the chunking and the
//! conversion of a stream, a sink that keeps what a stream hands over, and two small tokenizers
//! built in memory (a byte-level BPE like SmolLM2's and a SentencePiece BPE with byte fallback
//! like Llama 2's), so no target needs files from outside the repository.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use tandem_core::loader::gguf::{GgufMetadata, GgufValue};
use tandem_core::loader::stream::{FileHeader, TensorSink};
use tandem_core::loader::{HostTensor, LoadAs};
use tandem_core::tokenizer::Tokenizer;
use tandem_core::DType;

/// Bytes before the file in the stream targets' inputs: [mode, load-as, seed (u32 LE)].
pub const PREFIX: usize = 6;

/// A stream target's input: how to cut the file into chunks, and the file.
pub struct Streamed<'a> {
    /// Bit 0-1: chunk size scheme; bit 2: the stream is told the file's length.
    pub mode: u8,
    pub load_as: LoadAs,
    pub seed: u32,
    pub file: &'a [u8],
}

impl<'a> Streamed<'a> {
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (head, file) = data.split_at_checked(PREFIX)?;
        let seed = u32::from_le_bytes(head[2..6].try_into().ok()?);
        Some(Streamed { mode: head[0], load_as: load_as(head[1]), seed, file })
    }

    pub fn known_len(&self) -> Option<u64> {
        (self.mode & 4 != 0).then_some(self.file.len() as u64)
    }

    /// The file, cut as the mode and seed say: tiny chunks, page-sized ones, one chunk, or
    /// sizes spread over every scale.
    pub fn chunks(&self) -> Vec<&'a [u8]> {
        let mut rng = self.seed as u64 | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut out = Vec::new();
        let mut rest = self.file;
        while !rest.is_empty() {
            let n = match self.mode & 3 {
                0 => 1 + (next() % 16) as usize,
                1 => 1 + (next() % 4096) as usize,
                2 => rest.len(),
                _ => 1 + (next() % (1u64 << (next() % 21))) as usize,
            };
            let (a, b) = rest.split_at(n.min(rest.len()));
            out.push(a);
            rest = b;
        }
        out
    }
}

/// Every conversion a loader is asked for.
pub fn load_as(b: u8) -> LoadAs {
    match b % 8 {
        0 => LoadAs::Native,
        1 => LoadAs::F32,
        2 => LoadAs::Exactly(DType::F16),
        3 => LoadAs::Exactly(DType::BF16),
        4 => LoadAs::Exactly(DType::Q8_0),
        5 => LoadAs::Exactly(DType::Q4_0),
        6 => LoadAs::Exactly(DType::Q4_1),
        _ => LoadAs::Exactly(DType::U32),
    }
}

/// A tensor's bytes must be exactly what its type and shape take.
pub fn check_tensor(name: &str, t: &HostTensor) {
    let numel: usize = t.shape.iter().product();
    assert_eq!(
        t.bytes.len(),
        t.dtype.storage_bytes(numel),
        "tensor '{name}': {:?} {:?}",
        t.dtype,
        t.shape
    );
}

pub fn same_tensor(a: &HostTensor, b: &HostTensor) -> bool {
    a.dtype == b.dtype && a.shape == b.shape && a.bytes == b.bytes
}

/// Keeps every tensor a stream hands over, converted as `as_` says.
pub struct Keep {
    pub as_: LoadAs,
    pub began: usize,
    pub tensors: Vec<(String, HostTensor)>,
}

impl Keep {
    pub fn new(as_: LoadAs) -> Self {
        Keep { as_, began: 0, tensors: Vec::new() }
    }
}

impl TensorSink for Keep {
    fn begin(&mut self, _header: &FileHeader) -> tandem_core::Result<()> {
        self.began += 1;
        Ok(())
    }
    fn wants(&self, _name: &str) -> Option<LoadAs> {
        Some(self.as_)
    }
    fn put(&mut self, name: &str, tensor: HostTensor) -> tandem_core::Result<()> {
        self.tensors.push((name.to_string(), tensor));
        Ok(())
    }
}

/// Splits `data` at NUL bytes into UTF-8 fields (lossily).
pub fn fields(data: &[u8]) -> Vec<String> {
    data.split(|&b| b == 0).map(|f| String::from_utf8_lossy(f).into_owned()).collect()
}

// ---- Tokenizers -----------------------------------------------------------------------------

const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_BYTE: i32 = 6;

/// Text the small vocabularies are trained on.
const TRAINING: &str = "The capital of France is Paris. Once upon a time, there was a little girl \
named Lily. She liked to play in the park with her friends. The sun was shining and the birds were \
singing. 1234567890 + 42 = 1234567932. Ça va? Ünïcödé, 日本語, emoji 🦀!";

pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

pub const LLAMA2_TEMPLATE: &str = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

/// GPT-2's byte-to-character map: printable bytes are themselves, the rest move to U+0100...
pub fn byte_level_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return b as char;
    }
    let moved = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + moved).expect("a valid char")
}

/// Greedy BPE training on `words` (each a list of symbols): `n` merges, most frequent pair first
/// (ties: the smaller pair), so the result is the same on every run.
fn train(mut words: Vec<Vec<String>>, n: usize) -> Vec<(String, String)> {
    let mut merges = Vec::new();
    for _ in 0..n {
        let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
        for w in &words {
            for p in w.windows(2) {
                *counts.entry((p[0].clone(), p[1].clone())).or_default() += 1;
            }
        }
        let Some((pair, _)) = counts.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        else {
            break;
        };
        for w in &mut words {
            let mut i = 0;
            while i + 1 < w.len() {
                if w[i] == pair.0 && w[i + 1] == pair.1 {
                    let joined = format!("{}{}", w[i], w[i + 1]);
                    w.splice(i..i + 2, [joined]);
                }
                i += 1;
            }
        }
        merges.push(pair);
    }
    merges
}

fn strings(v: impl IntoIterator<Item = String>) -> GgufValue {
    GgufValue::Array(v.into_iter().map(GgufValue::String).collect())
}

fn ints(v: impl IntoIterator<Item = i32>) -> GgufValue {
    GgufValue::Array(v.into_iter().map(GgufValue::I32).collect())
}

/// GGUF metadata of a byte-level BPE like SmolLM2's: `<|endoftext|>`, `<|im_start|>` (BOS) and
/// `<|im_end|>` (EOS) first, then the 256 byte characters, then what 120 merges build; ChatML.
pub fn byte_bpe_metadata() -> GgufMetadata {
    let mut tokens: Vec<String> =
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
    let mut types = vec![TYPE_CONTROL; 3];
    tokens.extend((0..=255u8).map(|b| byte_level_char(b).to_string()));
    types.extend([TYPE_NORMAL; 256]);
    let words = TRAINING
        .split_inclusive(' ')
        .map(|w| w.bytes().map(|b| byte_level_char(b).to_string()).collect())
        .collect();
    let merges = train(words, 120);
    for (a, b) in &merges {
        tokens.push(format!("{a}{b}"));
        types.push(TYPE_NORMAL);
    }
    let mut m = GgufMetadata::new();
    m.insert("tokenizer.ggml.model".into(), GgufValue::String("gpt2".into()));
    m.insert("tokenizer.ggml.pre".into(), GgufValue::String("smollm".into()));
    m.insert("tokenizer.ggml.tokens".into(), strings(tokens));
    m.insert("tokenizer.ggml.token_type".into(), ints(types));
    m.insert(
        "tokenizer.ggml.merges".into(),
        strings(merges.into_iter().map(|(a, b)| format!("{a} {b}"))),
    );
    m.insert("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1));
    m.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(2));
    m.insert("tokenizer.chat_template".into(), GgufValue::String(CHATML_TEMPLATE.into()));
    m
}

/// GGUF metadata of a SentencePiece BPE like Llama 2's: `<unk>`, `<s>`, `</s>`, the 256 byte
/// pieces, then single characters and what 120 merges build, scored longest first.
pub fn spm_metadata() -> GgufMetadata {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let mut types = vec![TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL];
    let mut scores = vec![0.0f32; 3];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    types.extend([TYPE_BYTE; 256]);
    scores.extend([0.0; 256]);
    let text = format!("▁{}", TRAINING.replace(' ', "▁"));
    let mut chars: Vec<String> = text.chars().map(String::from).collect();
    chars.sort();
    chars.dedup();
    let words: Vec<Vec<String>> =
        text.split_inclusive('▁').map(|w| w.chars().map(String::from).collect()).collect();
    let merges = train(words, 120);
    let mut n = 0.0;
    for piece in chars.into_iter().chain(merges.iter().map(|(a, b)| format!("{a}{b}"))) {
        if !tokens.contains(&piece) {
            tokens.push(piece);
            types.push(TYPE_NORMAL);
            n -= 1.0;
            scores.push(n);
        }
    }
    let mut m = GgufMetadata::new();
    m.insert("tokenizer.ggml.model".into(), GgufValue::String("llama".into()));
    m.insert("tokenizer.ggml.tokens".into(), strings(tokens));
    m.insert("tokenizer.ggml.token_type".into(), ints(types));
    m.insert(
        "tokenizer.ggml.scores".into(),
        GgufValue::Array(scores.into_iter().map(GgufValue::F32).collect()),
    );
    m.insert("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1));
    m.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(2));
    m.insert("tokenizer.ggml.unknown_token_id".into(), GgufValue::U32(0));
    m.insert("tokenizer.chat_template".into(), GgufValue::String(LLAMA2_TEMPLATE.into()));
    m
}

/// The two tokenizers, built once per process: [byte-level BPE, SentencePiece].
pub fn tokenizers() -> &'static [Arc<Tokenizer>; 2] {
    static TOKENIZERS: OnceLock<[Arc<Tokenizer>; 2]> = OnceLock::new();
    TOKENIZERS.get_or_init(|| {
        let build = |m: GgufMetadata| {
            Arc::new(Tokenizer::from_gguf(&m).expect("the fuzz tokenizers build"))
        };
        [build(byte_bpe_metadata()), build(spm_metadata())]
    })
}
