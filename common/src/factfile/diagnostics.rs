//! Why a factfile was refused, and every text that says so. Schema problems read as valico's
//! did for Factotum: `'<json pointer>' - <title> (<detail>)`.

use crate::graph::GraphError;
use crate::template::TemplateError;

/// Why a factfile was refused. The display text follows Factotum's
/// `'<path>' is not a valid factotum factfile: ` prefix (added by the caller, who knows the path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactfileError {
    #[error("invalid JSON - {message} at line {line}, column {column}")]
    Json {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("{}", .0.join("\n"))]
    Schema(Vec<String>),
    #[error("the task '{0}' has no way to continue successfully.")]
    NoContinue(String),
    #[error("the task '{0}' has conflicting actions.")]
    ConflictingActions(String),
    /// A duplicate name, a self or unknown dependency, or a cycle.
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("{what}: {error}")]
    Template { what: String, error: TemplateError },
}

impl FactfileError {
    /// A JSON syntax error: serde_json's message without its trailing " at line L column C".
    pub(super) fn json(e: &serde_json::Error) -> FactfileError {
        let full = e.to_string();
        let message = match full.rfind(" at line ") {
            Some(i) => full[..i].to_string(),
            None => full,
        };
        FactfileError::Json {
            message,
            line: e.line(),
            column: e.column(),
        }
    }
}

/// Where a value is: a JSON pointer, built as the check descends and written out only for a
/// problem.
#[derive(Debug, Clone, Copy)]
pub(super) enum Pointer<'a> {
    /// The document's root (`""`), or where the part being checked sits in it.
    At(&'a str),
    Key(&'a Pointer<'a>, &'a str),
    Index(&'a Pointer<'a>, usize),
}

impl<'a> Pointer<'a> {
    pub fn key(&'a self, key: &'a str) -> Pointer<'a> {
        Pointer::Key(self, key)
    }

    pub fn index(&'a self, i: usize) -> Pointer<'a> {
        Pointer::Index(self, i)
    }
}

impl std::fmt::Display for Pointer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pointer::At(at) => f.write_str(at),
            Pointer::Key(parent, key) => write!(f, "{parent}/{key}"),
            Pointer::Index(parent, i) => write!(f, "{parent}/{i}"),
        }
    }
}

/// Schema violations, collected in document order.
#[derive(Debug, Default)]
pub(super) struct Diagnostics(pub Vec<String>);

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    fn push(&mut self, path: &Pointer, problem: &str) {
        let path = path.to_string();
        let path = if path.is_empty() { "/" } else { &path };
        self.0.push(format!("'{path}' - {problem}"));
    }

    /// Appends ` (task '<name>')` to the problems from `from` on: `/data/tasks/7` alone is hard
    /// to find.
    pub fn name_task(&mut self, from: usize, name: &str) {
        for e in &mut self.0[from..] {
            e.push_str(&format!(" (task '{}')", Printable(name)));
        }
    }

    pub fn wrong_type(&mut self, path: &Pointer, expected: &str) {
        self.push(
            path,
            &format!("Type of the value is wrong (The value must be {expected})"),
        );
    }

    pub fn required(&mut self, path: &Pointer) {
        self.push(path, "This property is required");
    }

    pub fn not_allowed(&mut self, path: &Pointer) {
        self.push(
            path,
            "Additional properties are not allowed (this property is not part of the schema)",
        );
    }

    pub fn below(&mut self, path: &Pointer, min: impl std::fmt::Display) {
        self.push(
            path,
            &format!("Minimum condition is not met (the value must be at least {min})"),
        );
    }

    pub fn above(&mut self, path: &Pointer, max: impl std::fmt::Display) {
        self.push(
            path,
            &format!("Maximum condition is not met (the value must be at most {max})"),
        );
    }

    pub fn empty(&mut self, path: &Pointer) {
        self.push(
            path,
            "MinLength condition is not met (the value must not be empty)",
        );
    }

    pub fn not_one_of(&mut self, path: &Pointer, allowed: &[&str]) {
        let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        self.push(
            path,
            &format!(
                "Enum conditions are not met (the value must be one of {})",
                list.join(", ")
            ),
        );
    }

    /// A key written twice in one object: JSON readers disagree on which one counts (serde
    /// keeps the last, others the first), so neither is taken.
    pub fn duplicate_key(&mut self, path: &Pointer, key: &str) {
        self.push(
            path,
            &format!(
                "duplicate key \"{}\" (a key may appear only once in an object)",
                key.escape_debug()
            ),
        );
    }

    /// A job or task name with a control character (a newline, a NUL, …): printed on a console
    /// line, it could forge other lines.
    pub fn control_character(&mut self, path: &Pointer, c: char) {
        self.push(
            path,
            &format!(
                "Pattern condition is not met (the value must not contain control characters; it contains U+{:04X})",
                u32::from(c)
            ),
        );
    }

    /// A job or task name longer than a name may be: it is printed on console lines, in
    /// payloads and in every listing.
    pub fn too_long(&mut self, path: &Pointer, len: usize, max: usize) {
        self.push(
            path,
            &format!("the value is {len} bytes long, more than the {max} a name may be"),
        );
    }

    /// A NUL in what becomes a process's command line, argument or environment: no process can
    /// be given one.
    pub fn nul(&mut self, path: &Pointer) {
        self.push(
            path,
            "Pattern condition is not met (the value must not contain a NUL character, which no process can be given)",
        );
    }

    pub fn unsupported_schema(&mut self, path: &Pointer, uri: &str, supported: &[&str]) {
        self.push(
            path,
            &format!(
                "Unsupported schema ('{uri}' is not {})",
                supported.join(" or ")
            ),
        );
    }
}

/// A name as it may be printed on one line: control characters escaped (`\n`, `\u{0}`),
/// everything else as written.
pub(super) struct Printable<'a>(pub &'a str);

impl std::fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A name past the limit is shown by its start only.
        let shown = self
            .0
            .char_indices()
            .nth(80)
            .map_or(self.0, |(i, _)| &self.0[..i]);
        for c in shown.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_debug())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        if shown.len() < self.0.len() {
            write!(f, "…")?;
        }
        Ok(())
    }
}
