//! Mustache templating of factfile strings, and the `sh -c` command line.
//!
//! Variables come from `--env` (any JSON object, nested and numbers included) plus one variable
//! `tag:<key>` per tag. `{{x}}` is HTML-escaped (`& < > " '`, as rust-mustache did for Factotum),
//! `{{{x}}}` and `{{& x}}` are not, and a missing variable renders as nothing. Sections
//! (`{{#x}}…{{/x}}`), inverted sections (`{{^x}}…{{/x}}`), comments, dotted names and `{{.}}` are
//! supported; partials and delimiter changes are reported as errors. Our own renderer, so no
//! input can make it panic.
//!
//! **Bounded.** Nested sections over long lists multiply (three over 1,000 items: 10⁹ copies),
//! so every render has a size it may not pass ([`Limits`]: `--max-rendered-size` per field,
//! `--max-rendered-total` per factfile). The renderer checks before each write and stops at
//! the first one that would pass it: memory stays within the limit whatever the template. A
//! pass over a section that writes nothing counts as one byte, so sections that render nothing
//! over long lists are bounded in time as well.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

/// The default `--max-rendered-size`: one templated field renders to at most 1 MiB.
pub const DEFAULT_MAX_RENDERED_SIZE: usize = 1 << 20;
/// The default `--max-rendered-total`: a factfile's templated fields together render to at most
/// 64 MiB.
pub const DEFAULT_MAX_RENDERED_TOTAL: usize = 64 << 20;

/// How large templating may make a factfile: each templated field at most `field` bytes
/// (`--max-rendered-size`), all of them together at most `total` (`--max-rendered-total`).
/// Fields without a `{{` are not rendered and do not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub field: usize,
    pub total: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            field: DEFAULT_MAX_RENDERED_SIZE,
            total: DEFAULT_MAX_RENDERED_TOTAL,
        }
    }
}

/// A size as people read it: `1 MiB`, `512 KiB`, `1000 bytes`.
pub struct Size(pub usize);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, scale) in [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n >= scale && n.is_multiple_of(scale) {
                return write!(f, "{} {unit}", n / scale);
            }
        }
        match n {
            1 => f.write_str("1 byte"),
            n => write!(f, "{n} bytes"),
        }
    }
}

/// Template variables, and the [`Limits`] their renders keep to.
#[derive(Debug, Clone)]
pub struct Vars {
    root: Value,
    limits: Limits,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// Why [`Vars::render_at_most`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// The template is malformed.
    Template(TemplateError),
    /// The output would pass the size it was given; nothing larger was built.
    TooLarge,
}

/// A render that kept to its size: the text, and what it cost (its bytes, plus one for each
/// pass over a section that wrote nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub cost: usize,
}

impl Vars {
    /// `env` must be a JSON object (or null for none); tags become `tag:<key>`. Renders keep to
    /// the default [`Limits`].
    pub fn new(env: &Value, tags: &BTreeMap<String, String>) -> Result<Vars, TemplateError> {
        let mut map: Map<String, Value> = match env {
            Value::Null => Map::new(),
            Value::Object(m) => m.clone(),
            _ => return Err(TemplateError("--env must be a JSON object".into())),
        };
        for (k, v) in tags {
            map.insert(format!("tag:{k}"), Value::String(v.clone()));
        }
        Ok(Vars {
            root: Value::Object(map),
            limits: Limits::default(),
        })
    }

    /// The same variables under other limits.
    pub fn with_limits(self, limits: Limits) -> Vars {
        Vars { limits, ..self }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Renders `text` (one field: at most `--max-rendered-size`); a string with no `{{` is
    /// returned as is.
    pub fn render(&self, text: &str) -> Result<String, TemplateError> {
        match self.render_at_most(text, self.limits.field) {
            Ok(r) => Ok(r.text),
            Err(RenderError::Template(e)) => Err(e),
            Err(RenderError::TooLarge) => Err(TemplateError(format!(
                "the rendered text is larger than --max-rendered-size ({})",
                Size(self.limits.field)
            ))),
        }
    }

    /// Renders `text` into at most `max` bytes, stopping at the first write that would pass
    /// them. A string with no `{{` is returned as is (cost 0: it is no larger than the input).
    pub fn render_at_most(&self, text: &str, max: usize) -> Result<Rendered, RenderError> {
        if !text.contains("{{") {
            return Ok(Rendered {
                text: text.to_string(),
                cost: 0,
            });
        }
        let nodes = parse(text).map_err(RenderError::Template)?;
        let mut out = Out {
            text: String::with_capacity(text.len().min(max)),
            empty: 0,
            max,
        };
        let mut stack = vec![&self.root];
        render(&nodes, &mut stack, &mut out)?;
        Ok(Rendered {
            cost: out.text.len() + out.empty,
            text: out.text,
        })
    }
}

/// The output of one render, and what it may still take.
struct Out {
    text: String,
    /// Passes over a section that wrote nothing: each costs one byte of `max`.
    empty: usize,
    max: usize,
}

impl Out {
    /// Fails if `n` more bytes would pass the limit.
    fn room(&self, n: usize) -> Result<(), RenderError> {
        match self.text.len().saturating_add(self.empty).saturating_add(n) {
            used if used <= self.max => Ok(()),
            _ => Err(RenderError::TooLarge),
        }
    }

    fn push(&mut self, s: &str) -> Result<(), RenderError> {
        self.room(s.len())?;
        self.text.push_str(s);
        Ok(())
    }
}

#[derive(Debug)]
enum Node<'a> {
    Text(&'a str),
    Var {
        name: &'a str,
        escape: bool,
    },
    Section {
        name: &'a str,
        inverted: bool,
        children: Vec<Node<'a>>,
    },
}

fn parse(text: &str) -> Result<Vec<Node<'_>>, TemplateError> {
    let err = |m: String| Err(TemplateError(format!("invalid template: {m}")));
    // Open sections: (name, inverted, the nodes before the section).
    let mut open: Vec<(&str, bool, Vec<Node>)> = vec![];
    let mut nodes: Vec<Node> = vec![];
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        if i > 0 {
            nodes.push(Node::Text(&rest[..i]));
        }
        let after = &rest[i + 2..];
        let (tag, next) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find("}}}") {
                Some(j) => (("&", inner[..j].trim()), &inner[j + 3..]),
                None => return err("a '{{{' is not closed by '}}}'".into()),
            }
        } else {
            match after.find("}}") {
                Some(j) => {
                    let body = after[..j].trim();
                    let sigil = body.chars().next().filter(|c| "#^/!&>=".contains(*c));
                    match sigil {
                        Some(c) => (
                            (&body[..c.len_utf8()], body[c.len_utf8()..].trim()),
                            &after[j + 2..],
                        ),
                        None => (("", body), &after[j + 2..]),
                    }
                }
                None => return err("a '{{' is not closed by '}}'".into()),
            }
        };
        rest = next;
        let (sigil, name) = tag;
        if sigil == "!" {
            continue;
        }
        if name.is_empty() {
            return err("a tag has no name".into());
        }
        match sigil {
            "" | "&" => nodes.push(Node::Var {
                name,
                escape: sigil.is_empty(),
            }),
            "#" | "^" => open.push((name, sigil == "^", std::mem::take(&mut nodes))),
            "/" => match open.pop() {
                Some((opened, inverted, before)) if opened == name => {
                    let children = std::mem::replace(&mut nodes, before);
                    nodes.push(Node::Section {
                        name,
                        inverted,
                        children,
                    });
                }
                Some((opened, ..)) => {
                    return err(format!("'{{{{/{name}}}}}' closes '{{{{#{opened}}}}}'"))
                }
                None => return err(format!("'{{{{/{name}}}}}' closes no section")),
            },
            ">" => return err("partials are not supported".into()),
            _ => return err("changing the delimiters is not supported".into()),
        }
    }
    if let Some((name, ..)) = open.last() {
        return err(format!("the section '{name}' is not closed"));
    }
    if !rest.is_empty() {
        nodes.push(Node::Text(rest));
    }
    Ok(nodes)
}

/// Finds a (possibly dotted) name: the first context from the top that has its first part.
fn lookup<'v>(stack: &[&'v Value], name: &str) -> Option<&'v Value> {
    if name == "." {
        return stack.last().copied();
    }
    let mut parts = name.split('.');
    let first = parts.next()?;
    let mut value = stack.iter().rev().find_map(|v| v.get(first))?;
    for p in parts {
        value = value.get(p)?;
    }
    Some(value)
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::Array(a) => !a.is_empty(),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// `s` as `{{x}}` writes it (HTML-escaped).
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match escaped(c) {
            Some(e) => out.push_str(e),
            None => out.push(c),
        }
    }
    out
}

/// What `{{x}}` writes for `c`.
fn escaped(c: char) -> Option<&'static str> {
    match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '"' => Some("&quot;"),
        '\'' => Some("&#39;"),
        _ => None,
    }
}

fn render(nodes: &[Node<'_>], stack: &mut Vec<&Value>, out: &mut Out) -> Result<(), RenderError> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push(t)?,
            Node::Var { name, escape } => {
                let owned;
                let text = match lookup(stack, name) {
                    None | Some(Value::Null) => continue,
                    Some(Value::String(s)) => s.as_str(),
                    Some(other) => {
                        owned = other.to_string();
                        owned.as_str()
                    }
                };
                if *escape {
                    let len = text
                        .chars()
                        .map(|c| escaped(c).map_or(c.len_utf8(), str::len))
                        .sum();
                    out.room(len)?;
                    for c in text.chars() {
                        match escaped(c) {
                            Some(e) => out.text.push_str(e),
                            None => out.text.push(c),
                        }
                    }
                } else {
                    out.push(text)?;
                }
            }
            Node::Section {
                name,
                inverted,
                children,
            } => {
                let value = lookup(stack, name);
                let on = value.is_some_and(truthy);
                let items: &[Value] = match (inverted, value) {
                    (true, _) if !on => {
                        render(children, stack, out)?;
                        continue;
                    }
                    (false, Some(Value::Array(items))) => items,
                    (false, Some(v)) if on => std::slice::from_ref(v),
                    _ => continue,
                };
                for item in items {
                    let before = out.text.len();
                    stack.push(item);
                    let done = render(children, stack, out);
                    stack.pop();
                    done?;
                    if out.text.len() == before {
                        out.room(1)?;
                        out.empty += 1;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The command line run by `sh -c`: the command, then ` "<arg>"` per argument. The double quotes
/// are Factotum's (so `$VAR` in an argument still expands); `"` and `\` inside an argument are
/// escaped so an argument cannot break out of its quotes.
pub fn command_line(command: &str, arguments: &[String]) -> String {
    let mut line =
        String::with_capacity(command.len() + arguments.iter().map(|a| a.len() + 3).sum::<usize>());
    line.push_str(command);
    for arg in arguments {
        line.push_str(" \"");
        for c in arg.chars() {
            if c == '"' || c == '\\' {
                line.push('\\');
            }
            line.push(c);
        }
        line.push('"');
    }
    line
}

#[cfg(test)]
mod tests;
