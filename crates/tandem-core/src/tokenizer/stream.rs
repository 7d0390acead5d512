//! Streaming output: turning ids into text as they are generated, and cutting the text at stop
//! strings.

use super::Tokenizer;
use crate::Result;

/// Incremental detokenizer (the scheme of HF TextStreamer and vLLM's detokenizer).
///
/// Decoding one token at a time is wrong twice over: SentencePiece decoders strip the leading
/// space of whatever they decode ("▁world" alone is "world"), and a character spread over
/// several byte tokens decodes as U+FFFD until its last byte arrives. So the stream decodes a
/// short window of recent tokens twice, with and without the new ones, and emits the
/// difference, holding everything back while the window ends in an incomplete character.
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    state: Detokenizer,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        TextStream { tok, state: Detokenizer::default() }
    }

    /// Adds one generated id; returns the text it completes (often empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.state.push(self.tok, id)
    }

    /// End of generation: whatever is still held back (an incomplete character stays U+FFFD,
    /// as a full decode would show it).
    pub fn finish(&mut self) -> Result<String> {
        self.state.finish(self.tok)
    }
}

/// [`TextStream`]'s state without the tokenizer borrow, for owners that keep many streams
/// (the scheduler, one per request) and pass the tokenizer in.
#[derive(Debug, Default, Clone)]
pub struct Detokenizer {
    ids: Vec<u32>,
    /// Start of the window decoded for context (its text was already emitted).
    prefix: usize,
    /// End of the text already emitted; ids from here on are pending.
    read: usize,
}

impl Detokenizer {
    /// See [`TextStream::push`].
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let (old, new) = self.window(tok)?;
        // A trailing U+FFFD is a character whose remaining bytes have not been generated yet.
        if new.len() <= old.len() || new.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        self.prefix = self.read;
        self.read = self.ids.len();
        // Only the window is ever decoded again: keep the ids from its start.
        let drop = self.prefix;
        self.ids.drain(..drop);
        self.prefix -= drop;
        self.read -= drop;
        Ok(delta(&old, &new))
    }

    /// See [`TextStream::finish`].
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        if self.read == self.ids.len() {
            return Ok(String::new());
        }
        let (old, new) = self.window(tok)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(delta(&old, &new))
    }

    fn window(&self, tok: &Tokenizer) -> Result<(String, String)> {
        let old = tok.decode(&self.ids[self.prefix..self.read], true)?;
        let new = tok.decode(&self.ids[self.prefix..], true)?;
        Ok((old, new))
    }
}

/// The text `new` adds after `old`. Decoding more tokens normally only appends; if a decoder
/// rewrote the end of the window, emit from where the two first differ (on a char boundary).
fn delta(old: &str, new: &str) -> String {
    if let Some(rest) = new.strip_prefix(old) {
        return rest.to_owned();
    }
    let common = old
        .char_indices()
        .zip(new.chars())
        .find(|((_, a), b)| a != b)
        .map_or(old.len().min(new.len()), |((i, _), _)| i);
    new.get(common..).unwrap_or_default().to_owned()
}

/// Stop strings over streamed text. Holds back any tail that could still grow into a stop
/// string, so a stop string split across chunks is never partly emitted.
pub struct StopStrings {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopStrings {
    pub fn new(stops: Vec<String>) -> Self {
        // An empty stop string would match at once and end every generation.
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopStrings { stops, held: String::new(), stopped: false }
    }

    /// Feeds new text; returns the text safe to emit now, and true once a stop string has
    /// completed (the stop string and everything after it are dropped). After that, every
    /// call returns ("", true).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.held.push_str(text);
        // Earliest match wins: text before it is what the model said before stopping.
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let out = self.held[..at].to_owned();
            self.held.clear();
            self.stopped = true;
            return (out, true);
        }
        let keep = self.held.len() - self.partial_tail();
        let out = self.held[..keep].to_owned();
        self.held.drain(..keep);
        (out, false)
    }

    /// End of generation: the held-back tail, which never became a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop string.
    fn partial_tail(&self) -> usize {
        let h = &self.held;
        h.char_indices()
            .map(|(i, _)| &h[i..])
            .find(|tail| self.stops.iter().any(|s| s.len() > tail.len() && s.starts_with(tail)))
            .map_or(0, str::len)
    }
}
