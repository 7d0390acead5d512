//! Chat templates: the Jinja template shipped with the model, rendered with minijinja the way
//! HF `apply_chat_template` renders it with Jinja2.

use crate::{Error, Result};
use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, ErrorKind, State};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

pub(super) fn render(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let mut env = Environment::new();
    // HF renders with trim_blocks and lstrip_blocks on; templates are written for that.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.set_unknown_method_callback(python_method);
    let ctx = minijinja::context! {
        messages => Value::from_serialize(messages),
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    env.render_str(template, ctx).map_err(|e| Error::ChatTemplate(describe(&e)))
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
    _: &State,
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
        minijinja::Error::new(ErrorKind::UnknownMethod, format!("{:?} has no method {method}", value.kind()))
    };
    match value.kind() {
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default();
            let chars: Option<Vec<char>> = arg_str(0)?.map(|c| c.chars().collect());
            let strip_set = |c: char| chars.as_ref().map_or(c.is_whitespace(), |set| set.contains(&c));
            Ok(match method {
                "strip" => Value::from(s.trim_matches(strip_set)),
                "lstrip" => Value::from(s.trim_start_matches(strip_set)),
                "rstrip" => Value::from(s.trim_end_matches(strip_set)),
                "lower" => Value::from(s.to_lowercase()),
                "upper" => Value::from(s.to_uppercase()),
                "startswith" => Value::from(arg_str(0)?.is_some_and(|p| s.starts_with(p))),
                "endswith" => Value::from(arg_str(0)?.is_some_and(|p| s.ends_with(p))),
                "replace" => match (arg_str(0)?, arg_str(1)?) {
                    (Some(from), Some(to)) => Value::from(s.replace(from, to)),
                    _ => return Err(minijinja::Error::new(ErrorKind::MissingArgument, "replace(old, new)")),
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
                Ok(if v.is_undefined() { args.get(1).cloned().unwrap_or(Value::from(())) } else { v })
            }
            _ => Err(unknown()),
        },
        _ => Err(unknown()),
    }
}
