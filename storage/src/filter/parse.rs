//! The compact text syntax of filters (the CLI's), parsed into the tree with errors that point
//! at a column, e.g.
//! `tenant = "acme" and year >= 2024 and tags any ["a", "b"] and not (kind = "draft")`.
use super::ast::{Condition, Filter, Literal, MAX_DEPTH, Range, parse_datetime};
use crate::types::PointId;

/// A syntax error in filter text, at a 1-based column.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("filter column {column}: {message}")]
pub struct ParseError {
    /// 1-based character column of the mistake.
    pub column: usize,
    /// What was expected.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Op(&'static str),
    LParen,
    RParen,
    LBrack,
    RBrack,
    Comma,
    End,
}

/// Splits filter text into tokens, each with its 1-based column.
fn lex(text: &str) -> std::result::Result<Vec<(Tok, usize)>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let (tok, next) = token(&chars, i)?;
        out.push((tok, i + 1));
        i = next;
    }
    out.push((Tok::End, chars.len() + 1));
    Ok(out)
}

/// The token starting at `chars[i]` (not whitespace), and the index just after it.
fn token(chars: &[char], i: usize) -> std::result::Result<(Tok, usize), ParseError> {
    let c = chars[i];
    let col = i + 1;
    let err = |column: usize, message: String| ParseError { column, message };
    let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
    if let Some(op) = ["!=", ">=", "<="].into_iter().find(|o| *o == two) {
        return Ok((Tok::Op(op), i + 2));
    }
    Ok(match c {
        '=' | '>' | '<' => (
            Tok::Op(match c {
                '=' => "=",
                '>' => ">",
                _ => "<",
            }),
            i + 1,
        ),
        '(' | ')' | '[' | ']' | ',' => (
            match c {
                '(' => Tok::LParen,
                ')' => Tok::RParen,
                '[' => Tok::LBrack,
                ']' => Tok::RBrack,
                _ => Tok::Comma,
            },
            i + 1,
        ),
        '"' | '\'' => quoted(chars, i)?,
        '`' => {
            let end = chars[i + 1..]
                .iter()
                .position(|&x| x == '`')
                .ok_or_else(|| err(col, "unterminated `quoted key`".into()))?;
            (
                Tok::Ident(chars[i + 1..i + 1 + end].iter().collect()),
                i + end + 2,
            )
        }
        c if c.is_ascii_digit() || c == '-' || c == '+' => {
            let j = run_end(chars, i, |ch| {
                ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '+')
            });
            (Tok::Num(chars[i..j].iter().collect()), j)
        }
        c if c.is_alphabetic() || c == '_' => {
            let j = run_end(chars, i, |ch| {
                ch.is_alphanumeric() || matches!(ch, '_' | '.' | '-')
            });
            (Tok::Ident(chars[i..j].iter().collect()), j)
        }
        other => return Err(err(col, format!("unexpected character {other:?}"))),
    })
}

/// The string quoted from `chars[i]` (its opening quote) to the same quote again, a backslash
/// escaping any character; and the index just after the closing quote.
fn quoted(chars: &[char], i: usize) -> std::result::Result<(Tok, usize), ParseError> {
    let quote = chars[i];
    let unterminated = || ParseError {
        column: i + 1,
        message: "unterminated string".into(),
    };
    let mut s = String::new();
    let mut j = i + 1;
    loop {
        match chars.get(j) {
            None => return Err(unterminated()),
            Some(&q) if q == quote => break,
            Some('\\') => {
                match chars.get(j + 1) {
                    Some(&e) => s.push(e),
                    None => return Err(unterminated()),
                }
                j += 2;
                continue;
            }
            Some(&ch) => s.push(ch),
        }
        j += 1;
    }
    Ok((Tok::Str(s), j + 1))
}

/// The index after the run of characters from `chars[i + 1]` on that pass `part`.
fn run_end(chars: &[char], i: usize, part: impl Fn(char) -> bool) -> usize {
    let mut j = i + 1;
    while j < chars.len() && part(chars[j]) {
        j += 1;
    }
    j
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    /// Open parentheses and `not`s around the current token: refused beyond [`MAX_DEPTH`]
    /// while parsing, so hostile nesting cannot exhaust the stack.
    depth: usize,
}

// "Anything else is an error" is the point of these matches on private token types.
#[allow(clippy::wildcard_enum_match_arm)]
impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }
    fn col(&self) -> usize {
        self.toks[self.pos].1
    }
    fn next(&mut self) -> (Tok, usize) {
        let t = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }
    fn err<T>(&self, message: impl Into<String>) -> std::result::Result<T, ParseError> {
        Err(ParseError {
            column: self.col(),
            message: message.into(),
        })
    }
    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s.eq_ignore_ascii_case(k))
    }

    fn expr(&mut self) -> std::result::Result<Filter, ParseError> {
        let mut parts = vec![self.and()?];
        while self.keyword("or") {
            self.next();
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Filter::Should(parts)
        })
    }

    fn and(&mut self) -> std::result::Result<Filter, ParseError> {
        let mut parts = vec![self.unary()?];
        while self.keyword("and") {
            self.next();
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Filter::Must(parts)
        })
    }

    fn unary(&mut self) -> std::result::Result<Filter, ParseError> {
        let nested = self.keyword("not") || *self.peek() == Tok::LParen;
        if !nested {
            return self.condition();
        }
        if self.depth >= MAX_DEPTH {
            return self.err(format!(
                "filter nested deeper than {MAX_DEPTH} levels (parentheses and 'not')"
            ));
        }
        self.depth += 1;
        let f = if self.keyword("not") {
            self.next();
            Filter::MustNot(vec![self.unary()?])
        } else {
            self.next();
            let f = self.expr()?;
            if *self.peek() != Tok::RParen {
                return self.err("expected ')'");
            }
            self.next();
            f
        };
        self.depth -= 1;
        Ok(f)
    }

    fn literal(&mut self) -> std::result::Result<Literal, ParseError> {
        let (t, column) = self.next();
        let bad = |message: String| Err(ParseError { column, message });
        match t {
            Tok::Str(s) => Ok(Literal::Str(s)),
            Tok::Num(n) => {
                if let Ok(i) = n.parse::<i64>() {
                    Ok(Literal::Int(i))
                } else {
                    match n.parse::<f64>() {
                        Ok(x) if x.is_finite() => Ok(Literal::Float(x)),
                        _ => bad(format!("{n:?} is not a number")),
                    }
                }
            }
            Tok::Ident(s) if s == "true" || s == "false" => Ok(Literal::Bool(s == "true")),
            other => bad(format!(
                "expected a value (string, number, true or false), found {}",
                describe(&other)
            )),
        }
    }

    fn list(&mut self) -> std::result::Result<Vec<Literal>, ParseError> {
        if *self.peek() != Tok::LBrack {
            return self.err("expected '[' starting a list");
        }
        self.next();
        let mut out = Vec::new();
        if *self.peek() == Tok::RBrack {
            self.next();
            return Ok(out);
        }
        loop {
            out.push(self.literal()?);
            match self.peek() {
                Tok::Comma => {
                    self.next();
                }
                Tok::RBrack => {
                    self.next();
                    return Ok(out);
                }
                other => {
                    return self.err(format!("expected ',' or ']', found {}", describe(other)));
                }
            }
        }
    }

    fn condition(&mut self) -> std::result::Result<Filter, ParseError> {
        let (t, key_col) = self.next();
        let key = match t {
            Tok::Ident(k) => k,
            other => {
                return Err(ParseError {
                    column: key_col,
                    message: format!("expected a field name, found {}", describe(&other)),
                });
            }
        };
        let cond = |c: Condition| Ok(Filter::Cond(c));
        if key == "id" && self.keyword("in") {
            self.next();
            return cond(Condition::HasId(self.id_list()?));
        }
        if self.keyword("any") || self.keyword("in") {
            self.next();
            let values = self.list()?;
            return cond(Condition::Any { key, values });
        }
        if self.keyword("except") {
            self.next();
            let values = self.list()?;
            return cond(Condition::Except { key, values });
        }
        if self.keyword("exists") {
            self.next();
            return cond(Condition::Exists { key });
        }
        if self.keyword("is") {
            self.next();
            return self.is_null(key);
        }
        self.comparison(key)
    }

    /// The list of point ids after `id in`.
    fn id_list(&mut self) -> std::result::Result<Vec<PointId>, ParseError> {
        let list_col = self.col();
        self.list()?
            .into_iter()
            .map(|l| match l {
                Literal::Int(i) if i >= 0 => Ok(PointId::Num(i as u64)),
                Literal::Str(s) => Ok(PointId::Str(s)),
                other => Err(ParseError {
                    column: list_col,
                    message: format!("{other} is not a point id"),
                }),
            })
            .collect()
    }

    /// `[not] null` after `key is`.
    fn is_null(&mut self, key: String) -> std::result::Result<Filter, ParseError> {
        let negated = self.keyword("not");
        if negated {
            self.next();
        }
        if !self.keyword("null") {
            return self.err("expected 'null'");
        }
        self.next();
        Ok(Filter::Cond(if negated {
            Condition::Exists { key }
        } else {
            Condition::IsNull { key }
        }))
    }

    /// An operator and a value after `key`: a match, a negated match or a range.
    fn comparison(&mut self, key: String) -> std::result::Result<Filter, ParseError> {
        let (op, op_col) = match self.next() {
            (Tok::Op(op), c) => (op, c),
            (other, c) => {
                return Err(ParseError {
                    column: c,
                    message: format!(
                        "expected an operator (=, !=, <, <=, >, >=, any, except, exists, is null) after {key:?}, found {}",
                        describe(&other)
                    ),
                });
            }
        };
        let value_col = self.col();
        let value = self.literal()?;
        match op {
            "=" => Ok(Filter::Cond(Condition::Match { key, value })),
            "!=" => Ok(Filter::MustNot(vec![Filter::Cond(Condition::Match {
                key,
                value,
            })])),
            _ => {
                let range = range(op, (op_col, value_col), &value)?;
                Ok(Filter::Cond(Condition::Range { key, range }))
            }
        }
    }
}

/// The range `op value` stands for (`op` one of `>`, `>=`, `<`, `<=`); `cols` are the
/// columns of the operator and of the value, for errors.
fn range(
    op: &str,
    (op_col, value_col): (usize, usize),
    value: &Literal,
) -> std::result::Result<Range, ParseError> {
    let (x, datetime) = match value {
        Literal::Int(i) => (*i as f64, false),
        Literal::Float(f) => (*f, false),
        Literal::Str(s) => match parse_datetime(s) {
            Some(t) => (t, true),
            None => {
                return Err(ParseError {
                    column: value_col,
                    message: format!("{op} needs a number or an RFC 3339 datetime, found {value}"),
                });
            }
        },
        Literal::Bool(_) => {
            return Err(ParseError {
                column: op_col,
                message: format!("{op} does not apply to a bool"),
            });
        }
    };
    let mut range = Range {
        datetime,
        ..Range::default()
    };
    match op {
        ">" => range.gt = Some(x),
        ">=" => range.gte = Some(x),
        "<" => range.lt = Some(x),
        _ => range.lte = Some(x),
    }
    Ok(range)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("{s:?}"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Num(n) => format!("number {n}"),
        Tok::Op(o) => format!("{o:?}"),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::LBrack => "'['".into(),
        Tok::RBrack => "']'".into(),
        Tok::Comma => "','".into(),
        Tok::End => "the end of the filter".into(),
    }
}

/// Parses the compact text syntax, e.g.
/// `tenant = "acme" and year >= 2024 and tags any ["a", "b"] and not (kind = "draft")`.
pub fn parse(text: &str) -> std::result::Result<Filter, ParseError> {
    let mut p = Parser {
        toks: lex(text)?,
        pos: 0,
        depth: 0,
    };
    if *p.peek() == Tok::End {
        return p.err("empty filter");
    }
    let f = p.expr()?;
    if *p.peek() != Tok::End {
        return p.err(format!(
            "expected 'and', 'or' or the end, found {}",
            describe(p.peek())
        ));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn id(n: u64) -> PointId {
        PointId::Num(n)
    }

    #[test]
    fn text_syntax_parses_into_the_tree() {
        let f = parse(r#"tenant = "acme" and year >= 2024 and tags any ["a","b"]"#).unwrap();
        let p = json!({"tenant": "acme", "year": 2025, "tags": ["x", "b"]});
        assert!(f.matches(&id(1), Some(&p)));
        assert!(!f.matches(
            &id(1),
            Some(&json!({"tenant": "acme", "year": 2023, "tags": ["b"]}))
        ));
        let g = parse(r#"not (kind = "draft" or kind = "spam") and meta.score < 0.5"#).unwrap();
        assert!(g.matches(
            &id(1),
            Some(&json!({"kind": "post", "meta": {"score": 0.25}}))
        ));
        assert!(!g.matches(
            &id(1),
            Some(&json!({"kind": "spam", "meta": {"score": 0.25}}))
        ));
        let h = parse(r#"id in [1, "a"] and x is null and y exists and z except ["q"]"#).unwrap();
        assert!(h.matches(&PointId::Str("a".into()), Some(&json!({"y": 1, "z": "r"}))));
        assert!(!h.matches(&id(2), Some(&json!({"y": 1, "z": "r"}))));
        let d = parse(r#"at >= "2024-01-01T00:00:00Z""#).unwrap();
        assert!(d.matches(&id(1), Some(&json!({"at": "2024-06-01T12:00:00+02:00"}))));
        assert!(!d.matches(&id(1), Some(&json!({"at": "2023-06-01T12:00:00Z"}))));
    }

    #[test]
    fn text_errors_point_at_the_column() {
        for (text, column, needle) in [
            (r#"tenant = "acme" and"#, 20, "field name"),
            (r#"tenant == "acme""#, 9, "value"),
            (r#"tenant ~ "acme""#, 8, "unexpected character"),
            (r#"tags any ["a", "b""#, 19, "',' or ']'"),
            (r#"(a = 1"#, 7, "')'"),
            (r#"a = "x" b = 2"#, 9, "'and', 'or'"),
            (r#"year > "soon""#, 8, "RFC 3339"),
            (r#"name = "open"#, 8, "unterminated"),
            ("", 1, "empty"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.column, column, "{text}: {e}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn nesting_is_refused_while_parsing_not_after() {
        // Deep enough to overflow a thread's stack if the parser recursed into it.
        for (open, close) in [("(", ")"), ("not ", ""), ("not (", ")")] {
            let deep = format!("{}a = 1{}", open.repeat(100_000), close.repeat(100_000));
            let e = parse(&deep).unwrap_err();
            assert!(e.message.contains("nested deeper than 16"), "{open}: {e}");
        }
        let ok = format!("{}a = 1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        let over = format!(
            "{}a = 1{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        let e = parse(&over).unwrap_err();
        assert_eq!(e.column, MAX_DEPTH + 1, "{e}");
    }
}
