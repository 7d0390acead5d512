//! Structured output and tool calls as OpenAI's API asks for them (the server's and the browser
//! engine's requests): `response_format` (`text`,
//! `json_object`, `json_schema`), tandem's own `regex` and `grammar` (+ `grammar_syntax`:
//! `gbnf`, the default as llama.cpp's server reads `grammar`, or `lark`), and on the chat API
//! `tools`, `tool_choice` and `parallel_tool_calls`. All of it becomes at most one constraint per
//! request, the tools the chat template sees, and the syntax its calls are read back in.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{Tool, ToolChoice, ToolSyntax};
use crate::constraint::{Constraint, Grammar};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

fn bad(m: impl Into<String>) -> Error {
    Error::InvalidParameter(m.into())
}

/// The fields of a request body that constrain its output.
#[derive(Debug, Deserialize, Default)]
pub struct Fields {
    pub response_format: Option<Value>,
    pub regex: Option<String>,
    pub grammar: Option<String>,
    pub grammar_syntax: Option<String>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
}

/// What a request's fields ask of the engine and of the chat template.
#[derive(Default)]
pub struct Structured {
    pub grammar: Option<Grammar>,
    /// `auto` in the model's own syntax: the text that starts a call, and what holds the rest.
    pub lazy: Option<(&'static str, Grammar)>,
    /// Tools offered (tool_choice not `none`), and how the model writes calls.
    pub tools: Option<(Vec<Tool>, ToolSyntax)>,
}

impl Structured {
    /// The template's `tools` variable (transformers' form), when the template writes calls.
    pub fn template_tools(&self) -> Option<Value> {
        match &self.tools {
            Some((t, syntax)) if *syntax != ToolSyntax::Generic => {
                Some(Value::Array(super::template_tools(t)))
            }
            _ => None,
        }
    }

    /// The system text that teaches a template without tool syntax tandem's generic one.
    pub fn generic_prompt(&self, choice: &ToolChoice) -> Option<String> {
        match &self.tools {
            Some((t, ToolSyntax::Generic)) => Some(super::generic_system_prompt(t, choice)),
            _ => None,
        }
    }

    /// The request's constraint for `tok`'s model of `vocab` logits: its grammar, or the
    /// dormant hold on a call that `auto` wakes when the model starts one.
    pub fn constraint(&self, tok: &Tokenizer, vocab: usize) -> Result<Option<Constraint>> {
        if let Some(g) = &self.grammar {
            return Ok(Some(tok.constrainer(vocab)?.compile(g)?));
        }
        match &self.lazy {
            Some((trigger, rest)) => {
                Ok(Some(tok.constrainer(vocab)?.compile(rest)?.after(trigger)))
            }
            None => Ok(None),
        }
    }

    pub fn syntax(&self) -> Option<ToolSyntax> {
        self.tools.as_ref().map(|(_, s)| *s)
    }
}

impl Fields {
    /// The constraint and tools of a request; `template` is the model's chat template (its
    /// tool syntax), `None` on the completions API (no tools there). Every problem is a 400
    /// naming its field, before anything is queued.
    pub fn resolve(&self, template: Option<&str>) -> Result<(Structured, ToolChoice)> {
        let mut grammars: Vec<(&str, Grammar)> = vec![];
        if let Some(g) = self.response_format.as_ref().map(response_format).transpose()?.flatten() {
            grammars.push(("response_format", g));
        }
        if let Some(rx) = &self.regex {
            grammars.push(("regex", Grammar::Regex(rx.clone())));
        }
        if let Some(src) = &self.grammar {
            let g = match self.grammar_syntax.as_deref().unwrap_or("gbnf") {
                "gbnf" => Grammar::Gbnf(src.clone()),
                "lark" => Grammar::Lark(src.clone()),
                other => {
                    return Err(bad(format!(
                        "grammar_syntax is \"gbnf\" or \"lark\", got {other:?}"
                    )))
                }
            };
            grammars.push(("grammar", g));
        }
        if grammars.len() > 1 {
            let names: Vec<&str> = grammars.iter().map(|g| g.0).collect();
            return Err(bad(format!(
                "give at most one of response_format (json), regex and grammar; got {}",
                names.join(", ")
            )));
        }
        let mut out = Structured { grammar: grammars.pop().map(|g| g.1), lazy: None, tools: None };
        let offered = self.tools.as_deref().unwrap_or_default();
        let choice = match &self.tool_choice {
            None if offered.is_empty() => ToolChoice::None,
            None => ToolChoice::Auto,
            Some(v) => tool_choice(v)?,
        };
        let Some(template) = template else {
            if !offered.is_empty() || self.tool_choice.is_some() {
                return Err(bad("tools: tools are for the chat API"));
            }
            return Ok((out, choice));
        };
        let tools =
            offered.iter().enumerate().map(|(i, t)| tool(i, t)).collect::<Result<Vec<_>>>()?;
        super::validate(&tools, &choice)?;
        if tools.is_empty() || choice == ToolChoice::None {
            return Ok((out, choice));
        }
        let syntax = ToolSyntax::from_template(template);
        let parallel = self.parallel_tool_calls.unwrap_or(true);
        let forced = match (&choice, syntax) {
            // A template without tool syntax answers in tandem's JSON, held to it.
            (ToolChoice::Auto, ToolSyntax::Generic) => Some(generic_auto(&tools, parallel)),
            _ => super::call_grammar(syntax, &tools, &choice, parallel),
        };
        if choice == ToolChoice::Auto && out.grammar.is_none() {
            out.lazy = super::lazy_call_grammar(syntax, &tools, parallel);
        }
        if let Some(g) = forced {
            if out.grammar.is_some() {
                return Err(bad(
                    "a tool call cannot be forced together with response_format, regex or grammar",
                ));
            }
            out.grammar = Some(g);
        }
        out.tools = Some((tools, syntax));
        Ok((out, choice))
    }
}

/// OpenAI's `response_format`: `None` for text.
fn response_format(v: &Value) -> Result<Option<Grammar>> {
    let bad = |m: &str| bad(format!("response_format: {m}"));
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Grammar::JsonObject)),
        Some("json_schema") => {
            let spec =
                v.get("json_schema").ok_or_else(|| bad("json_schema needs `json_schema`"))?;
            let schema = spec.get("schema").ok_or_else(|| bad("`json_schema` needs a `schema`"))?;
            Ok(Some(Grammar::JsonSchema(schema.clone())))
        }
        Some(other) => Err(bad(&format!(
            "the type {other:?} is not supported (text, json_object and json_schema are)"
        ))),
        None => Err(bad("an object with a `type`")),
    }
}

/// OpenAI's `tool_choice`.
fn tool_choice(v: &Value) -> Result<ToolChoice> {
    match v {
        Value::String(s) if s == "none" => Ok(ToolChoice::None),
        Value::String(s) if s == "auto" => Ok(ToolChoice::Auto),
        Value::String(s) if s == "required" => Ok(ToolChoice::Required),
        Value::Object(o) => {
            match o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
                Some(name) => Ok(ToolChoice::Named(name.to_string())),
                None => {
                    Err(bad("tool_choice: {\"type\": \"function\", \"function\": {\"name\": ...}}"))
                }
            }
        }
        _ => Err(bad("tool_choice is \"none\", \"auto\", \"required\" or a function object")),
    }
}

/// One of OpenAI's `tools`: `{"type": "function", "function": {"name", "description",
/// "parameters"}}`; no parameters is an empty object schema.
fn tool(i: usize, v: &Value) -> Result<Tool> {
    let field = format!("tools[{i}]");
    let bad = |m: &str| bad(format!("{field}: {m}"));
    if v.get("type").and_then(Value::as_str) != Some("function") {
        return Err(bad("the type must be \"function\""));
    }
    let f = v.get("function").ok_or_else(|| bad("needs `function`"))?;
    let name = f.get("name").and_then(Value::as_str).ok_or_else(|| bad("needs a function name"))?;
    let description = match f.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d.clone()),
        Some(_) => return Err(bad("the description must be a string")),
    };
    let parameters =
        f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    Ok(Tool { name: name.to_string(), description, parameters })
}

/// `auto` in tandem's generic syntax: calls or a plain answer, as one JSON object.
fn generic_auto(tools: &[Tool], parallel: bool) -> Grammar {
    let Some(Grammar::JsonSchema(calls)) =
        super::call_grammar(ToolSyntax::Generic, tools, &ToolChoice::Required, parallel)
    else {
        unreachable!("Required always gives the generic schema")
    };
    let answer = json!({"type": "object", "properties": {"content": {"type": "string"}},
        "required": ["content"], "additionalProperties": false});
    Grammar::JsonSchema(json!({"anyOf": [calls, answer]}))
}

/// A message's OpenAI `tool_calls` in the form templates read (transformers': arguments as an
/// object, not a JSON string).
pub fn template_tool_calls(i: usize, calls: &[Value]) -> Result<Value> {
    let mut out = Vec::with_capacity(calls.len());
    for (j, c) in calls.iter().enumerate() {
        let field = format!("messages[{i}].tool_calls[{j}]");
        let bad = |m: &str| bad(format!("{field}: {m}"));
        let f = c.get("function").ok_or_else(|| bad("needs `function`"))?;
        let name = f.get("name").and_then(Value::as_str).ok_or_else(|| bad("needs a name"))?;
        let arguments = match f.get("arguments") {
            Some(Value::String(s)) => serde_json::from_str::<Value>(s)
                .map_err(|e| bad(&format!("arguments are not JSON: {e}")))?,
            Some(v @ Value::Object(_)) => v.clone(),
            None => json!({}),
            Some(_) => return Err(bad("arguments must be a JSON string")),
        };
        let mut call =
            json!({"type": "function", "function": {"name": name, "arguments": arguments}});
        if let Some(id) = c.get("id") {
            call["id"] = id.clone();
        }
        out.push(call);
    }
    Ok(Value::Array(out))
}

/// OpenAI's `message.tool_calls` for calls parsed from a choice's text (`choice` numbers the
/// ids apart across choices).
pub fn openai_tool_calls(meta_id: &str, choice: usize, calls: &[super::ToolCall]) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(k, c)| {
            json!({"id": format!("call_{}_{choice}_{k}", meta_id.rsplit('-').next().unwrap_or("0")),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments.to_string()}})
        })
        .collect()
}
