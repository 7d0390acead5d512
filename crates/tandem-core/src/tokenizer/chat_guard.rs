//! Namespaces that contain themselves. `{% set ns.x = ns %}` is the one way a chat template
//! can make a value that holds itself (a namespace is minijinja's only mutable value), and
//! rendering one (`{{ ns }}`, `ns ~ ''`, a comparison) recurses until the stack overflows: a
//! crash no error can catch (the fuzzer found it). So every `{% set a.b = value %}` of a
//! template is rewritten, by its tokens, into `{% set a.b = __tandem_store(a, (value)) %}`,
//! which refuses a value that holds `a` anywhere inside. With no cycle before a store, the
//! value walked is finite, so the walk ends; its nodes count against a budget for the render.

use minijinja::machinery::{tokenize, Token};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Value, ValueKind};
use minijinja::ErrorKind;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The function the rewritten stores call.
pub(super) const STORE: &str = "__tandem_store";

/// Values a render's stores may walk in all: a store checks what it stores, so a template
/// that stores a growing list each message walks the list each time.
const WALK_BUDGET: usize = 4_000_000;

/// `template` with every attribute store wrapped in [`STORE`]; `Err` (a message) for a store
/// into several targets at once with an attribute among them, which tandem does not check.
/// A template the lexer refuses comes back as it is, for the compiler to report.
pub(super) fn guard_stores(template: &str, syntax: SyntaxConfig) -> Result<String, String> {
    let Ok(tokens) = tokenize(template, false, syntax).collect::<Result<Vec<_>, _>>() else {
        return Ok(template.to_string());
    };
    // (offset, text) insertions, in order.
    let mut inserts: Vec<(usize, String)> = Vec::new();
    let mut i = 0;
    while i + 1 < tokens.len() {
        if !matches!((&tokens[i].0, &tokens[i + 1].0), (Token::BlockStart, Token::Ident("set"))) {
            i += 1;
            continue;
        }
        // The target: up to `=` (a store) or the block's end (a block set, which stores text).
        let start = i + 2;
        let mut j = start;
        while j < tokens.len() && !matches!(tokens[j].0, Token::Assign | Token::BlockEnd) {
            j += 1;
        }
        let target = &tokens[start..j.min(tokens.len())];
        let dotted = target.iter().any(|t| matches!(t.0, Token::Dot));
        if j >= tokens.len() || !matches!(tokens[j].0, Token::Assign) || !dotted {
            i = j;
            continue;
        }
        if !target.iter().all(|t| matches!(t.0, Token::Ident(_) | Token::Dot)) {
            let line = tokens[i].1.start_line;
            return Err(format!("line {line}: an attribute assigned together with other targets ({{% set a, ns.b = ... %}}); tandem renders one attribute per set"));
        }
        let last_dot = target.iter().rposition(|t| matches!(t.0, Token::Dot)).expect("dotted");
        let base =
            &template[target[0].1.start_offset as usize..target[last_dot].1.start_offset as usize];
        let mut end = j + 1;
        while end < tokens.len() && !matches!(tokens[end].0, Token::BlockEnd) {
            end += 1;
        }
        if end >= tokens.len() {
            break;
        }
        inserts.push((tokens[j].1.end_offset as usize, format!(" {STORE}({base}, (")));
        inserts.push((tokens[end].1.start_offset as usize, ")) ".to_string()));
        i = end;
    }
    let mut out =
        String::with_capacity(template.len() + inserts.iter().map(|x| x.1.len()).sum::<usize>());
    let mut at = 0;
    for (offset, text) in inserts {
        out.push_str(&template[at..offset]);
        out.push_str(&text);
        at = offset;
    }
    out.push_str(&template[at..]);
    Ok(out)
}

/// The [`STORE`] function for one render: `value` unless it holds `target` or is nested
/// deeper than [`MAX_DEPTH`] (or the walk runs out of the render's budget).
pub(super) fn store_fn(
) -> impl Fn(Value, Value) -> Result<Value, minijinja::Error> + Send + Sync + 'static {
    let budget = Arc::new(AtomicUsize::new(WALK_BUDGET));
    move |target: Value, value: Value| {
        let mut left = budget.load(Ordering::Relaxed);
        let walk = walk(&value, &target, 0, &mut left);
        budget.store(left, Ordering::Relaxed);
        let why = match walk {
            Walk::Clear => return Ok(value),
            Walk::Holds => "a namespace assigned a value that holds the namespace itself (rendering it would never end)".to_string(),
            Walk::TooDeep => format!("a namespace assigned a value nested more than {MAX_DEPTH} deep"),
            Walk::TooMuch => format!("the template's namespace assignments stored more than {WALK_BUDGET} values in all"),
        };
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("{why} (tandem's limit)")))
    }
}

/// Nesting a stored value may have: rendering recurses once per level, as does the walk.
const MAX_DEPTH: usize = 128;

enum Walk {
    Clear,
    Holds,
    TooDeep,
    TooMuch,
}

/// Whether `v` is `target` or holds it, lists, maps and namespaces walked.
fn walk(v: &Value, target: &Value, depth: usize, left: &mut usize) -> Walk {
    let Some(l) = left.checked_sub(1) else { return Walk::TooMuch };
    *left = l;
    if minijinja::tests::is_sameas(v, target) {
        return Walk::Holds;
    }
    let map = match v.kind() {
        ValueKind::Map => true,
        ValueKind::Seq | ValueKind::Iterable => false,
        _ => return Walk::Clear,
    };
    if depth >= MAX_DEPTH {
        return Walk::TooDeep;
    }
    // What cannot be iterated holds nothing a render would reach through it.
    let Ok(items) = v.try_iter() else { return Walk::Clear };
    for item in items {
        let item = if map { v.get_item(&item).unwrap_or_default() } else { item };
        match walk(&item, target, depth + 1, left) {
            Walk::Clear => {}
            other => return other,
        }
    }
    Walk::Clear
}
