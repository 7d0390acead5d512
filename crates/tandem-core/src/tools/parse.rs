//! Tool calls as chat models write them, recognized in generated text so they can be returned as
//! OpenAI `tool_calls`.
//!
//! Each model family has its own syntax ([`ToolSyntax`]). One state machine, [`ToolStream`],
//! reads text in pieces of any size; [`parse`] runs it over a whole output, so a streamed and a
//! whole parse of the same text always agree. Text around calls is content, with the whitespace
//! next to each call dropped. A block that looks like a call but is not one (bad JSON, no name,
//! arguments not an object, never closed) stays in the content verbatim: model output is never
//! an error. Nothing here recurses on input; JSON is parsed by serde_json, whose recursion limit
//! refuses deep nesting.

use serde_json::Value;

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";
const MISTRAL_CALLS: &str = "[TOOL_CALLS]";
const MISTRAL_ARGS: &str = "[ARGS]";
/// Longest function name read in Mistral's `name[ARGS]` form; longer text is not a call.
const MAX_NAME: usize = 256;

/// The way a model family writes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSyntax {
    /// Hermes / Qwen 2.5 / Qwen3: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
    /// one block per call, possibly several.
    Hermes,
    /// Llama 3.1/3.2/3.3 JSON: an optional `<|python_tag|>` then
    /// `{"name": ..., "parameters": {...}}` ("arguments" also accepted); several calls may be
    /// separated by `;` or newlines. A bare object counts only at the start of the output.
    Llama3,
    /// Mistral: `[TOOL_CALLS]` then a JSON array `[{"name": ..., "arguments": {...}}, ...]`
    /// (v3), or the newer `[TOOL_CALLS]name[ARGS]{...}` form, possibly repeated.
    Mistral,
    /// Any template without tool syntax: tandem's own JSON object
    /// `{"tool_calls": [{"name": ..., "arguments": {...}}]}` or `{"content": "..."}`, which is
    /// the whole output.
    Generic,
}

/// One call: `arguments` is always a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

impl ToolSyntax {
    /// Which syntax a chat template's source (a Jinja template string) writes calls in: Hermes if
    /// it mentions `<tool_call>`, Mistral if `[TOOL_CALLS]`, Llama3 if `<|python_tag|>` or
    /// (`tools` and `"parameters"` and `<|start_header_id|>`), else Generic.
    pub fn from_template(template: &str) -> ToolSyntax {
        let has = |s: &str| template.contains(s);
        if has(HERMES_OPEN) {
            ToolSyntax::Hermes
        } else if has(MISTRAL_CALLS) {
            ToolSyntax::Mistral
        } else if has(PYTHON_TAG)
            || (has("tools") && has("\"parameters\"") && has("<|start_header_id|>"))
        {
            ToolSyntax::Llama3
        } else {
            ToolSyntax::Generic
        }
    }

    /// The text that starts a call. For Llama3 this is `{`, which counts only at the start of
    /// the output (or right after a call); `<|python_tag|>` also starts one anywhere.
    pub fn trigger(self) -> &'static str {
        match self {
            ToolSyntax::Hermes => HERMES_OPEN,
            ToolSyntax::Mistral => MISTRAL_CALLS,
            ToolSyntax::Llama3 | ToolSyntax::Generic => "{",
        }
    }

    /// What goes around one call's JSON object (`{"name": ..., <arguments_key>: {...}}`) in this
    /// syntax, for a grammar that forces a call: `(prefix, suffix)`. Hermes wraps the object in
    /// its tags, Mistral in `[TOOL_CALLS][`...`]` (its v3 list form), Llama3 writes it bare, and
    /// Generic puts it in tandem's `{"tool_calls": [...]}` envelope. [`parse`] reads each back.
    pub fn call_frame(self) -> (&'static str, &'static str) {
        match self {
            ToolSyntax::Hermes => ("<tool_call>\n", "\n</tool_call>"),
            ToolSyntax::Mistral => ("[TOOL_CALLS][", "]"),
            ToolSyntax::Llama3 => ("", ""),
            ToolSyntax::Generic => ("{\"tool_calls\": [", "]}"),
        }
    }

    /// The key holding the arguments object in this syntax. (Reading also accepts the other
    /// of "parameters" and "arguments".)
    pub fn arguments_key(self) -> &'static str {
        match self {
            ToolSyntax::Llama3 => "parameters",
            _ => "arguments",
        }
    }

    /// The text that starts a call anywhere in the output, not only at its start.
    fn inline_trigger(self) -> Option<&'static str> {
        match self {
            ToolSyntax::Hermes => Some(HERMES_OPEN),
            ToolSyntax::Llama3 => Some(PYTHON_TAG),
            ToolSyntax::Mistral => Some(MISTRAL_CALLS),
            ToolSyntax::Generic => None,
        }
    }
}

/// A complete output split into its plain text and its calls.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    pub content: String,
    pub calls: Vec<ToolCall>,
}

/// Splits a complete output into content and calls (see the module docs). Never fails.
pub fn parse(syntax: ToolSyntax, text: &str) -> Parsed {
    let mut stream = ToolStream::new(syntax);
    let mut parsed = Parsed::default();
    parsed.extend(stream.push(text));
    parsed.extend(stream.finish());
    parsed
}

/// Collects stream events: content appended, calls listed.
impl Extend<ToolEvent> for Parsed {
    fn extend<I: IntoIterator<Item = ToolEvent>>(&mut self, events: I) {
        for event in events {
            match event {
                ToolEvent::Content(text) => self.content.push_str(&text),
                ToolEvent::Call(call) => self.calls.push(call),
            }
        }
    }
}

/// What a [`ToolStream`] found: content to show, or a complete call.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolEvent {
    Content(String),
    Call(ToolCall),
}

/// What the text after a trigger must hold.
#[derive(Debug)]
enum Kind {
    /// One call object.
    Call,
    /// Mistral's list of call objects.
    Calls,
    /// Mistral's `name[ARGS]` form: the arguments object of this call.
    Args(String),
    /// Generic's `{"tool_calls": [...]}` / `{"content": "..."}`.
    Envelope,
}

/// Where the stream is. `held` is text taken from the input that goes back into the content if
/// no call follows after all: the trigger, and the whitespace before it (dropped with a call).
#[derive(Debug)]
enum State {
    /// Where a bare JSON object may start a call (after whitespace): the output's start for
    /// Llama3 and Generic, or right after a Llama3 call (`after_call`, where `;` also separates).
    Open { after_call: bool },
    /// Plain text, where only the syntax's inline trigger starts a call.
    Text,
    /// Just after a Llama3 or Mistral trigger; the next characters say which form follows.
    Head { held: String },
    /// Inside a Hermes block, up to `</tool_call>`; `searched` bytes hold no start of the tag.
    Block { held: String, searched: usize },
    /// A JSON value at the start of the buffer, collected until its brackets balance.
    Json { held: String, kind: Kind, scan: Scan },
}

/// Finds where a JSON object or array ends without parsing it, so streaming knows when to try
/// serde_json. `at` is how many bytes were read; only the nesting depth is kept, no stack.
#[derive(Debug, Default)]
struct Scan {
    at: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// The opening bracket, while the first non-space byte after it is still unread: that byte
    /// shows early that text is no call (an object must start with a key, a list with `{`).
    first: Option<u8>,
}

enum Scanned {
    More,
    NotCall,
    End(usize),
}

impl Scan {
    fn advance(&mut self, text: &str) -> Scanned {
        let bytes = text.as_bytes();
        while let Some(&b) = bytes.get(self.at) {
            self.at += 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            if let Some(open) = self.first {
                if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                    continue;
                }
                let allowed: &[u8] = if open == b'{' { b"\"}" } else { b"{]" };
                if !allowed.contains(&b) {
                    return Scanned::NotCall;
                }
                self.first = None;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    if self.depth == 0 {
                        self.first = Some(b);
                    }
                    self.depth += 1;
                }
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Scanned::End(self.at);
                    }
                }
                _ if self.depth == 0 => return Scanned::NotCall,
                _ => {}
            }
        }
        Scanned::More
    }
}

/// Streaming recognizer: feed pieces with [`push`](Self::push), then call
/// [`finish`](Self::finish). Content is emitted as soon as it cannot be part of a call (only a
/// possible trigger prefix, and whitespace that may precede a call, are held back); a call once
/// its text is complete. Events joined equal [`parse`] of the joined pieces, for any split.
#[derive(Debug)]
pub struct ToolStream {
    syntax: ToolSyntax,
    state: State,
    /// Text received and not yet emitted.
    buf: String,
    /// A call just ended: whitespace that follows it is dropped.
    skip_ws: bool,
    /// The output has ended: nothing more will arrive to complete what is held.
    eof: bool,
    /// Events found by the current `push` or `finish`.
    out: Vec<ToolEvent>,
}

impl ToolStream {
    pub fn new(syntax: ToolSyntax) -> Self {
        let state = match syntax {
            ToolSyntax::Llama3 | ToolSyntax::Generic => State::Open { after_call: false },
            ToolSyntax::Hermes | ToolSyntax::Mistral => State::Text,
        };
        let (buf, out) = (String::new(), Vec::new());
        ToolStream { syntax, state, buf, skip_ws: false, eof: false, out }
    }

    /// Takes the next piece of output; returns what it completes.
    pub fn push(&mut self, piece: &str) -> Vec<ToolEvent> {
        self.buf.push_str(piece);
        self.run()
    }

    /// Ends the output: everything held back is emitted (an unterminated call as content), and
    /// the stream is ready for a new output.
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        self.eof = true;
        let events = self.run();
        *self = ToolStream::new(self.syntax);
        events
    }

    /// Steps until no step progresses. Each progressing step consumes input, or moves to a state
    /// that consumes input or stops, so this ends.
    fn run(&mut self) -> Vec<ToolEvent> {
        loop {
            let (state, progress) = match std::mem::replace(&mut self.state, State::Text) {
                State::Open { after_call } => self.open(after_call),
                State::Text => self.text(),
                State::Head { held } => self.head(held),
                State::Block { held, searched } => self.block(held, searched),
                State::Json { held, kind, scan } => self.json(held, kind, scan),
            };
            self.state = state;
            if !progress {
                return std::mem::take(&mut self.out);
            }
        }
    }

    fn open(&mut self, after_call: bool) -> (State, bool) {
        let skipped = |c: char| c.is_whitespace() || (after_call && c == ';');
        let Some(i) = self.buf.find(|c: char| !skipped(c)) else {
            if !self.eof {
                return (State::Open { after_call }, false);
            }
            if after_call {
                self.buf.clear();
            }
            return (State::Text, true);
        };
        let starts_object = self.buf[i..].starts_with('{');
        if after_call {
            self.buf.drain(..i);
        }
        if !starts_object {
            return (State::Text, true);
        }
        let held = if after_call { String::new() } else { self.buf.drain(..i).collect() };
        let kind = if self.syntax == ToolSyntax::Generic { Kind::Envelope } else { Kind::Call };
        (State::Json { held, kind, scan: Scan::default() }, true)
    }

    /// Plain text: emits all that cannot begin a call, up to a trigger if there is one.
    fn text(&mut self) -> (State, bool) {
        if self.skip_ws {
            self.buf.drain(..self.buf.len() - self.buf.trim_start().len());
            if self.buf.is_empty() {
                return (State::Text, false);
            }
            self.skip_ws = false;
        }
        let trigger = self.syntax.inline_trigger();
        if let Some((t, at)) = trigger.and_then(|t| Some((t, self.buf.find(t)?))) {
            let body: String = self.buf.drain(..self.buf[..at].trim_end().len()).collect();
            self.emit(&body);
            let held: String = self.buf.drain(..at - body.len() + t.len()).collect();
            if self.syntax == ToolSyntax::Hermes {
                return (State::Block { held, searched: 0 }, true);
            }
            return (State::Head { held }, true);
        }
        let mut end = self.buf.len();
        if let Some(t) = trigger.filter(|_| !self.eof) {
            end = self.buf[..end - partial_suffix(&self.buf, t)].trim_end().len();
        }
        let body: String = self.buf.drain(..end).collect();
        self.emit(&body);
        (State::Text, false)
    }

    fn head(&mut self, mut held: String) -> (State, bool) {
        let mistral = self.syntax == ToolSyntax::Mistral;
        let Some(i) = self.buf.find(|c: char| !c.is_whitespace()) else {
            return if self.eof { self.not_call(held) } else { (State::Head { held }, false) };
        };
        let rest = &self.buf[i..];
        let kind = if rest.starts_with('{') {
            Kind::Call
        } else if mistral && rest.starts_with('[') {
            Kind::Calls
        } else if mistral && rest.starts_with(is_name_char) {
            let len = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
            let after = &rest[len..];
            // Wait for more only while `[ARGS]` may still follow.
            let waiting = after.len() < MISTRAL_ARGS.len() && MISTRAL_ARGS.starts_with(after);
            if len > MAX_NAME || (!after.starts_with(MISTRAL_ARGS) && (!waiting || self.eof)) {
                return self.not_call(held);
            }
            if waiting {
                return (State::Head { held }, false);
            }
            let name = rest[..len].to_string();
            held.extend(self.buf.drain(..i + len + MISTRAL_ARGS.len()));
            return (State::Json { held, kind: Kind::Args(name), scan: Scan::default() }, true);
        } else {
            return self.not_call(held);
        };
        held.extend(self.buf.drain(..i));
        (State::Json { held, kind, scan: Scan::default() }, true)
    }

    fn block(&mut self, held: String, searched: usize) -> (State, bool) {
        let Some(at) = self.buf[searched..].find(HERMES_CLOSE).map(|at| at + searched) else {
            if self.eof {
                let rest = std::mem::take(&mut self.buf);
                self.emit(&(held + &rest));
                return (State::Text, false);
            }
            let mut searched = self.buf.len().saturating_sub(HERMES_CLOSE.len() - 1);
            while !self.buf.is_char_boundary(searched) {
                searched -= 1;
            }
            return (State::Block { held, searched }, false);
        };
        let block: String = self.buf.drain(..at + HERMES_CLOSE.len()).collect();
        let inner = block[..at].trim();
        match serde_json::from_str(inner).ok().and_then(|v| call(&v, self.syntax)) {
            Some(call) => {
                self.out.push(ToolEvent::Call(call));
                self.skip_ws = true;
            }
            None => self.emit(&(held + &block)),
        }
        (State::Text, true)
    }

    fn json(&mut self, held: String, kind: Kind, mut scan: Scan) -> (State, bool) {
        let end = match scan.advance(&self.buf) {
            Scanned::End(end) => end,
            Scanned::NotCall => return self.not_call(held),
            Scanned::More if self.eof => {
                // Unterminated: all of it is content, not read again for later triggers.
                let rest = std::mem::take(&mut self.buf);
                self.emit(&(held + &rest));
                return (State::Text, false);
            }
            Scanned::More => return (State::Json { held, kind, scan }, false),
        };
        let text: String = self.buf.drain(..end).collect();
        let Some(events) = serde_json::from_str(&text).ok().and_then(|v| self.interpret(kind, v))
        else {
            self.emit(&(held + &text));
            return (State::Text, true);
        };
        for event in events {
            match event {
                ToolEvent::Content(text) => self.emit(&text),
                call => self.out.push(call),
            }
        }
        if self.syntax == ToolSyntax::Llama3 {
            return (State::Open { after_call: true }, true);
        }
        self.skip_ws = true;
        (State::Text, true)
    }

    /// The events a complete JSON value of `kind` stands for; `None` if it is not a call.
    fn interpret(&self, kind: Kind, value: Value) -> Option<Vec<ToolEvent>> {
        let syntax = self.syntax;
        let calls = match kind {
            Kind::Call => vec![call(&value, syntax)?],
            Kind::Calls => {
                let list = value.as_array().filter(|l| !l.is_empty())?;
                list.iter().map(|v| call(v, syntax)).collect::<Option<Vec<_>>>()?
            }
            Kind::Args(name) => vec![ToolCall { name, arguments: arguments(&value)? }],
            Kind::Envelope => return envelope(&value),
        };
        Some(calls.into_iter().map(ToolEvent::Call).collect())
    }

    /// Ends a `Head` or `Json` state that turned out not to be a call: the held text goes to
    /// the content and what follows is read again as text.
    fn not_call(&mut self, held: String) -> (State, bool) {
        self.emit(&held);
        (State::Text, true)
    }

    /// Adds content, merged into the previous event when that is content too.
    fn emit(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        match self.out.last_mut() {
            Some(ToolEvent::Content(last)) => last.push_str(text),
            _ => self.out.push(ToolEvent::Content(text.to_string())),
        }
    }
}

/// Length of the longest end of `text` that is a proper prefix of `trigger`: what might become
/// the trigger when more text arrives. Triggers are ASCII, so this is a character boundary.
fn partial_suffix(text: &str, trigger: &str) -> usize {
    (1..trigger.len()).rev().find(|&k| text.ends_with(&trigger[..k])).unwrap_or(0)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// A call object `{"name": ..., <arguments key>: {...}}`, either arguments key accepted.
fn call(value: &Value, syntax: ToolSyntax) -> Option<ToolCall> {
    let object = value.as_object()?;
    let name = object.get("name")?.as_str()?.trim();
    if name.is_empty() {
        return None;
    }
    let other = if syntax.arguments_key() == "arguments" { "parameters" } else { "arguments" };
    let args = object.get(syntax.arguments_key()).or_else(|| object.get(other))?;
    Some(ToolCall { name: name.to_string(), arguments: arguments(args)? })
}

/// Arguments as an object; a JSON string holding an object is read as that object.
fn arguments(value: &Value) -> Option<Value> {
    match value {
        Value::Object(_) => Some(value.clone()),
        Value::String(s) => serde_json::from_str(s).ok().filter(Value::is_object),
        _ => None,
    }
}

/// Generic's envelope: only `tool_calls` (a list of calls) and `content` (a string or null)
/// keys, at least one of them.
fn envelope(value: &Value) -> Option<Vec<ToolEvent>> {
    let object = value.as_object()?;
    if object.is_empty() || object.keys().any(|k| k != "tool_calls" && k != "content") {
        return None;
    }
    let mut events = Vec::new();
    match object.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => events.push(ToolEvent::Content(s.clone())),
        Some(_) => return None,
    }
    if let Some(calls) = object.get("tool_calls") {
        for value in calls.as_array()? {
            events.push(ToolEvent::Call(call(value, ToolSyntax::Generic)?));
        }
    }
    Some(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use ToolSyntax::*;

    fn call(name: &str, arguments: Value) -> ToolCall {
        ToolCall { name: name.to_string(), arguments }
    }

    fn parsed(content: &str, calls: Vec<ToolCall>) -> Parsed {
        Parsed { content: content.to_string(), calls }
    }

    /// Streams `text` split at every character boundary, and one character at a time, and
    /// checks each result equals `parse`; returns `parse`'s result.
    fn parse_everywhere(syntax: ToolSyntax, text: &str) -> Parsed {
        let whole = parse(syntax, text);
        let splits = text.char_indices().skip(1).map(|(at, _)| vec![&text[..at], &text[at..]]);
        let chars = text.char_indices().map(|(at, c)| &text[at..at + c.len_utf8()]).collect();
        for pieces in splits.chain([chars]) {
            let mut stream = ToolStream::new(syntax);
            let mut streamed = Parsed::default();
            pieces.iter().for_each(|piece| streamed.extend(stream.push(piece)));
            streamed.extend(stream.finish());
            assert_eq!(streamed, whole, "{syntax:?} in pieces {pieces:?}");
        }
        whole
    }

    /// Checks that each output holds no call: all of it is content.
    fn all_text(syntax: ToolSyntax, outputs: &[&str]) {
        for text in outputs {
            assert_eq!(parse_everywhere(syntax, text), parsed(text, vec![]), "{syntax:?}");
        }
    }

    #[test]
    fn hermes() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \
                    \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\": \"time\", \"arguments\": \
                    \"{\\\"tz\\\": \\\"CET\\\"}\"}</tool_call>\n";
        let want =
            vec![call("weather", json!({"city": "Paris"})), call("time", json!({"tz": "CET"}))];
        assert_eq!(parse_everywhere(Hermes, text), parsed("Let me check.", want));
        let text = "a <tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call> b";
        assert_eq!(parse_everywhere(Hermes, text), parsed("ab", vec![call("f", json!({}))]));
        let text =
            "<tool_call>bad</tool_call> <tool_call>{\"name\":\"g\",\"arguments\":{}}</tool_call>";
        let want = parsed("<tool_call>bad</tool_call>", vec![call("g", json!({}))]);
        assert_eq!(parse_everywhere(Hermes, text), want);
        all_text(
            Hermes,
            &[
                "x <tool_call>{\"name\": \"f\", \"arguments\": {}</tool_call>",
                "x <tool_call>{\"arguments\": {}}</tool_call>",
                "x <tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",
                "x <tool_call>{\"name\": \"\", \"arguments\": {}}</tool_call>",
                "x <tool_call>{\"name\": \"f\", \"arguments\": \"[1]\"}</tool_call>",
                "x <tool_call>{\"name\": \"f\", \"arguments\": {}}",
                "x <tool_call",
            ],
        );
    }

    #[test]
    fn llama3() {
        let one = "{\"name\": \"f\", \"parameters\": {\"a\": 1}}";
        assert_eq!(parse_everywhere(Llama3, one), parsed("", vec![call("f", json!({"a": 1}))]));
        let text = " <|python_tag|>{\"name\": \"f\", \"arguments\": {}}; {\"name\": \"g\", \
                    \"parameters\": {}}\n{\"name\": \"h\", \"parameters\": {\"s\": \"}{\"}}\nok";
        let want = vec![call("f", json!({})), call("g", json!({})), call("h", json!({"s": "}{"}))];
        assert_eq!(parse_everywhere(Llama3, text), parsed("ok", want));
        let text = "Sure: <|python_tag|>{\"name\": \"f\", \"parameters\": {}}";
        assert_eq!(parse_everywhere(Llama3, text), parsed("Sure:", vec![call("f", json!({}))]));
        all_text(
            Llama3,
            &[
                "The set {1, 2} is small.",
                "{\"name\": \"f\"}",
                "{\"a\": 1} rest",
                "  {not json",
                "{\"name\": \"f\", \"parameters\": {}",
                "<|python_tag|>brave_search.call(query=\"x\")",
                "x {\"name\": \"f\", \"parameters\": {}}",
            ],
        );
    }

    #[test]
    fn mistral() {
        let text = "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"a\": \"[ARGS]\"}}, \
                    {\"name\": \"g\", \"arguments\": {}}]";
        let want = vec![call("f", json!({"a": "[ARGS]"})), call("g", json!({}))];
        assert_eq!(parse_everywhere(Mistral, text), parsed("", want));
        let text =
            "Plan: [TOOL_CALLS]get_weather[ARGS]{\"city\": \"Zürich\"}[TOOL_CALLS]f_2[ARGS]{}";
        let want = vec![call("get_weather", json!({"city": "Zürich"})), call("f_2", json!({}))];
        assert_eq!(parse_everywhere(Mistral, text), parsed("Plan:", want));
        let text = "[TOOL_CALLS][TOOL_CALLS]f[ARGS]{}";
        let want = parsed("[TOOL_CALLS]", vec![call("f", json!({}))]);
        assert_eq!(parse_everywhere(Mistral, text), want);
        all_text(
            Mistral,
            &[
                "[TOOL_CALLS][]",
                "[TOOL_CALLS][{\"name\": \"f\"}]",
                "[TOOL_CALLS]f[ARGS][1]",
                "[TOOL_CALLS]f [ARGS]{}",
                "[TOOL_CALLS]f[ARG",
                "[TOOL_CALLS] hello",
                "[TOOL_CALLS",
            ],
        );
    }

    #[test]
    fn generic() {
        let text = " {\"tool_calls\": [{\"name\": \"f\", \"arguments\": {\"q\": \"日本\"}}]} ";
        let want = parsed("", vec![call("f", json!({"q": "日本"}))]);
        assert_eq!(parse_everywhere(Generic, text), want);
        let text = "{\"content\": \"Hello {there} \\\"you\\\"\"}";
        assert_eq!(parse_everywhere(Generic, text), parsed("Hello {there} \"you\"", vec![]));
        // Only the first object is read.
        let text = "{\"content\": \"a\"} {\"content\": \"b\"}";
        assert_eq!(parse_everywhere(Generic, text), parsed("a{\"content\": \"b\"}", vec![]));
        all_text(Generic, &["{\"answer\": 1}", "{\"content\": 3}", "plain {\"content\": \"x\"}"]);
    }

    #[test]
    fn plain_text_unicode_and_empty() {
        for syntax in [Hermes, Llama3, Mistral, Generic] {
            all_text(syntax, &["", "  héllo 🌍 <tool_ [TOOL_ <|python \n", "{\"c"]);
        }
        let text =
            "日本語 🌍\n<tool_call>{\"name\": \"é\", \"arguments\": {\"k\": \"🌍\"}}</tool_call>";
        let want = parsed("日本語 🌍", vec![call("é", json!({"k": "🌍"}))]);
        assert_eq!(parse_everywhere(Hermes, text), want);
    }

    #[test]
    fn deep_nesting_garbage() {
        let (opens, closes) = ("[".repeat(100_000), "]".repeat(100_000));
        let deep = format!("{{\"name\": \"f\", \"arguments\": {{\"a\": {opens}{closes}}}}}");
        let inputs = [
            (Llama3, "{".repeat(100_000)),
            (Llama3, format!("{{\"a\": {opens}")),
            (Llama3, deep.clone()),
            (Generic, deep.clone()),
            (Hermes, format!("<tool_call>{deep}</tool_call>")),
            (Mistral, format!("[TOOL_CALLS]{opens}")),
            (Mistral, format!("[TOOL_CALLS]f[ARGS]{{\"a\": {opens}{closes}}}")),
        ];
        for (syntax, text) in inputs {
            assert_eq!(parse(syntax, &text), parsed(&text, vec![]), "{syntax:?}");
        }
    }

    #[test]
    fn template_detection_and_frames() {
        assert_eq!(ToolSyntax::from_template("{{- '<tool_call>\\n' }}"), Hermes);
        assert_eq!(ToolSyntax::from_template("[AVAILABLE_TOOLS] [TOOL_CALLS]"), Mistral);
        assert_eq!(ToolSyntax::from_template("{{- '<|python_tag|>' }}"), Llama3);
        let llama = "<|start_header_id|>{% if tools %}\"parameters\": dict{% endif %}";
        assert_eq!(ToolSyntax::from_template(llama), Llama3);
        assert_eq!(ToolSyntax::from_template("<|start_header_id|>{{ content }}"), Generic);
        let triggers = [Hermes, Llama3, Mistral, Generic].map(ToolSyntax::trigger);
        assert_eq!(triggers, ["<tool_call>", "{", "[TOOL_CALLS]", "{"]);
        // A call written in each syntax's frame reads back as that call.
        for syntax in [Hermes, Llama3, Mistral, Generic] {
            let (prefix, suffix) = syntax.call_frame();
            let key = syntax.arguments_key();
            let text = format!("{prefix}{{\"name\": \"f\", \"{key}\": {{\"x\": [1]}}}}{suffix}");
            let want = parsed("", vec![call("f", json!({"x": [1]}))]);
            assert_eq!(parse_everywhere(syntax, &text), want, "{syntax:?}");
        }
    }

    #[test]
    fn stream_emits_text_early() {
        let mut stream = ToolStream::new(Hermes);
        assert_eq!(stream.push("Hi there <tool"), vec![ToolEvent::Content("Hi there".into())]);
        assert_eq!(stream.push("kit> ok"), vec![ToolEvent::Content(" <toolkit> ok".into())]);
        assert_eq!(stream.push(" <tool_call>{\"name\""), vec![]);
        let events = stream.push(": \"f\", \"arguments\": {}}</tool_call>\n\n");
        assert_eq!(events, vec![ToolEvent::Call(call("f", json!({})))]);
        assert_eq!(stream.finish(), vec![]);
        let mut stream = ToolStream::new(Llama3);
        assert_eq!(stream.push("  "), vec![]);
        assert_eq!(stream.push("Yes {"), vec![ToolEvent::Content("  Yes {".into())]);
    }
}
