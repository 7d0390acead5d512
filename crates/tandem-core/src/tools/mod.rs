//! Tool calling: the functions a request offers the model, how it may use them
//! ([`ToolChoice`]), the constraint that forces a valid call ([`call_grammar`]), and the
//! recognition of the calls a model writes in its own syntax ([`parse`], [`ToolStream`]).

mod parse;
pub mod request;

pub use parse::{parse, Parsed, ToolCall, ToolEvent, ToolStream, ToolSyntax};

use serde_json::{json, Value};

use crate::constraint::Grammar;
use crate::{Error, Result};

/// Most tools one request may offer.
pub const MAX_TOOLS: usize = 128;

/// A function the model may call: its name, what it does, and its arguments' JSON schema (an
/// object schema).
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Value,
}

/// How the model may use the tools (OpenAI's `tool_choice`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// Never: the tools are not shown and the output is plain text.
    None,
    /// The model decides; a call it writes in its syntax is recognized.
    #[default]
    Auto,
    /// At least one call, to any of the tools: decoding is held to a valid call.
    Required,
    /// A call to this tool: decoding is held to a valid call of it.
    Named(String),
}

/// Checks `tools` and `choice` before anything is queued: names of 1 to 64 characters of
/// `[A-Za-z0-9_-]`, each once; parameters an object schema; a named choice among the tools.
pub fn validate(tools: &[Tool], choice: &ToolChoice) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidParameter(m));
    if tools.len() > MAX_TOOLS {
        return bad(format!("tools: at most {MAX_TOOLS} tools, got {}", tools.len()));
    }
    for (i, t) in tools.iter().enumerate() {
        let ok = (1..=64).contains(&t.name.len())
            && t.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return bad(format!(
                "tools[{i}].function.name {:?}: 1 to 64 characters of A-Z, a-z, 0-9, _ and -",
                t.name
            ));
        }
        if tools[..i].iter().any(|o| o.name == t.name) {
            return bad(format!("tools[{i}]: the name {:?} is given twice", t.name));
        }
        let object = match &t.parameters {
            Value::Object(m) => m.get("type").is_none_or(|ty| ty == "object"),
            _ => false,
        };
        if !object {
            return bad(format!(
                "tools[{i}].function.parameters: an object schema ({{\"type\": \"object\", ...}}), got {}",
                t.parameters
            ));
        }
    }
    match choice {
        ToolChoice::Named(n) if !tools.iter().any(|t| &t.name == n) => {
            bad(format!("tool_choice names the function {n:?}, which is not among the tools"))
        }
        ToolChoice::Required | ToolChoice::Named(_) if tools.is_empty() => {
            bad("tool_choice asks for a call but no tools are given".into())
        }
        _ => Ok(()),
    }
}

/// The schema of one call to any of `tools`, as `syntax` writes it: `{"name": <one of
/// them>, <arguments key>: <its parameters>}`.
fn call_schema(syntax: ToolSyntax, tools: &[&Tool]) -> Value {
    let key = syntax.arguments_key();
    let one = |t: &Tool| {
        json!({"type": "object",
            "properties": {"name": {"const": t.name}, key: t.parameters},
            "required": ["name", key], "additionalProperties": false})
    };
    match tools {
        [t] => one(t),
        _ => json!({"anyOf": tools.iter().map(|t| one(t)).collect::<Vec<_>>()}),
    }
}

/// The constraint that forces a valid call for `choice` (`Required`: one of `tools`, `Named`:
/// that one; `parallel`: one or more calls), in `syntax`'s framing; `None` for `None` and
/// `Auto`. For `Generic` the whole output is tandem's `{"tool_calls": [...]}` object.
pub fn call_grammar(
    syntax: ToolSyntax,
    tools: &[Tool],
    choice: &ToolChoice,
    parallel: bool,
) -> Option<Grammar> {
    let chosen: Vec<&Tool> = match choice {
        ToolChoice::None | ToolChoice::Auto => return None,
        ToolChoice::Required => tools.iter().collect(),
        ToolChoice::Named(n) => tools.iter().filter(|t| &t.name == n).collect(),
    };
    let call = crate::constraint::with_options(call_schema(syntax, &chosen));
    let max = if parallel { json!(null) } else { json!(1) };
    Some(match syntax {
        ToolSyntax::Generic => {
            let mut calls = json!({"type": "array", "items": call, "minItems": 1});
            if !parallel {
                calls["maxItems"] = max;
            }
            Grammar::JsonSchema(json!({"type": "object", "properties": {"tool_calls": calls},
                "required": ["tool_calls"], "additionalProperties": false}))
        }
        ToolSyntax::Mistral => {
            let mut calls = json!({"type": "array", "items": call, "minItems": 1});
            if !parallel {
                calls["maxItems"] = max;
            }
            Grammar::Lark(format!("start: \"[TOOL_CALLS]\" calls\ncalls: %json {calls}\n"))
        }
        ToolSyntax::Hermes | ToolSyntax::Llama3 => {
            let (open, close) = syntax.call_frame();
            let lit = |s: &str| serde_json::to_string(s).expect("a string serializes");
            let block = format!("{} call {}", lit(open), lit(close));
            let repeat =
                if parallel { format!(" ({} {block})*", lit("\n")) } else { String::new() };
            Grammar::Lark(format!("start: {block}{repeat}\ncall: %json {call}\n"))
        }
    })
}

/// What `auto` holds a call to once the model starts one in its own syntax: the text that
/// starts a call, and the grammar of what follows it (the rest of that call, and more calls
/// with `parallel`). `None` for tandem's generic syntax, which is held whole instead.
pub fn lazy_call_grammar(
    syntax: ToolSyntax,
    tools: &[Tool],
    parallel: bool,
) -> Option<(&'static str, Grammar)> {
    let all: Vec<&Tool> = tools.iter().collect();
    let call = crate::constraint::with_options(call_schema(syntax, &all));
    let lit = |s: &str| serde_json::to_string(s).expect("a string serializes");
    match syntax {
        ToolSyntax::Generic => None,
        ToolSyntax::Hermes => {
            let (open, close) = syntax.call_frame();
            let more = if parallel {
                format!(" ({} {} call {})*", lit("\n"), lit(open), lit(close))
            } else {
                String::new()
            };
            let rest =
                format!("start: {} call {}{more}\ncall: %json {call}\n", lit("\n"), lit(close));
            Some((syntax.trigger(), Grammar::Lark(rest)))
        }
        ToolSyntax::Mistral => {
            let mut calls = json!({"type": "array", "items": call, "minItems": 1});
            if !parallel {
                calls["maxItems"] = json!(1);
            }
            Some((syntax.trigger(), Grammar::JsonSchema(calls)))
        }
        ToolSyntax::Llama3 => Some(("<|python_tag|>", Grammar::JsonSchema(call))),
    }
}

/// The tools as a chat template receives them (transformers' `tools`: OpenAI's
/// `{"type": "function", "function": {...}}` objects).
pub fn template_tools(tools: &[Tool]) -> Vec<Value> {
    tools
        .iter()
        .map(|t| {
            let mut f = json!({"name": t.name, "parameters": t.parameters});
            if let Some(d) = &t.description {
                f["description"] = json!(d);
            }
            json!({"type": "function", "function": f})
        })
        .collect()
}

/// The system text that teaches tandem's generic tool syntax to a model whose template has
/// none: the tools and the JSON shape to answer in.
pub fn generic_system_prompt(tools: &[Tool], choice: &ToolChoice) -> String {
    let list = serde_json::to_string(&template_tools(tools)).unwrap_or_default();
    let how = match choice {
        ToolChoice::Auto => {
            "To call tools, answer with a JSON object {\"tool_calls\": [{\"name\": ..., \
             \"arguments\": {...}}]}; to answer directly, with {\"content\": \"...\"}."
        }
        _ => "Answer with a JSON object {\"tool_calls\": [{\"name\": ..., \"arguments\": {...}}]}.",
    };
    format!("You can call these tools:\n{list}\n{how}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Tool {
        Tool {
            name: "get_weather".into(),
            description: Some("Weather in a city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}),
        }
    }

    #[test]
    fn bad_tools_and_choices_are_named() {
        let ok = [weather()];
        assert!(validate(&ok, &ToolChoice::Auto).is_ok());
        let e = validate(&ok, &ToolChoice::Named("nope".into())).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        let bad = Tool { parameters: json!({"type": "string"}), ..weather() };
        assert!(validate(&[bad], &ToolChoice::Auto)
            .unwrap_err()
            .to_string()
            .contains("parameters"));
        let twice = [weather(), weather()];
        assert!(validate(&twice, &ToolChoice::Auto).unwrap_err().to_string().contains("twice"));
        let name = Tool { name: "a b".into(), ..weather() };
        assert!(validate(&[name], &ToolChoice::Auto).is_err());
        assert!(validate(&[], &ToolChoice::Required).is_err());
    }

    #[test]
    fn forced_calls_are_framed_in_the_models_syntax() {
        let tools = [weather()];
        assert_eq!(call_grammar(ToolSyntax::Hermes, &tools, &ToolChoice::Auto, true), None);
        let Some(Grammar::Lark(g)) =
            call_grammar(ToolSyntax::Hermes, &tools, &ToolChoice::Required, false)
        else {
            panic!("a Lark grammar")
        };
        assert!(g.starts_with("start: \"<tool_call>\\n\" call \"\\n</tool_call>\"\n"), "{g}");
        assert!(g.contains("\"const\":\"get_weather\""), "{g}");
        let Some(Grammar::JsonSchema(s)) =
            call_grammar(ToolSyntax::Generic, &tools, &ToolChoice::Required, false)
        else {
            panic!("a schema")
        };
        assert_eq!(s["properties"]["tool_calls"]["maxItems"], 1);
    }
}
