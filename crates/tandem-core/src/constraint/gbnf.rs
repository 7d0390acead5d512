//! GBNF, llama.cpp's grammar format, translated into the Lark dialect llguidance reads, so a
//! request may constrain output with either syntax through one engine.
//!
//! GBNF is matched character by character: a literal `"ab"` is the two characters `a`, `b`, and
//! nothing else splits the text. llguidance's Lark instead hands each literal and regex to a
//! lexer that takes the longest match, so `"a" "ab" | "aa" "c"` written as is would reject `aab`
//! (the lexer commits to `aa`). The translation therefore emits every character as its own
//! lexeme: literals become sequences of one-character strings, classes and `.` one-character
//! regexes. No lexeme is then a prefix of another (UTF-8 is prefix-free) and the lexer's choice
//! never changes what the grammar accepts. Every rule stays a lowercase (parser) rule and nothing
//! is `%ignore`d, so no text is skipped between characters.
//!
//! Rule names map to `r_<name>` with `-` as `_` (GBNF names have no `_`, so this stays one to
//! one); a name with capitals, which Lark rule names cannot hold, maps to `u<index>_<lowercase>`,
//! unique by its position in the file. The start rule is `start: r_root`.

use std::collections::HashMap;
use std::fmt::{self, Write as _};

/// Largest bound accepted in `{m,n}`: a bound is unrolled into copies by the engine, so a huge
/// one is a mistake or an attack, never a grammar.
const MAX_REPEAT: u32 = 10_000;

/// Deepest parenthesis nesting emitted. llguidance's Lark parser refuses nesting of about 30
/// levels (the rule itself counts as one), so deeper input is refused here, with a position.
const MAX_NESTING: usize = 24;

/// Why a grammar was refused, at a 1-based line and column (columns count characters).
#[derive(Debug, Clone, PartialEq)]
pub struct GbnfError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for GbnfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for GbnfError {}

/// A place in the source, 1-based.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pos {
    line: usize,
    column: usize,
}

impl Pos {
    fn err(self, message: impl Into<String>) -> GbnfError {
        GbnfError { line: self.line, column: self.column, message: message.into() }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Define,
    Literal(Vec<char>),
    /// Inclusive character ranges; `negated` for `[^...]`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Any,
    Open,
    Close,
    Bar,
    /// `*`, `+` or `?`.
    Op(char),
    /// `{m}`, `{m,}`, `{m,n}` (also `{,n}`), bounds checked against `MAX_REPEAT` and each other.
    Repeat(u32, Option<u32>),
}

#[derive(Debug)]
struct Token {
    tok: Tok,
    pos: Pos,
    /// First token on its line: only there may a rule definition begin.
    starts_line: bool,
}

/// Splits source text into tokens; never recurses, so any input length is safe.
struct Lexer {
    chars: Vec<char>,
    at: usize,
    pos: Pos,
}

impl Lexer {
    fn new(src: &str) -> Self {
        Lexer { chars: src.chars().collect(), at: 0, pos: Pos { line: 1, column: 1 } }
    }

    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.at + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.at += 1;
        if c == '\n' {
            self.pos = Pos { line: self.pos.line + 1, column: 1 };
        } else {
            self.pos.column += 1;
        }
        Some(c)
    }

    fn tokens(mut self) -> Result<Vec<Token>, GbnfError> {
        let mut out = Vec::new();
        let mut starts_line = true;
        while let Some(c) = self.peek(0) {
            if c == '#' {
                self.take_while(|c| c != '\n');
            } else if c.is_whitespace() {
                starts_line |= c == '\n';
                self.bump();
            } else {
                let pos = self.pos;
                let tok = self.token(pos)?;
                out.push(Token { tok, pos, starts_line });
                starts_line = false;
            }
        }
        Ok(out)
    }

    /// One token starting at `pos`, which holds a character that is neither space nor comment.
    fn token(&mut self, pos: Pos) -> Result<Tok, GbnfError> {
        let Some(c) = self.bump() else { return Err(pos.err("unexpected end of input")) };
        Ok(match c {
            '(' => Tok::Open,
            ')' => Tok::Close,
            '|' => Tok::Bar,
            '.' => Tok::Any,
            '*' | '+' | '?' => Tok::Op(c),
            '{' => self.repeat(pos)?,
            '"' => self.literal(pos)?,
            '[' => self.class(pos)?,
            ':' if self.peek(0) == Some(':') && self.peek(1) == Some('=') => {
                self.bump();
                self.bump();
                Tok::Define
            }
            c if is_name_char(c) => Tok::Name(format!("{c}{}", self.take_while(is_name_char))),
            c => return Err(pos.err(format!("unexpected character {c:?}"))),
        })
    }

    fn literal(&mut self, start: Pos) -> Result<Tok, GbnfError> {
        let mut chars = Vec::new();
        loop {
            let pos = self.pos;
            match self.bump() {
                None => return Err(start.err("unterminated string literal")),
                Some('"') => return Ok(Tok::Literal(chars)),
                Some('\\') => chars.push(self.escape(pos, start, "string literal")?),
                Some(c) => chars.push(c),
            }
        }
    }

    fn class(&mut self, start: Pos) -> Result<Tok, GbnfError> {
        let negated = self.peek(0) == Some('^');
        if negated {
            self.bump();
        }
        let mut ranges = Vec::new();
        loop {
            if self.peek(0) == Some(']') {
                self.bump();
                break;
            }
            let lo = self.class_char(start)?;
            // As in llama.cpp, `-` makes a range unless it ends the class (`[a-]` is `a`, `-`).
            let hi = if self.peek(0) == Some('-') && !matches!(self.peek(1), Some(']') | None) {
                let dash = self.pos;
                self.bump();
                let hi = self.class_char(start)?;
                if hi < lo {
                    return Err(dash.err(format!("character range {lo:?}-{hi:?} is reversed")));
                }
                hi
            } else {
                lo
            };
            ranges.push((lo, hi));
        }
        if ranges.is_empty() {
            return Err(start.err("empty character class"));
        }
        Ok(Tok::Class { negated, ranges })
    }

    fn class_char(&mut self, start: Pos) -> Result<char, GbnfError> {
        let pos = self.pos;
        match self.bump() {
            None => Err(start.err("unterminated character class")),
            Some('\\') => self.escape(pos, start, "character class"),
            Some(c) => Ok(c),
        }
    }

    /// The character a backslash escape (backslash at `pos`, already read) stands for.
    fn escape(&mut self, pos: Pos, start: Pos, what: &str) -> Result<char, GbnfError> {
        let Some(c) = self.bump() else { return Err(start.err(format!("unterminated {what}"))) };
        let digits = match c {
            'n' => return Ok('\n'),
            'r' => return Ok('\r'),
            't' => return Ok('\t'),
            '\\' | '"' | '[' | ']' => return Ok(c),
            'x' => 2,
            'u' => 4,
            'U' => 8,
            c => return Err(pos.err(format!("unknown escape \\{c}"))),
        };
        let mut value = 0u32;
        for _ in 0..digits {
            let Some(d) = self.peek(0).and_then(|c| c.to_digit(16)) else {
                return Err(pos.err(format!("escape \\{c} needs {digits} hex digits")));
            };
            self.bump();
            value = value * 16 + d;
        }
        char::from_u32(value)
            .ok_or_else(|| pos.err(format!("escape \\{c} gives U+{value:X}, not a character")))
    }

    /// `{m}`, `{m,}`, `{m,n}` or `{,n}`, with `{` at `start` already read; spaces allowed inside.
    fn repeat(&mut self, start: Pos) -> Result<Tok, GbnfError> {
        let min = self.number(start)?;
        let max = if self.peek(0) == Some(',') {
            self.bump();
            self.number(start)?
        } else {
            Some(min.ok_or_else(|| start.err("repetition needs a count: {m}, {m,} or {m,n}"))?)
        };
        if self.bump() != Some('}') {
            return Err(start.err("repetition must be {m}, {m,} or {m,n}"));
        }
        let min = min.unwrap_or(0);
        if let Some(max) = max.filter(|&max| max < min) {
            return Err(start.err(format!("repetition bounds reversed: {min} > {max}")));
        }
        Ok(Tok::Repeat(min, max))
    }

    /// An optional decimal number within a repetition, surrounded by optional spaces.
    fn number(&mut self, start: Pos) -> Result<Option<u32>, GbnfError> {
        self.take_while(|c| c == ' ' || c == '\t');
        let digits = self.take_while(|c| c.is_ascii_digit());
        self.take_while(|c| c == ' ' || c == '\t');
        if digits.is_empty() {
            return Ok(None);
        }
        match digits.parse::<u32>() {
            Ok(n) if n <= MAX_REPEAT => Ok(Some(n)),
            _ => Err(start.err(format!("repetition bound above {MAX_REPEAT}"))),
        }
    }

    /// Reads characters while `keep` holds; returns them.
    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> String {
        let mut taken = String::new();
        while let Some(c) = self.peek(0).filter(|&c| keep(c)) {
            taken.push(c);
            self.bump();
        }
        taken
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

/// The Lark rule name for GBNF rule `name`, the `index`-th rule of the file.
fn lark_name(name: &str, index: usize) -> String {
    let lower = name.to_ascii_lowercase().replace('-', "_");
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        format!("u{index}_{lower}")
    } else {
        format!("r_{lower}")
    }
}

/// Translates GBNF source into a Lark grammar for llguidance whose `start` matches exactly the
/// strings GBNF's `root` does. Every malformed input is an error with its position.
pub fn gbnf_to_lark(src: &str) -> Result<String, GbnfError> {
    let tokens = Lexer::new(src).tokens()?;
    let start = Pos { line: 1, column: 1 };
    if tokens.is_empty() {
        return Err(start.err("empty grammar: no rules"));
    }
    // A rule is `name ::=` at the start of a line and everything up to the next such pair.
    let is_head = |i: usize| {
        matches!(tokens[i].tok, Tok::Name(_))
            && tokens.get(i + 1).is_some_and(|t| t.tok == Tok::Define)
    };
    let mut rules: Vec<(&str, Pos, &[Token])> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let Tok::Name(name) = &tokens[i].tok else {
            return Err(tokens[i].pos.err("expected a rule definition `name ::= ...`"));
        };
        if !is_head(i) {
            return Err(tokens[i].pos.err("expected `::=` after the rule name"));
        }
        let mut end = i + 2;
        while end < tokens.len() && !is_head(end) {
            end += 1;
        }
        if end < tokens.len() && !tokens[end].starts_line {
            return Err(tokens[end].pos.err("a rule definition must begin a line"));
        }
        rules.push((name, tokens[i].pos, &tokens[i + 2..end]));
        i = end;
    }

    let mut names: HashMap<&str, String> = HashMap::new();
    for (index, &(name, pos, _)) in rules.iter().enumerate() {
        if names.insert(name, lark_name(name, index)).is_some() {
            return Err(pos.err(format!("rule `{name}` is defined twice")));
        }
    }
    if !names.contains_key("root") {
        return Err(start.err("no `root` rule"));
    }
    let mut out = String::from("start: r_root\n");
    for &(name, pos, body) in &rules {
        let text = translate_body(body, &names)?;
        if nesting(&text) > MAX_NESTING {
            let msg = format!("rule `{name}` nests groups deeper than {MAX_NESTING} levels");
            return Err(pos.err(msg));
        }
        let _ = writeln!(out, "{}: {text}", names.get(name).map_or("", String::as_str));
    }
    Ok(out)
}

/// The operand a postfix operator would apply to: where it starts in the output, and whether it
/// must be put in parentheses first (a multi-character literal, or already repeated).
struct Operand {
    start: usize,
    wrap: bool,
}

/// One rule body in Lark, on one line (Lark ends a rule at a newline).
fn translate_body(body: &[Token], names: &HashMap<&str, String>) -> Result<String, GbnfError> {
    let mut out = String::new();
    let mut open: Vec<(usize, Pos)> = Vec::new();
    let mut operand: Option<Operand> = None;
    for token in body {
        let pos = token.pos;
        match &token.tok {
            Tok::Name(name) => {
                let lark = names.get(name.as_str());
                let lark = lark.ok_or_else(|| pos.err(format!("undefined rule `{name}`")))?;
                operand = Some(item(&mut out, lark, false));
            }
            Tok::Literal(chars) => operand = Some(item(&mut out, &literal(chars), chars.len() > 1)),
            Tok::Class { negated, ranges } => {
                operand = Some(item(&mut out, &class(*negated, ranges), false));
            }
            Tok::Any => operand = Some(item(&mut out, "/(?s:.)/", false)),
            Tok::Open => {
                open.push((separate(&mut out), pos));
                out.push('(');
                operand = None;
            }
            Tok::Close => {
                let (start, _) = open.pop().ok_or_else(|| pos.err("`)` without `(`"))?;
                out.push(')');
                operand = Some(Operand { start, wrap: false });
            }
            Tok::Bar => {
                separate(&mut out);
                out.push('|');
                operand = None;
            }
            Tok::Op(op) => {
                let target =
                    operand.as_mut().ok_or_else(|| pos.err(format!("`{op}` follows nothing")))?;
                wrap(&mut out, target);
                out.push(*op);
            }
            Tok::Repeat(min, max) => {
                let target =
                    operand.as_mut().ok_or_else(|| pos.err("repetition follows nothing"))?;
                if *max == Some(0) {
                    // Lark refuses an upper bound of 0; zero copies is the empty string.
                    out.truncate(target.start);
                    out.push_str("\"\"");
                    target.wrap = true;
                    continue;
                }
                wrap(&mut out, target);
                let _ = match max {
                    Some(max) if max == min => write!(out, "{{{min}}}"),
                    Some(max) => write!(out, "{{{min},{max}}}"),
                    None => write!(out, "{{{min},}}"),
                };
            }
            Tok::Define => return Err(pos.err("unexpected `::=`")),
        }
    }
    match open.last() {
        Some((_, pos)) => Err(pos.err("`(` is never closed")),
        None => Ok(out),
    }
}

/// Adds the space before the next item (none at the start or after `(`); returns where it goes.
fn separate(out: &mut String) -> usize {
    if !out.is_empty() && !out.ends_with('(') {
        out.push(' ');
    }
    out.len()
}

/// Appends an item that a postfix may then apply to.
fn item(out: &mut String, text: &str, wrap: bool) -> Operand {
    let start = separate(out);
    out.push_str(text);
    Operand { start, wrap }
}

/// Parenthesizes `target` if a postfix cannot apply to it directly; after the postfix is added,
/// another one would need parentheses (Lark takes one operator per item).
fn wrap(out: &mut String, target: &mut Operand) {
    if target.wrap {
        out.insert(target.start, '(');
        out.push(')');
    }
    target.wrap = true;
}

/// A literal as one-character Lark strings (see the module docs for why), `""` when empty.
fn literal(chars: &[char]) -> String {
    let mut out = String::new();
    for &c in chars {
        out.push_str(if out.is_empty() { "\"" } else { " \"" });
        // Lark strings use JSON escapes and refuse raw control characters.
        let _ = match c {
            '"' | '\\' => write!(out, "\\{c}"),
            '\n' => write!(out, "\\n"),
            '\r' => write!(out, "\\r"),
            '\t' => write!(out, "\\t"),
            c if c < ' ' || c == '\x7f' => write!(out, "\\u{:04x}", c as u32),
            c => write!(out, "{c}"),
        };
        out.push('"');
    }
    if out.is_empty() {
        out.push_str("\"\"");
    }
    out
}

/// A class as a one-character regex. Every character but ASCII letters and digits is written
/// `\x{..}`: valid in Rust regex syntax in any position, and never a `/` that would end the
/// Lark regex or a class operator (`-`, `&&`, `~~`, `[`).
fn class(negated: bool, ranges: &[(char, char)]) -> String {
    let mut out = String::from(if negated { "/[^" } else { "/[" });
    for &(lo, hi) in ranges {
        push_class_char(&mut out, lo);
        if hi != lo {
            out.push('-');
            push_class_char(&mut out, hi);
        }
    }
    out.push_str("]/");
    out
}

fn push_class_char(out: &mut String, c: char) {
    let _ = if c.is_ascii_alphanumeric() {
        write!(out, "{c}")
    } else {
        write!(out, "\\x{{{:X}}}", c as u32)
    };
}

/// Deepest parenthesis nesting in a translated body, skipping strings and regexes.
fn nesting(lark: &str) -> usize {
    let (mut depth, mut deepest, mut quote, mut escaped) = (0usize, 0, None, false);
    for c in lark.chars() {
        match (quote, c) {
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '/') => quote = Some(c),
            (None, '(') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (None, ')') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lark(src: &str) -> String {
        match gbnf_to_lark(src) {
            Ok(out) => out,
            Err(e) => panic!("{src:?} refused: {e}"),
        }
    }

    /// The error for `src`, as "line:column message".
    fn error(src: &str) -> String {
        match gbnf_to_lark(src) {
            Ok(out) => panic!("{src:?} accepted as {out:?}"),
            Err(e) => format!("{}:{} {}", e.line, e.column, e.message),
        }
    }

    /// The translation of `src`, less the `start` line every output begins with.
    fn rules(src: &str) -> String {
        lark(src).strip_prefix("start: r_root\n").unwrap_or("no start line").to_string()
    }

    #[test]
    fn rules_literals_and_names() {
        let out = rules("root ::= \"ab\" item-x\nitem-x ::= \"c\"");
        assert_eq!(out, "r_root: \"a\" \"b\" r_item_x\nr_item_x: \"c\"\n");
        let out = rules("root ::= Ab ab\nAb ::= \"x\"\nab ::= \"y\"");
        assert_eq!(out, "r_root: u1_ab r_ab\nu1_ab: \"x\"\nr_ab: \"y\"\n");
        assert_eq!(rules("root ::= \"\""), "r_root: \"\"\n");
    }

    #[test]
    fn escapes_in_literals() {
        let out = rules(r#"root ::= "\"\\\n\t\x00\x7f\u00e9\U0001F600/""#);
        assert_eq!(
            out,
            r#"r_root: "\"" "\\" "\n" "\t" "\u0000" "\u007f" "é" "😀" "/""#.to_owned() + "\n"
        );
    }

    #[test]
    fn classes_and_any() {
        let out = rules(r#"root ::= [a-z0-9_/] [^"\\] . [a-] [-a] [\]\[]"#);
        let want = concat!(
            r"r_root: /[a-z0-9\x{5F}\x{2F}]/ /[^\x{22}\x{5C}]/ /(?s:.)/",
            r" /[a\x{2D}]/ /[\x{2D}a]/ /[\x{5D}\x{5B}]/",
        );
        assert_eq!(out, format!("{want}\n"));
    }

    #[test]
    fn repetitions() {
        let out =
            rules(r#"root ::= "a"* "bc"+ [x]? ("d"){2} "e"{2,} "f"{ 1 , 3 } "g"{,2} "h"{0} "i"*?"#);
        let want =
            r#"r_root: "a"* ("b" "c")+ /[x]/? ("d"){2} "e"{2,} "f"{1,3} "g"{0,2} "" ("i"*)?"#;
        assert_eq!(out, format!("{want}\n"));
    }

    #[test]
    fn multi_line_rules_and_comments() {
        let src = "# a list\nroot ::= \"[\" item # first\n  (\",\" item)*\n  \"]\"\n\
                   item ::=\n  [0-9]+\n  | \"#\"\n";
        let want = "r_root: \"[\" r_item (\",\" r_item)* \"]\"\nr_item: /[0-9]/+ | \"#\"\n";
        assert_eq!(rules(src), want);
    }

    #[test]
    fn errors_have_positions() {
        assert_eq!(error(""), "1:1 empty grammar: no rules");
        assert_eq!(error("  # only a comment\n"), "1:1 empty grammar: no rules");
        assert_eq!(error("a ::= \"x\""), "1:1 no `root` rule");
        assert_eq!(error("root ::= x"), "1:10 undefined rule `x`");
        assert_eq!(error("root ::= \"a\"\nroot ::= \"b\""), "2:1 rule `root` is defined twice");
        assert_eq!(error("root ::= \"abc"), "1:10 unterminated string literal");
        assert_eq!(error("root ::= [abc"), "1:10 unterminated character class");
        assert_eq!(error("root ::= []"), "1:10 empty character class");
        assert_eq!(error("root ::= [z-a]"), "1:12 character range 'z'-'a' is reversed");
        assert_eq!(error("root ::= \"\\q\""), "1:11 unknown escape \\q");
        assert_eq!(error("root ::= \"\\x4\""), "1:11 escape \\x needs 2 hex digits");
        assert_eq!(error("root ::= \"\\uD800\""), "1:11 escape \\u gives U+D800, not a character");
        assert_eq!(error("root ::= (\"a\""), "1:10 `(` is never closed");
        assert_eq!(error("root ::= \"a\")"), "1:13 `)` without `(`");
        assert_eq!(error("root ::= \"a\"{3,2}"), "1:13 repetition bounds reversed: 3 > 2");
        assert_eq!(error("root ::= \"a\"{10001}"), "1:13 repetition bound above 10000");
        assert_eq!(
            error("root ::= \"a\"{99999999999999999999}"),
            "1:13 repetition bound above 10000"
        );
        assert_eq!(error("root ::= \"a\"{}"), "1:13 repetition needs a count: {m}, {m,} or {m,n}");
        assert_eq!(error("root ::= \"a\"{1"), "1:13 repetition must be {m}, {m,} or {m,n}");
        assert_eq!(error("root ::= * \"a\""), "1:10 `*` follows nothing");
        assert_eq!(error("root ::= (| {2})"), "1:13 repetition follows nothing");
        assert_eq!(error("root ::= \"a\" b ::= \"c\""), "1:14 a rule definition must begin a line");
        assert_eq!(error("\"a\""), "1:1 expected a rule definition `name ::= ...`");
        assert_eq!(error("root \"a\""), "1:1 expected `::=` after the rule name");
        assert_eq!(error("root ::= ::="), "1:10 unexpected `::=`");
        assert_eq!(error("root ::= \"a\" ; "), "1:14 unexpected character ';'");
        assert_eq!(error("root ::= \"é\" @"), "1:14 unexpected character '@'");
    }

    #[test]
    fn hostile_input_is_refused_without_recursion() {
        let deep = format!("root ::= {}\"a\"{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(error(&deep).ends_with("nests groups deeper than 24 levels"));
        let ok = format!("root ::= {}\"a\"{}", "(".repeat(24), ")".repeat(24));
        assert!(gbnf_to_lark(&ok).is_ok());
        let stacked = format!("root ::= \"a\"{}", "*".repeat(30));
        assert!(error(&stacked).ends_with("nests groups deeper than 24 levels"));
        for src in [
            "\\",
            "root ::= \"\\",
            "root ::= [\\",
            "root ::= [a-",
            "root ::= {",
            ":",
            "root ::= \"\\U",
        ] {
            assert!(gbnf_to_lark(src).is_err(), "{src:?}");
        }
    }

    #[test]
    fn error_display() {
        let e = GbnfError { line: 3, column: 7, message: "bad".into() };
        assert_eq!(e.to_string(), "line 3, column 7: bad");
    }
}
