//! The small language of flow definitions: paths that reference data (`input.x`,
//! `steps.fetch.output.items[0]`), `${path}` templates in step inputs, and boolean
//! conditions (`steps.score.output.value >= 0.8 && input.mode == "full"`).
//!
//! Parsing happens when a definition is validated, so malformed text is reported
//! before a run starts. Evaluation happens at run time against a [`Scope`]; a path
//! that is absent, or a comparison over mismatched types, is an [`EvalError`] that
//! fails the step, never the server.

use serde_json::Value;
use std::fmt;

/// One segment of a path after its root.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Field(String),
    Index(usize),
}

/// A reference such as `steps.fetch.output.items[0].name`.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    /// `input`, `steps`, `output`, `item`, `index`, `iteration` or `previous`.
    pub root: String,
    pub segments: Vec<Segment>,
}

/// Names a path may start with.
pub const ROOTS: &[&str] = &[
    "input",
    "steps",
    "output",
    "item",
    "index",
    "iteration",
    "previous",
];

impl Path {
    /// The step a `steps.<id>.output…` path refers to.
    pub fn step(&self) -> Option<&str> {
        match (self.root.as_str(), self.segments.first()) {
            ("steps", Some(Segment::Field(id))) => Some(id),
            _ => None,
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.root)?;
        for s in &self.segments {
            match s {
                Segment::Field(name) => write!(f, ".{name}")?,
                Segment::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Literal(Value),
    Path(Path),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    /// `exists(path)`: whether the path resolves (absent is not an error here).
    Exists(Path),
}

impl Expr {
    /// Every path the expression reads.
    pub fn paths(&self) -> Vec<&Path> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Path>) {
        match self {
            Expr::Literal(_) => {}
            Expr::Path(p) | Expr::Exists(p) => out.push(p),
            Expr::Not(e) => e.collect(out),
            Expr::And(a, b) | Expr::Or(a, b) | Expr::Cmp(_, a, b) => {
                a.collect(out);
                b.collect(out);
            }
        }
    }
}

/// A syntax error with its 1-based column.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at column {}: {}", self.column, self.message)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num(f64),
    Str(String),
    Dot,
    LBracket,
    RBracket,
    LParen,
    RParen,
    Not,
    And,
    Or,
    Cmp(CmpOp),
}

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |i: usize, m: String| ParseError {
        column: i + 1,
        message: m,
    };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                i += 1;
                continue;
            }
            '.' => {
                out.push((start, Tok::Dot));
                i += 1;
            }
            '[' => {
                out.push((start, Tok::LBracket));
                i += 1;
            }
            ']' => {
                out.push((start, Tok::RBracket));
                i += 1;
            }
            '(' => {
                out.push((start, Tok::LParen));
                i += 1;
            }
            ')' => {
                out.push((start, Tok::RParen));
                i += 1;
            }
            '&' if chars.get(i + 1) == Some(&'&') => {
                out.push((start, Tok::And));
                i += 2;
            }
            '|' if chars.get(i + 1) == Some(&'|') => {
                out.push((start, Tok::Or));
                i += 2;
            }
            '=' if chars.get(i + 1) == Some(&'=') => {
                out.push((start, Tok::Cmp(CmpOp::Eq)));
                i += 2;
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                out.push((start, Tok::Cmp(CmpOp::Ne)));
                i += 2;
            }
            '!' => {
                out.push((start, Tok::Not));
                i += 1;
            }
            '<' | '>' => {
                let eq = chars.get(i + 1) == Some(&'=');
                let op = match (c, eq) {
                    ('<', false) => CmpOp::Lt,
                    ('<', true) => CmpOp::Le,
                    ('>', false) => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                out.push((start, Tok::Cmp(op)));
                i += if eq { 2 } else { 1 };
            }
            '"' | '\'' => {
                let quote = c;
                i += 1;
                let mut s = String::new();
                loop {
                    match chars.get(i) {
                        None => return Err(err(start, "unterminated string".into())),
                        Some('\\') => {
                            match chars.get(i + 1) {
                                Some(&e @ ('"' | '\'' | '\\')) => s.push(e),
                                Some('n') => s.push('\n'),
                                Some('t') => s.push('\t'),
                                _ => return Err(err(i, "unknown escape in string".into())),
                            }
                            i += 2;
                        }
                        Some(&ch) if ch == quote => {
                            i += 1;
                            break;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push((start, Tok::Str(s)));
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_digit()
                        || matches!(chars[i], '.' | 'e' | 'E')
                        || (matches!(chars[i], '+' | '-') && matches!(chars[i - 1], 'e' | 'E')))
                {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let n = text
                    .parse::<f64>()
                    .map_err(|_| err(start, format!("{text:?} is not a number")))?;
                out.push((start, Tok::Num(n)));
            }
            c if c.is_alphabetic() || c == '_' => {
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '-')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                out.push((
                    start,
                    match word.as_str() {
                        "and" => Tok::And,
                        "or" => Tok::Or,
                        "not" => Tok::Not,
                        _ => Tok::Ident(word),
                    },
                ));
            }
            other => return Err(err(start, format!("unexpected character {other:?}"))),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }
    fn column(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(c, _)| *c) + 1
    }
    fn fail<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            column: self.column(),
            message: message.into(),
        })
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|(_, t)| t.clone());
        self.pos += 1;
        t
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.not()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }
    fn not(&mut self) -> Result<Expr, ParseError> {
        if self.peek() == Some(&Tok::Not) {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.cmp()
    }
    fn cmp(&mut self) -> Result<Expr, ParseError> {
        let left = self.value()?;
        if let Some(Tok::Cmp(op)) = self.peek().cloned() {
            self.pos += 1;
            let right = self.value()?;
            return Ok(Expr::Cmp(op, Box::new(left), Box::new(right)));
        }
        Ok(left)
    }
    fn value(&mut self) -> Result<Expr, ParseError> {
        match self.peek().cloned() {
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(Expr::Literal(number(n)))
            }
            Some(Tok::Str(s)) => {
                self.pos += 1;
                Ok(Expr::Literal(Value::String(s)))
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                let e = self.or()?;
                if self.next() != Some(Tok::RParen) {
                    self.pos -= 1;
                    return self.fail("expected ')'");
                }
                Ok(e)
            }
            Some(Tok::Ident(word)) => match word.as_str() {
                "true" => {
                    self.pos += 1;
                    Ok(Expr::Literal(Value::Bool(true)))
                }
                "false" => {
                    self.pos += 1;
                    Ok(Expr::Literal(Value::Bool(false)))
                }
                "null" => {
                    self.pos += 1;
                    Ok(Expr::Literal(Value::Null))
                }
                "exists" if matches!(self.toks.get(self.pos + 1), Some((_, Tok::LParen))) => {
                    self.pos += 2;
                    let p = self.path()?;
                    if self.next() != Some(Tok::RParen) {
                        self.pos -= 1;
                        return self.fail("expected ')' after the path in exists(...)");
                    }
                    Ok(Expr::Exists(p))
                }
                _ => Ok(Expr::Path(self.path()?)),
            },
            Some(other) => self.fail(format!("expected a value, found {}", describe(&other))),
            None => self.fail("expected a value, found the end"),
        }
    }
    fn path(&mut self) -> Result<Path, ParseError> {
        let root = match self.next() {
            Some(Tok::Ident(w)) => w,
            _ => {
                self.pos -= 1;
                return self.fail("expected a path");
            }
        };
        if !ROOTS.contains(&root.as_str()) {
            self.pos -= 1;
            return self.fail(format!(
                "unknown name {root:?}: a path starts with one of {}",
                ROOTS.join(", ")
            ));
        }
        let mut segments = Vec::new();
        loop {
            match self.peek() {
                Some(Tok::Dot) => {
                    self.pos += 1;
                    match self.next() {
                        Some(Tok::Ident(w)) => segments.push(Segment::Field(w)),
                        Some(Tok::Num(n)) if n >= 0.0 && n.fract() == 0.0 => {
                            segments.push(Segment::Index(n as usize))
                        }
                        _ => {
                            self.pos -= 1;
                            return self.fail("expected a field name after '.'");
                        }
                    }
                }
                Some(Tok::LBracket) => {
                    self.pos += 1;
                    let seg = match self.next() {
                        Some(Tok::Num(n)) if n >= 0.0 && n.fract() == 0.0 => {
                            Segment::Index(n as usize)
                        }
                        Some(Tok::Str(s)) => Segment::Field(s),
                        _ => {
                            self.pos -= 1;
                            return self.fail("expected an index or a quoted field in [...]");
                        }
                    };
                    if self.next() != Some(Tok::RBracket) {
                        self.pos -= 1;
                        return self.fail("expected ']'");
                    }
                    segments.push(seg);
                }
                _ => break,
            }
        }
        if root == "steps" {
            let ok = matches!(
                (segments.first(), segments.get(1)),
                (Some(Segment::Field(_)), Some(Segment::Field(f))) if f == "output"
            );
            if !ok {
                return self.fail("a step reference reads steps.<id>.output[...]");
            }
        }
        Ok(Path { root, segments })
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(w) => format!("{w:?}"),
        Tok::Num(n) => n.to_string(),
        Tok::Str(s) => format!("{s:?}"),
        Tok::Dot => "'.'".into(),
        Tok::LBracket => "'['".into(),
        Tok::RBracket => "']'".into(),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::Not => "'!'".into(),
        Tok::And => "'&&'".into(),
        Tok::Or => "'||'".into(),
        Tok::Cmp(op) => format!("'{}'", op.as_str()),
    }
}

fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// Parses a condition.
pub fn parse_condition(src: &str) -> Result<Expr, ParseError> {
    let toks = lex(src)?;
    if toks.is_empty() {
        return Err(ParseError {
            column: 1,
            message: "the condition is empty".into(),
        });
    }
    let mut p = Parser {
        toks,
        pos: 0,
        end: src.chars().count(),
    };
    let e = p.or()?;
    if p.pos < p.toks.len() {
        let t = p.toks[p.pos].1.clone();
        return p.fail(format!("unexpected {} after the condition", describe(&t)));
    }
    Ok(e)
}

/// Parses a bare path (the text inside `${...}`).
pub fn parse_path(src: &str) -> Result<Path, ParseError> {
    let toks = lex(src)?;
    let mut p = Parser {
        toks,
        pos: 0,
        end: src.chars().count(),
    };
    let path = p.path()?;
    if p.pos < p.toks.len() {
        return p.fail("unexpected text after the path");
    }
    Ok(path)
}

/// Every `${...}` reference in a template value, with its location inside it
/// (`.a.b[2]`), or the first syntax error.
pub fn template_paths(template: &Value) -> Vec<(String, Result<Path, ParseError>)> {
    let mut out = Vec::new();
    walk_template(template, String::new(), &mut out);
    out
}

fn walk_template(v: &Value, at: String, out: &mut Vec<(String, Result<Path, ParseError>)>) {
    match v {
        Value::String(s) => {
            for piece in split_template(s) {
                match piece {
                    Piece::Ref(r) => out.push((at.clone(), parse_path(r.trim()))),
                    Piece::Unclosed => out.push((
                        at.clone(),
                        Err(ParseError {
                            column: 1,
                            message: "'${' without a closing '}'".into(),
                        }),
                    )),
                    Piece::Text(_) => {}
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_template(item, format!("{at}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                walk_template(item, format!("{at}.{k}"), out);
            }
        }
        _ => {}
    }
}

enum Piece<'a> {
    Text(&'a str),
    Ref(&'a str),
    Unclosed,
}

fn split_template(s: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        match rest[start + 2..].find('}') {
            Some(end) => {
                out.push(Piece::Ref(&rest[start + 2..start + 2 + end]));
                rest = &rest[start + 2 + end + 1..];
            }
            None => {
                out.push(Piece::Unclosed);
                return out;
            }
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

/// Why evaluation failed; the message names the path or operator.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalError(pub String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What paths resolve against. `step_output` returns `None` for a step that has no
/// output (skipped, or not an ancestor).
pub trait Scope {
    fn root(&self, name: &str) -> Option<Value>;
    fn step_output(&self, step: &str) -> Option<Value>;
}

/// Resolves a path to a value (cloned: only the selected part is copied).
pub fn resolve(path: &Path, scope: &dyn Scope) -> Result<Value, EvalError> {
    let (mut current, rest) = if path.root == "steps" {
        let Some(Segment::Field(step)) = path.segments.first() else {
            return Err(EvalError(format!("{path}: malformed step reference")));
        };
        let out = scope
            .step_output(step)
            .ok_or_else(|| EvalError(format!("{path}: step {step:?} has no output")))?;
        (out, &path.segments[2..])
    } else {
        let v = scope
            .root(&path.root)
            .ok_or_else(|| EvalError(format!("{path}: {:?} is not available here", path.root)))?;
        (v, &path.segments[..])
    };
    for (i, seg) in rest.iter().enumerate() {
        let next = match (seg, &mut current) {
            (Segment::Field(f), Value::Object(map)) => map.remove(f),
            (Segment::Index(n), Value::Array(items)) if *n < items.len() => {
                Some(items.swap_remove(*n))
            }
            (Segment::Index(_), Value::Array(_)) => None,
            (_, other) => {
                return Err(EvalError(format!(
                    "{path}: cannot read {} of a {}",
                    seg_text(seg),
                    type_name(other)
                )))
            }
        };
        current = next.ok_or_else(|| {
            let upto = Path {
                root: path.root.clone(),
                segments: path.segments[..path.segments.len() - rest.len() + i + 1].to_vec(),
            };
            EvalError(format!("{upto} is absent"))
        })?;
    }
    Ok(current)
}

fn seg_text(seg: &Segment) -> String {
    match seg {
        Segment::Field(f) => format!("field {f:?}"),
        Segment::Index(i) => format!("index {i}"),
    }
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Fills a template: a string that is exactly one `${path}` becomes the value itself
/// (any type); references inside longer strings are replaced by their text.
pub fn render(template: &Value, scope: &dyn Scope) -> Result<Value, EvalError> {
    match template {
        Value::String(s) if s.contains("${") => {
            let pieces = split_template(s);
            if let [Piece::Ref(r)] = pieces.as_slice() {
                let path = parse_path(r.trim()).map_err(|e| EvalError(e.to_string()))?;
                return resolve(&path, scope);
            }
            let mut out = String::new();
            for piece in pieces {
                match piece {
                    Piece::Text(t) => out.push_str(t),
                    Piece::Ref(r) => {
                        let path = parse_path(r.trim()).map_err(|e| EvalError(e.to_string()))?;
                        match resolve(&path, scope)? {
                            Value::String(s) => out.push_str(&s),
                            other => out.push_str(&other.to_string()),
                        }
                    }
                    Piece::Unclosed => return Err(EvalError("'${' without a closing '}'".into())),
                }
            }
            Ok(Value::String(out))
        }
        Value::Array(items) => items
            .iter()
            .map(|i| render(i, scope))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, v) in map {
                out.insert(k.clone(), render(v, scope)?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

/// Evaluates a condition; it must yield a boolean.
pub fn eval_condition(expr: &Expr, scope: &dyn Scope) -> Result<bool, EvalError> {
    match eval(expr, scope)? {
        Value::Bool(b) => Ok(b),
        other => Err(EvalError(format!(
            "the condition must be true or false, but gave a {}",
            type_name(&other)
        ))),
    }
}

fn eval(expr: &Expr, scope: &dyn Scope) -> Result<Value, EvalError> {
    Ok(match expr {
        Expr::Literal(v) => v.clone(),
        Expr::Path(p) => resolve(p, scope)?,
        Expr::Exists(p) => Value::Bool(resolve(p, scope).is_ok()),
        Expr::Not(e) => Value::Bool(!boolean(&eval(e, scope)?, "!")?),
        Expr::And(a, b) => {
            Value::Bool(boolean(&eval(a, scope)?, "&&")? && boolean(&eval(b, scope)?, "&&")?)
        }
        Expr::Or(a, b) => {
            Value::Bool(boolean(&eval(a, scope)?, "||")? || boolean(&eval(b, scope)?, "||")?)
        }
        Expr::Cmp(op, a, b) => {
            let (a, b) = (eval(a, scope)?, eval(b, scope)?);
            Value::Bool(compare(*op, &a, &b)?)
        }
    })
}

fn boolean(v: &Value, op: &str) -> Result<bool, EvalError> {
    v.as_bool().ok_or_else(|| {
        EvalError(format!(
            "'{op}' needs true or false, but got a {}",
            type_name(v)
        ))
    })
}

fn compare(op: CmpOp, a: &Value, b: &Value) -> Result<bool, EvalError> {
    use std::cmp::Ordering;
    let ord = match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x.partial_cmp(&y)
        }
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    };
    match op {
        CmpOp::Eq => Ok(match ord {
            Some(o) => o == Ordering::Equal,
            None => a == b,
        }),
        CmpOp::Ne => Ok(match ord {
            Some(o) => o != Ordering::Equal,
            None => a != b,
        }),
        _ => {
            let o = ord.ok_or_else(|| {
                EvalError(format!(
                    "cannot compare a {} with a {} using '{}'",
                    type_name(a),
                    type_name(b),
                    op.as_str()
                ))
            })?;
            Ok(match op {
                CmpOp::Lt => o == Ordering::Less,
                CmpOp::Le => o != Ordering::Greater,
                CmpOp::Gt => o == Ordering::Greater,
                _ => o != Ordering::Less,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct S(Value);
    impl Scope for S {
        fn root(&self, name: &str) -> Option<Value> {
            self.0.get(name).cloned()
        }
        fn step_output(&self, step: &str) -> Option<Value> {
            self.0.get("steps")?.get(step)?.get("output").cloned()
        }
    }

    fn scope() -> S {
        S(json!({
            "input": {"mode": "full", "n": 3, "items": ["a", "b"]},
            "steps": {"score": {"output": {"value": 0.9, "label": "ok"}}}
        }))
    }

    #[test]
    fn conditions_evaluate() {
        let s = scope();
        let cases = [
            (
                "steps.score.output.value >= 0.8 && input.mode == \"full\"",
                true,
            ),
            ("input.n > 5 or input.items[1] == 'b'", true),
            ("not (input.n == 3)", false),
            ("exists(input.missing)", false),
            ("exists(steps.score.output.label)", true),
            ("input.mode != 'lite'", true),
            ("input.n == '3'", false),
        ];
        for (src, want) in cases {
            let e = parse_condition(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(eval_condition(&e, &s), Ok(want), "{src}");
        }
    }

    #[test]
    fn malformed_conditions_report_a_column() {
        for (src, col) in [
            ("input.n >", 10),
            ("input.n == 3 )", 14),
            ("foo.bar == 1", 1),
            ("input.n = 3", 9),
            ("(input.n == 3", 14),
            ("", 1),
            ("steps.a.result == 1", 16),
        ] {
            let e = parse_condition(src).expect_err(src);
            assert_eq!(e.column, col, "{src}: {e}");
        }
    }

    #[test]
    fn wrong_types_and_absent_fields_are_errors_not_panics() {
        let s = scope();
        let e = parse_condition("input.mode > 3").unwrap();
        assert!(eval_condition(&e, &s)
            .unwrap_err()
            .0
            .contains("cannot compare a string with a number"));
        let e = parse_condition("input.n").unwrap();
        assert!(eval_condition(&e, &s)
            .unwrap_err()
            .0
            .contains("must be true or false"));
        let e = parse_condition("steps.score.output.missing == 1").unwrap();
        assert_eq!(
            eval_condition(&e, &s).unwrap_err().0,
            "steps.score.output.missing is absent"
        );
        let e = parse_condition("input.n.deeper == 1").unwrap();
        assert!(eval_condition(&e, &s)
            .unwrap_err()
            .0
            .contains("cannot read field"));
    }

    #[test]
    fn templates_render_values_and_text() {
        let s = scope();
        let t = json!({"all": "${input.items}", "text": "mode=${input.mode} n=${input.n}", "lit": 5,
                       "nested": ["${steps.score.output.value}"]});
        assert_eq!(
            render(&t, &s).unwrap(),
            json!({"all": ["a", "b"], "text": "mode=full n=3", "lit": 5, "nested": [0.9]})
        );
        assert_eq!(
            render(&json!("${input.nope}"), &s).unwrap_err().0,
            "input.nope is absent"
        );
        let paths = template_paths(&t);
        assert_eq!(paths.len(), 4);
        assert!(paths.iter().all(|(_, p)| p.is_ok()));
        let bad = template_paths(&json!({"x": "${input.}", "y": "${oops"}));
        assert!(bad.iter().all(|(_, p)| p.is_err()));
        assert_eq!(bad[0].0, ".x");
    }
}
