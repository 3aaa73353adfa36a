//! Mustache templating of factfile strings, and the `sh -c` command line.
//!
//! Variables come from `--env` (any JSON object, nested and numbers included) plus one variable
//! `tag:<key>` per tag. `{{x}}` is HTML-escaped (`& < > " '`, as rust-mustache did for Factotum),
//! `{{{x}}}` and `{{& x}}` are not, and a missing variable renders as nothing. Sections
//! (`{{#x}}…{{/x}}`), inverted sections (`{{^x}}…{{/x}}`), comments, dotted names and `{{.}}` are
//! supported; partials and delimiter changes are reported as errors. Our own renderer, so no
//! input can make it panic.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Template variables.
#[derive(Debug, Clone)]
pub struct Vars {
    root: Value,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TemplateError(pub String);

impl Vars {
    /// `env` must be a JSON object (or null for none); tags become `tag:<key>`.
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
        })
    }

    /// Renders `text`; a string with no `{{` is returned as is.
    pub fn render(&self, text: &str) -> Result<String, TemplateError> {
        if !text.contains("{{") {
            return Ok(text.to_string());
        }
        let nodes = parse(text)?;
        let mut out = String::with_capacity(text.len());
        let mut stack = vec![&self.root];
        render(&nodes, &mut stack, &mut out);
        Ok(out)
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

fn render(nodes: &[Node<'_>], stack: &mut Vec<&Value>, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Var { name, escape } => {
                let text = match lookup(stack, name) {
                    None | Some(Value::Null) => continue,
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                };
                if *escape {
                    for c in text.chars() {
                        match c {
                            '&' => out.push_str("&amp;"),
                            '<' => out.push_str("&lt;"),
                            '>' => out.push_str("&gt;"),
                            '"' => out.push_str("&quot;"),
                            '\'' => out.push_str("&#39;"),
                            c => out.push(c),
                        }
                    }
                } else {
                    out.push_str(&text);
                }
            }
            Node::Section {
                name,
                inverted,
                children,
            } => {
                let value = lookup(stack, name);
                let on = value.is_some_and(truthy);
                match (inverted, value) {
                    (true, _) if !on => render(children, stack, out),
                    (true, _) => {}
                    (false, Some(Value::Array(items))) => {
                        for item in items {
                            stack.push(item);
                            render(children, stack, out);
                            stack.pop();
                        }
                    }
                    (false, Some(v)) if on => {
                        stack.push(v);
                        render(children, stack, out);
                        stack.pop();
                    }
                    _ => {}
                }
            }
        }
    }
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
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(env: Value) -> Vars {
        let tags = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        Vars::new(&env, &tags).unwrap()
    }

    #[test]
    fn renders_env_tags_nested_and_numbers() {
        let v = vars(json!({"message": "hi", "nested": {"message": "deep"}, "n": 3, "b": true}));
        assert_eq!(v.render("{{ message }}").unwrap(), "hi");
        assert_eq!(v.render("{{ nested.message }}").unwrap(), "deep");
        assert_eq!(v.render("n={{n}} b={{b}}").unwrap(), "n=3 b=true");
        assert_eq!(v.render("alpha {{ tag:env }}").unwrap(), "alpha prod");
        assert_eq!(v.render("left '{{ blank }}'").unwrap(), "left ''");
    }

    #[test]
    fn escaping_rules() {
        let v = vars(json!({"x": "<a & \"b\">"}));
        assert_eq!(v.render("{{{x}}}").unwrap(), "<a & \"b\">");
        assert_eq!(v.render("{{& x}}").unwrap(), "<a & \"b\">");
        let escaped = v.render("{{x}}").unwrap();
        assert_eq!(escaped, "&lt;a &amp; &quot;b&quot;&gt;");
    }

    #[test]
    fn bad_templates_and_env_are_errors() {
        let v = vars(json!({}));
        assert!(v.render("{{#open}} never closed").is_err());
        assert!(Vars::new(&json!([1, 2]), &BTreeMap::new()).is_err());
    }

    #[test]
    fn command_line_quotes_and_escapes() {
        assert_eq!(command_line("echo", &[]), "echo");
        assert_eq!(
            command_line("echo", &["a b".into(), "$HOME".into()]),
            "echo \"a b\" \"$HOME\""
        );
        assert_eq!(
            command_line("echo", &["say \"hi\" \\o/".into()]),
            "echo \"say \\\"hi\\\" \\\\o/\""
        );
    }
}

#[cfg(test)]
mod robustness {
    use super::*;
    use serde_json::json;

    /// Malformed or odd templates are errors or text, never panics.
    #[test]
    fn odd_templates_never_panic() {
        let v = Vars::new(
            &json!({"x": "1", "list": [1, 2], "obj": {"a": "b"}, "t": true, "nil": null}),
            &BTreeMap::new(),
        )
        .unwrap();
        for t in [
            "{{",
            "}}",
            "{{}}",
            "{{{x}}",
            "{{/x}}",
            "{{#x}}",
            "{{^x}}",
            "{{#list}}{{.}}{{/list}}",
            "{{#obj}}{{a}}{{/obj}}",
            "{{>partial}}",
            "{{=<% %>=}}<% x %>",
            "{{!comment}}",
            "{{ list }}",
            "{{ obj }}",
            "{{ nil }}",
            "{{#t}}yes{{/t}}",
            "{{x.y.z}}",
            "{{&}}",
            "{{{}}}",
            "{{#x}}{{/y}}",
            "\u{0}{{x}}",
            "{{x}}{{",
            "{{ tag: }}",
        ] {
            let _ = v.render(t);
        }
    }
}

#[cfg(test)]
mod sections {
    use super::*;
    use serde_json::json;

    #[test]
    fn sections_lists_and_inverted() {
        let v = Vars::new(
            &json!({"list": ["a", "b"], "obj": {"k": "v"}, "yes": true, "no": false, "n": 0}),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(v.render("{{#list}}[{{.}}]{{/list}}").unwrap(), "[a][b]");
        assert_eq!(v.render("{{#obj}}{{k}}{{/obj}}").unwrap(), "v");
        assert_eq!(
            v.render("{{#yes}}Y{{/yes}}{{#no}}N{{/no}}{{^no}}!N{{/no}}")
                .unwrap(),
            "Y!N"
        );
        assert_eq!(v.render("{{^missing}}none{{/missing}}").unwrap(), "none");
        assert_eq!(v.render("{{! a comment }}x").unwrap(), "x");
        assert_eq!(
            v.render("{{list}}|{{obj}}").unwrap(),
            "[&quot;a&quot;,&quot;b&quot;]|{&quot;k&quot;:&quot;v&quot;}"
        );
        assert_eq!(v.render("{{n}}").unwrap(), "0");
        assert!(v.render("{{#a}}{{/b}}").is_err());
        assert!(v.render("{{/a}}").is_err());
        assert!(v.render("{{>p}}").is_err());
    }
}
