//! Config files (`--config FILE`, or the variable of that flag such as `FACTOTUM_CONFIG`): TOML
//! whose top-level keys are the long flag names, beneath the flags and their variables.
//!
//! A file is not a second way to declare flags: each key is looked up among the flags of the
//! command itself and becomes that flag, placed before the ones the user typed, so clap checks
//! it with the same parser, default and help. Precedence is flag > variable > file > default; a
//! file value is dropped when clap already has the flag from the command line or a variable.
//! A repeatable flag takes an array (one occurrence per element); a switch takes `true` or
//! `false`; strings, integers and floats are passed as text, so a duration is `15` or `"15s"`.
//!
//! Everything that goes wrong names the file and the key (or, for bad TOML, the line and column)
//! in one line, as a [`clap::Error`] that exits 2 like clap's own.

use std::ffi::OsString;
use std::path::Path;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, Parser};
use toml::de::{DeTable, DeValue};

/// The long name of the flag that names the file. A command without it has no config file.
const CONFIG: &str = "config";

/// `C::parse()` with the config file underneath: on error prints it and exits (2; 0 for
/// `--help` and `--version`).
pub fn parse<C: Parser>() -> C {
    try_parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
}

/// `C::try_parse_from(args)` with the config file that `args` (or the `--config` flag's variable)
/// names underneath.
pub fn try_parse_from<C, I, T>(args: I) -> Result<C, clap::Error>
where
    C: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let from_file = file_args(C::command(), &args)?;
    let mut all = Vec::with_capacity(args.len() + from_file.len());
    all.extend(args.first().cloned());
    all.extend(from_file);
    all.extend(args.iter().skip(1).cloned());
    C::try_parse_from(all)
}

/// The flags the config file stands for, minus those the user gave by flag or variable.
fn file_args(mut cmd: Command, args: &[OsString]) -> Result<Vec<OsString>, clap::Error> {
    cmd.build();
    let Some(config) = cmd.get_arguments().find(|a| a.get_long() == Some(CONFIG)) else {
        return Ok(vec![]);
    };
    // A first, forgiving parse of what the user typed: where the file is, and which flags are
    // already set. Errors (a flag the file would satisfy, say) wait for the real parse; --help
    // and --version end here.
    let given = cmd.clone().ignore_errors(true).try_get_matches_from(args)?;
    let Some(path) = given
        .get_raw(config.get_id().as_str())
        .and_then(|mut v| v.next())
    else {
        return Ok(vec![]);
    };
    let path = Path::new(path);
    let text = std::fs::read_to_string(path).map_err(|e| {
        error(
            ErrorKind::Io,
            format!("cannot read config file {}: {e}", path.display()),
        )
    })?;
    let file = File {
        path: &path.display().to_string(),
        text: &text,
    };
    file.args(&cmd, |arg| set_by_user(&given, arg))
}

/// Whether the user set `arg` (on the command line or in its variable).
fn set_by_user(given: &ArgMatches, arg: &Arg) -> bool {
    match given.value_source(arg.get_id().as_str()) {
        None | Some(ValueSource::DefaultValue) => false,
        Some(_) => true,
    }
}

/// A TOML value as JSON.
fn json(value: &DeValue) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match value {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map_err(|e| e.to_string())?
            .into(),
        DeValue::Float(f) => {
            let f: f64 = f.as_str().parse().map_err(|_| "not a number".to_string())?;
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or("not a finite number")?
        }
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(items) => Value::Array(
            (items.iter())
                .map(|i| json(i.get_ref()))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(t) => Value::Object(
            (t.iter())
                .map(|(k, v)| Ok((k.get_ref().to_string(), json(v.get_ref())?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// One config file's text, and its name for messages.
struct File<'a> {
    path: &'a str,
    text: &'a str,
}

impl File<'_> {
    /// Each key of the file as flags of `cmd`, in the file's order, skipping the flags `given`
    /// says the user set.
    fn args(
        &self,
        cmd: &Command,
        given: impl Fn(&Arg) -> bool,
    ) -> Result<Vec<OsString>, clap::Error> {
        let table = DeTable::parse(self.text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let (line, column) = line_column(self.text, s.start);
                    format!(" (line {line}, column {column})")
                })
                .unwrap_or_default();
            let what = e.message().lines().next().unwrap_or("").trim_end();
            error(
                ErrorKind::InvalidValue,
                format!("{} is not valid TOML{at}: {what}", self.path),
            )
        })?;
        let mut entries: Vec<_> = table.get_ref().iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        let mut out = vec![];
        for (key, value) in entries {
            let key = Key {
                file: self,
                name: key.get_ref(),
                line: line_column(self.text, key.span().start).0,
            };
            let arg = key.arg(cmd)?;
            let values = key.values(arg, value.get_ref())?;
            if given(arg) {
                continue;
            }
            out.extend(values);
        }
        Ok(out)
    }
}

/// A key of a config file, where it stands.
struct Key<'a> {
    file: &'a File<'a>,
    name: &'a str,
    line: usize,
}

impl Key<'_> {
    /// The flag this key names: a top-level option or switch with that long name (or alias).
    fn arg<'c>(&self, cmd: &'c Command) -> Result<&'c Arg, clap::Error> {
        if self.name == CONFIG {
            return Err(self.error(
                ErrorKind::ArgumentConflict,
                "a config file cannot name another config file",
            ));
        }
        cmd.get_arguments()
            .find(|a| {
                let aliases = a.get_all_aliases().unwrap_or_default();
                (a.get_long() == Some(self.name) || aliases.contains(&self.name))
                    && matches!(
                        a.get_action(),
                        ArgAction::Set
                            | ArgAction::Append
                            | ArgAction::SetTrue
                            | ArgAction::SetFalse
                    )
            })
            .ok_or_else(|| {
                let dashed = self.name.replace('_', "-");
                let hint = if dashed != self.name
                    && cmd.get_arguments().any(|a| a.get_long() == Some(&dashed))
                {
                    format!(": did you mean '{dashed}'?")
                } else {
                    String::new()
                };
                error(
                    ErrorKind::UnknownArgument,
                    format!(
                        "unknown key '{}' in {} (line {}){hint}",
                        self.name, self.file.path, self.line
                    ),
                )
            })
    }

    /// The flags that stand for `value`, each value checked by the flag's own parser.
    fn values(&self, arg: &Arg, value: &DeValue) -> Result<Vec<OsString>, clap::Error> {
        let flag = format!("--{}", self.name);
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, DeValue::Boolean(b))
            | (ArgAction::SetFalse, DeValue::Boolean(b)) => {
                let on = matches!(arg.get_action(), ArgAction::SetTrue);
                Ok(if *b == on { vec![flag.into()] } else { vec![] })
            }
            (ArgAction::SetTrue | ArgAction::SetFalse, _) => Err(self.error(
                ErrorKind::InvalidValue,
                format!("is a switch: true or false, not {}", value.type_str()),
            )),
            (ArgAction::Append, DeValue::Array(items)) => items
                .iter()
                .map(|item| self.value(arg, &flag, item.get_ref()))
                .collect(),
            (_, DeValue::Array(_)) => {
                Err(self.error(ErrorKind::TooManyValues, "takes one value, not an array"))
            }
            _ => Ok(vec![self.value(arg, &flag, value)?]),
        }
    }

    /// `--flag=value` for one scalar, once the flag's parser accepts it.
    fn value(&self, arg: &Arg, flag: &str, value: &DeValue) -> Result<OsString, clap::Error> {
        let text = match value {
            DeValue::String(s) => s.to_string(),
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
                .map_err(|e| self.error(ErrorKind::InvalidValue, e))?
                .to_string(),
            DeValue::Float(f) => f.as_str().to_string(),
            DeValue::Boolean(b) => b.to_string(),
            DeValue::Datetime(d) => d.to_string(),
            // A table (`[[webhook]]`) reaches the flag as JSON: its parser decides.
            DeValue::Table(_) => json(value)
                .map_err(|e| self.error(ErrorKind::InvalidValue, e))?
                .to_string(),
            DeValue::Array(_) => {
                return Err(self.error(
                    ErrorKind::InvalidValue,
                    format!("takes a string or a number, not {}", value.type_str()),
                ))
            }
        };
        self.check(arg, &text)?;
        Ok(format!("{flag}={text}").into())
    }

    /// Runs the flag's parser on `text` (each piece, for a flag with a delimiter) as the one value
    /// of a command of its own, so a bad value is reported against this file and key rather than
    /// as if the user had typed it.
    fn check(&self, arg: &Arg, text: &str) -> Result<(), clap::Error> {
        let alone = Arg::new(arg.get_id().clone())
            .allow_hyphen_values(true)
            .value_parser(arg.get_value_parser().clone())
            .value_delimiter(arg.get_value_delimiter());
        let Err(e) = Command::new("config")
            .no_binary_name(true)
            .arg(alone)
            .try_get_matches_from([text])
        else {
            return Ok(());
        };
        // The flag's own words when it has them (they name the value), else clap's kind.
        let why = match (e.kind(), std::error::Error::source(&e)) {
            (ErrorKind::InvalidValue, _) => {
                let names: Vec<String> = arg
                    .get_possible_values()
                    .iter()
                    .map(|v| v.get_name().to_string())
                    .collect();
                format!("invalid value '{text}': one of {}", names.join(", "))
            }
            (_, Some(source)) => source.to_string(),
            (kind, None) => format!("invalid value '{text}': {kind}"),
        };
        Err(self.error(ErrorKind::ValueValidation, why))
    }

    fn error(&self, kind: ErrorKind, what: impl std::fmt::Display) -> clap::Error {
        error(
            kind,
            format!(
                "key '{}' in {} (line {}): {what}",
                self.name, self.file.path, self.line
            ),
        )
    }
}

/// One line, `error: ` before it as clap writes its own; exit code 2.
fn error(kind: ErrorKind, message: String) -> clap::Error {
    clap::Error::raw(kind, format!("{message}\n"))
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

#[cfg(test)]
mod tests;
