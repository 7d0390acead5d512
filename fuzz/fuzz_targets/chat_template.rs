//! Chat templates (a stranger's model file carries them) rendered with hostile messages: an
//! error or a bounded string, never a panic, a hang or a runaway allocation.
//!
//! Input: [flags] template NUL bos NUL eos (NUL role NUL content)*
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_core::tokenizer::{render_chat_template, ChatMessage};
use tandem_fuzz::fields;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let f = fields(rest);
    let get = |i: usize| f.get(i).map(String::as_str).unwrap_or("");
    let messages: Vec<ChatMessage> = f
        .get(3..)
        .unwrap_or_default()
        .chunks(2)
        .map(|p| ChatMessage::new(p[0].clone(), p.get(1).cloned().unwrap_or_default()))
        .collect();
    let _ = render_chat_template(get(0), &messages, flags & 1 != 0, get(1), get(2));
});
