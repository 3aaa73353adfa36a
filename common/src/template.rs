//! Mustache templating of factfile strings, and the `sh -c` command line.
//!
//! Variables come from `--env` (any JSON object, nested and numbers included) plus one variable
//! `tag:<key>` per tag. `{{x}}` is HTML-escaped, `{{{x}}}` and `{{& x}}` are not, and a missing
//! variable renders as nothing.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Compiled template variables.
pub struct Vars {
    data: mustache::Data,
}

impl std::fmt::Debug for Vars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vars")
    }
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
        let data = mustache::to_data(Value::Object(stringify_scalars(map)))
            .map_err(|e| TemplateError(format!("cannot use these variables: {e}")))?;
        Ok(Vars { data })
    }

    /// Renders `text`; a string with no `{{` is returned as is without compiling anything.
    pub fn render(&self, text: &str) -> Result<String, TemplateError> {
        if !text.contains("{{") {
            return Ok(text.to_string());
        }
        let template = mustache::compile_str(text)
            .map_err(|e| TemplateError(format!("invalid template: {e}")))?;
        let mut out = Vec::with_capacity(text.len());
        template
            .render_data(&mut out, &self.data)
            .map_err(|e| TemplateError(format!("cannot render template: {e}")))?;
        String::from_utf8(out)
            .map_err(|e| TemplateError(format!("template output is not UTF-8: {e}")))
    }
}

/// Numbers and booleans render as their JSON text (`{{n}}` with `n: 3` gives `3`).
fn stringify_scalars(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .map(|(k, v)| (k, stringify_value(v)))
        .collect()
}

fn stringify_value(v: Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Bool(b) => Value::String(b.to_string()),
        Value::Object(m) => Value::Object(stringify_scalars(m)),
        Value::Array(a) => Value::Array(a.into_iter().map(stringify_value).collect()),
        other => other,
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
        assert!(escaped.starts_with("&lt;a &amp; "), "{escaped}");
        assert!(!escaped.contains('"'), "{escaped}");
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
