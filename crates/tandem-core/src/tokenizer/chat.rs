//! Chat templates: the Jinja template shipped with the model, rendered with minijinja the way
//! HF `apply_chat_template` renders it with Jinja2.

use crate::{Error, Result};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{Environment, ErrorKind, State};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant's calls, as transformers passes them to a template: `[{"type":
    /// "function", "function": {"name": ..., "arguments": {...}}}]` (arguments an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// A tool message: the call it answers, and the function's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }
}

/// Variables a chat template gets beyond `messages`, `add_generation_prompt` and the special
/// tokens: the keyword arguments HF's `apply_chat_template` passes through to the template
/// (Qwen3's `enable_thinking`), which vLLM's server takes as `chat_template_kwargs`.
pub type ChatTemplateKwargs = serde_json::Map<String, serde_json::Value>;

/// Names a [`ChatTemplateKwargs`] may not set: HF passes the first two itself (Python refuses
/// a keyword given twice); the last is the guard every namespace store calls (chat_guard.rs).
const RESERVED_KWARGS: &[&str] = &["messages", "add_generation_prompt", super::chat_guard::STORE];

/// The longest chat template tandem compiles, in bytes; real ones have a few kilobytes, the
/// largest (tool-calling ones) tens of kilobytes.
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;

/// Fuel for one render: minijinja charges one unit per instruction and per 64 bytes of data it
/// builds (strings, lists, output), and checks allocations of known size before making them.
/// A template comes from a model file, so from anyone; fuel stops an endless loop, a runaway
/// string or a huge list with an error. Real templates take a few dozen units per message
/// (SmolLM2's ChatML about 20) plus their output's bytes / 64, so this allows conversations of
/// tens of thousands of messages, far past any context.
pub const TEMPLATE_FUEL: u64 = 2_000_000;

/// The most bytes a render may produce, and that a string method or `tojson` may build: the
/// rendered prompt is tokenized next, which refuses more than this anyway.
pub const MAX_RENDERED_BYTES: usize = super::MAX_TEXT_BYTES;

/// The widest `tojson` indent: minijinja serializes before it charges fuel, so an indent of
/// 10^9 would build gigabytes first.
const MAX_INDENT: usize = 256;

pub(super) fn render(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
    kwargs: &ChatTemplateKwargs,
) -> Result<String> {
    if let Some(name) = RESERVED_KWARGS.iter().find(|k| kwargs.contains_key(**k)) {
        return Err(Error::ChatTemplate(format!(
            "`{name}` cannot be a template keyword argument: tandem sets it itself"
        )));
    }
    if template.len() > MAX_TEMPLATE_BYTES {
        return Err(Error::ChatTemplate(format!(
            "the template has {} bytes, more than the {MAX_TEMPLATE_BYTES} tandem compiles",
            template.len()
        )));
    }
    let mut env = Environment::new();
    // HF renders with trim_blocks and lstrip_blocks on; templates are written for that.
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| Error::ChatTemplate(describe(&e)))?;
    let template =
        super::chat_guard::guard_stores(template, syntax.clone()).map_err(Error::ChatTemplate)?;
    env.set_syntax(syntax);
    env.add_function(super::chat_guard::STORE, super::chat_guard::store_fn());
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.set_unknown_method_callback(python_method);
    // minijinja's tojson serializes the whole value before charging fuel for it.
    env.add_filter("tojson", tojson);
    // As in HF, a keyword argument may override a special token's text.
    let mut ctx = std::collections::BTreeMap::from([
        ("bos_token".to_string(), Value::from(bos_token)),
        ("eos_token".to_string(), Value::from(eos_token)),
    ]);
    for (name, value) in kwargs {
        ctx.insert(name.clone(), Value::from(Serde(value)));
    }
    ctx.insert("messages".into(), Value::from(Serde(messages)));
    ctx.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
    let compiled =
        env.template_from_str(&template).map_err(|e| Error::ChatTemplate(describe(&e)))?;
    let mut out = Capped(Vec::new());
    // Only whether it worked: the captured state borrows the environment.
    let rendered = compiled.render_captured_to(ctx, &mut out).map(|_| ());
    match rendered {
        Ok(_) => String::from_utf8(out.0).map_err(|_| Error::ChatTemplate("the template rendered invalid UTF-8".into())),
        Err(_) if out.0.len() > MAX_RENDERED_BYTES => Err(Error::ChatTemplate(format!(
            "the rendered prompt exceeds {MAX_RENDERED_BYTES} bytes ({} MiB)",
            MAX_RENDERED_BYTES >> 20
        ))),
        Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(Error::ChatTemplate(format!(
            "the template used up its fuel of {TEMPLATE_FUEL} (a unit per instruction and per 64 bytes built: an endless loop or a huge string?): {}",
            describe(&e)
        ))),
        Err(e) => Err(Error::ChatTemplate(describe(&e))),
    }
}

/// Output that refuses to grow past [`MAX_RENDERED_BYTES`] (it keeps one byte more, so the
/// caller can tell why writing failed).
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_RENDERED_BYTES {
            self.0.resize(MAX_RENDERED_BYTES + 1, 0);
            return Err(std::io::Error::other("the rendered prompt is too long"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn too_large(what: &str) -> minijinja::Error {
    minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("{what} (tandem's limits: tojson indent up to {MAX_INDENT}, strings up to {MAX_RENDERED_BYTES} bytes)"),
    )
}

/// minijinja's `tojson`, refused up front when its result would pass the render's limit: the
/// indent is bounded, and the value is walked (items and string bytes counted, stopping at the
/// limit) before it is serialized. A list repeated 10^8 times is one small value until then.
fn tojson(
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let width = match &indent {
        Some(v) => v.as_usize(),
        None => kwargs.peek::<Option<Value>>("indent")?.and_then(|v| v.as_usize()),
    };
    if let Some(w) = width.filter(|&w| w > MAX_INDENT) {
        return Err(too_large(&format!("tojson indent {w}")));
    }
    let mut budget = MAX_RENDERED_BYTES;
    if !fits(value, &mut budget, 0) {
        return Err(too_large("tojson of a value this large"));
    }
    let json = minijinja::filters::tojson(value, indent, kwargs)?;
    if json.as_str().is_some_and(|s| s.len() > MAX_RENDERED_BYTES) {
        return Err(too_large("tojson result"));
    }
    Ok(json)
}

/// Whether `v` serializes in about `budget` bytes: 8 per item, a string's bytes, at most 64
/// levels deep (serialization recurses).
fn fits(v: &Value, budget: &mut usize, depth: usize) -> bool {
    let cost = 8 + v.as_str().map_or(0, str::len);
    if depth > 64 || *budget < cost {
        return false;
    }
    *budget -= cost;
    match v.kind() {
        ValueKind::Seq | ValueKind::Iterable => {
            v.try_iter().is_ok_and(|mut items| items.all(|x| fits(&x, budget, depth + 1)))
        }
        ValueKind::Map => v.try_iter().is_ok_and(|mut keys| {
            keys.all(|k| {
                fits(&k, budget, depth + 1)
                    && v.get_item(&k).is_ok_and(|x| fits(&x, budget, depth + 1))
            })
        }),
        _ => true,
    }
}

/// minijinja's Display leaves out the cause chain; the line number and cause are what a user
/// needs to see which part of the template failed.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

/// The Python str/dict methods HF templates call (`message['content'].strip()`,
/// `.startswith(..)`, `tools.items()`), which Jinja2 gets from Python and minijinja lacks.
fn python_method(
    _: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    let arg_str = |i: usize| -> std::result::Result<Option<&str>, minijinja::Error> {
        match args.get(i) {
            None => Ok(None),
            Some(v) if v.is_none() || v.is_undefined() => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("{method}() expects a string argument"),
                )
            }),
        }
    };
    let unknown = || {
        minijinja::Error::new(
            ErrorKind::UnknownMethod,
            format!("{:?} has no method {method}", value.kind()),
        )
    };
    match value.kind() {
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default();
            let chars: Option<Vec<char>> = arg_str(0)?.map(|c| c.chars().collect());
            let strip_set =
                |c: char| chars.as_ref().map_or(c.is_whitespace(), |set| set.contains(&c));
            Ok(match method {
                "strip" => Value::from(s.trim_matches(strip_set)),
                "lstrip" => Value::from(s.trim_start_matches(strip_set)),
                "rstrip" => Value::from(s.trim_end_matches(strip_set)),
                "lower" => Value::from(s.to_lowercase()),
                "upper" => Value::from(s.to_uppercase()),
                "startswith" => Value::from(arg_str(0)?.is_some_and(|p| s.starts_with(p))),
                "endswith" => Value::from(arg_str(0)?.is_some_and(|p| s.ends_with(p))),
                "replace" => match (arg_str(0)?, arg_str(1)?) {
                    (Some(from), Some(to)) => {
                        let n = if from.is_empty() {
                            s.chars().count() + 1
                        } else {
                            s.matches(from).count()
                        };
                        if s.len().saturating_add(n.saturating_mul(to.len())) > MAX_RENDERED_BYTES {
                            return Err(too_large("replace() result"));
                        }
                        Value::from(s.replace(from, to))
                    }
                    _ => {
                        return Err(minijinja::Error::new(
                            ErrorKind::MissingArgument,
                            "replace(old, new)",
                        ))
                    }
                },
                "split" => {
                    let parts: Vec<Value> = match arg_str(0)? {
                        Some(sep) if !sep.is_empty() => s.split(sep).map(Value::from).collect(),
                        _ => s.split_whitespace().map(Value::from).collect(),
                    };
                    Value::from(parts)
                }
                _ => return Err(unknown()),
            })
        }
        ValueKind::Map => match method {
            "items" => {
                let mut out = Vec::new();
                for k in value.try_iter()? {
                    let v = value.get_item(&k)?;
                    out.push(Value::from(vec![k, v]));
                }
                Ok(Value::from(out))
            }
            "keys" => Ok(Value::from(value.try_iter()?.collect::<Vec<_>>())),
            "values" => {
                let vals: std::result::Result<Vec<_>, _> =
                    value.try_iter()?.map(|k| value.get_item(&k)).collect();
                Ok(Value::from(vals?))
            }
            "get" => {
                let key = args.first().cloned().unwrap_or_default();
                let v = value.get_item(&key)?;
                Ok(if v.is_undefined() {
                    args.get(1).cloned().unwrap_or(Value::from(()))
                } else {
                    v
                })
            }
            _ => Err(unknown()),
        },
        _ => Err(unknown()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_with(template: &str, kwargs: &[(&str, serde_json::Value)]) -> Result<String> {
        let kwargs: ChatTemplateKwargs =
            kwargs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        render(template, &[ChatMessage::new("user", "hi")], true, "<s>", "</s>", &kwargs)
    }

    #[test]
    fn kwargs_reach_the_template_and_may_override_special_tokens() {
        let t = "{{ bos_token }}{% if enable_thinking is defined and enable_thinking is false %}off{% endif %}{{ depth.n + 1 }}";
        let out = render_with(
            t,
            &[
                ("enable_thinking", serde_json::json!(false)),
                ("depth", serde_json::json!({"n": 2})),
                ("bos_token", serde_json::json!("[B]")),
            ],
        );
        assert_eq!(out.unwrap(), "[B]off3");
    }

    #[test]
    fn kwargs_may_not_replace_what_tandem_passes() {
        for name in RESERVED_KWARGS {
            let err = render_with("{{ messages }}", &[(name, serde_json::json!(true))]);
            assert!(matches!(err, Err(Error::ChatTemplate(ref m)) if m.contains(name)), "{err:?}");
        }
    }
}
