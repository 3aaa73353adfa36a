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
mod tests {
    use std::io::Write;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::DurationRange;

    /// A small command shaped like the real ones: a config flag, options with variables and
    /// defaults, a repeatable flag, a duration, a switch, a value-taking bool, a subcommand.
    #[derive(Debug, clap::Parser)]
    #[command(name = "prog")]
    struct Flags {
        #[command(subcommand)]
        tool: Option<Tool>,
        /// The config file.
        #[arg(long, env = "FACTOTUM_CONFIG_TEST_FILE", value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, env = "FACTOTUM_CONFIG_TEST_NAME", default_value = "default")]
        name: String,
        #[arg(long = "label", value_delimiter = ',')]
        labels: Vec<String>,
        #[arg(long, default_value = "60", value_parser = DurationRange::ANY.parser())]
        grace: Duration,
        #[arg(long)]
        insecure: bool,
        #[arg(long, default_value_t = true, action = ArgAction::Set)]
        color: bool,
        #[arg(long, alias = "cpus")]
        slots: Option<u32>,
        #[arg(long, value_enum, default_value = "pretty")]
        log_format: crate::LogFormat,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Tool {
        Certs {
            #[arg(long)]
            out: PathBuf,
        },
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn parse_with(text: &str, args: &[&str]) -> Result<Flags, String> {
        let f = file(text);
        let path = f.path().to_str().unwrap().to_string();
        let mut argv = vec!["prog", "--config", &path];
        argv.extend(args);
        try_parse_from::<Flags, _, _>(argv).map_err(|e| e.to_string().replace(&path, "FILE"))
    }

    #[test]
    fn a_flag_beats_the_variable_which_beats_the_file_which_beats_the_default() {
        #[derive(Debug, clap::Parser)]
        struct Layers {
            #[arg(long)]
            config: Option<PathBuf>,
            #[arg(
                long,
                env = "FACTOTUM_CONFIG_TEST_LAYER_FLAG",
                default_value = "default"
            )]
            flag: String,
            #[arg(
                long,
                env = "FACTOTUM_CONFIG_TEST_LAYER_ENV",
                default_value = "default"
            )]
            env: String,
            #[arg(
                long,
                env = "FACTOTUM_CONFIG_TEST_LAYER_FILE",
                default_value = "default"
            )]
            file: String,
            #[arg(
                long,
                env = "FACTOTUM_CONFIG_TEST_LAYER_NONE",
                default_value = "default"
            )]
            none: String,
        }
        std::env::set_var("FACTOTUM_CONFIG_TEST_LAYER_FLAG", "env");
        std::env::set_var("FACTOTUM_CONFIG_TEST_LAYER_ENV", "env");
        let f = file("flag = 'file'\nenv = 'file'\nfile = 'file'\n");
        let l: Layers = try_parse_from([
            "prog".as_ref(),
            "--config".as_ref(),
            f.path().as_os_str(),
            "--flag=flag".as_ref(),
        ])
        .unwrap();
        assert_eq!(
            [l.flag, l.env, l.file, l.none],
            ["flag", "env", "file", "default"]
        );
    }

    #[test]
    fn an_array_of_tables_reaches_its_flag_as_json() {
        #[derive(Debug, clap::Parser)]
        struct Hooks {
            #[arg(long)]
            config: Option<PathBuf>,
            #[arg(long)]
            webhook: Vec<String>,
        }
        let f = file(
            "[[webhook]]\nurl = 'http://a/x'\nsecrets = ['s1', 's2']\nfilter = \"terminal\"\n\n\
             [[webhook]]\nurl = 'http://b/y'\nn = 3\n",
        );
        let h: Hooks =
            try_parse_from(["prog".as_ref(), "--config".as_ref(), f.path().as_os_str()]).unwrap();
        assert_eq!(
            h.webhook,
            [
                r#"{"filter":"terminal","secrets":["s1","s2"],"url":"http://a/x"}"#,
                r#"{"n":3,"url":"http://b/y"}"#
            ]
        );
    }

    #[test]
    fn a_flag_given_by_the_user_replaces_the_files_array_rather_than_adding_to_it() {
        let f = parse_with("label = ['a=1', 'b=2']", &[]).unwrap();
        assert_eq!(f.labels, ["a=1", "b=2"]);
        let f = parse_with("label = ['a=1', 'b=2']", &["--label", "c=3"]).unwrap();
        assert_eq!(f.labels, ["c=3"]);
        let f = parse_with("label = 'a=1,b=2'", &[]).unwrap();
        assert_eq!(
            f.labels,
            ["a=1", "b=2"],
            "a single string splits like the flag"
        );
    }

    #[test]
    fn an_array_for_a_flag_that_does_not_repeat_is_an_error() {
        let e = parse_with("name = ['a', 'b']", &[]).unwrap_err();
        assert_eq!(
            e,
            "error: key 'name' in FILE (line 1): takes one value, not an array\n"
        );
    }

    #[test]
    fn durations_are_a_number_of_seconds_or_a_string_with_units() {
        let grace = |text| parse_with(text, &[]).unwrap().grace;
        assert_eq!(grace("grace = 20"), Duration::from_secs(20));
        assert_eq!(grace("grace = 1.5"), Duration::from_millis(1500));
        assert_eq!(grace("grace = '15s'"), Duration::from_secs(15));
        assert_eq!(grace("grace = \"1h30m\""), Duration::from_secs(5400));
        assert_eq!(grace(""), Duration::from_secs(60));
        let e = parse_with("\ngrace = 'soon'", &[]).unwrap_err();
        assert!(
            e.starts_with("error: key 'grace' in FILE (line 2): 'soon' is not a duration"),
            "{e}"
        );
    }

    #[test]
    fn switches_take_booleans_and_value_flags_take_them_as_text() {
        let f = parse_with("insecure = true\ncolor = false", &[]).unwrap();
        assert!(f.insecure);
        assert!(!f.color);
        let f = parse_with("insecure = false", &[]).unwrap();
        assert!(!f.insecure);
        let f = parse_with("insecure = false", &["--insecure"]).unwrap();
        assert!(f.insecure);
        let f = parse_with("color = false", &["--color", "true"]).unwrap();
        assert!(f.color);
        let e = parse_with("insecure = 'yes'", &[]).unwrap_err();
        assert!(
            e.contains("key 'insecure' in FILE (line 1): is a switch: true or false, not string"),
            "{e}"
        );
    }

    #[test]
    fn numbers_and_choices_are_checked_by_the_flags_own_parser() {
        let f = parse_with("slots = 0x10\nlog-format = 'json'", &[]).unwrap();
        assert_eq!(f.slots, Some(16));
        assert_eq!(
            parse_with("cpus = 3", &[]).unwrap().slots,
            Some(3),
            "an alias works too"
        );
        assert_eq!(f.log_format, crate::LogFormat::Json);
        let e = parse_with("slots = -1", &[]).unwrap_err();
        assert!(
            e.starts_with("error: key 'slots' in FILE (line 1): -1 is not in "),
            "{e}"
        );
        let e = parse_with("log-format = 'xml'", &[]).unwrap_err();
        assert_eq!(
            e,
            "error: key 'log-format' in FILE (line 1): invalid value 'xml': one of pretty, json\n"
        );
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_the_key_and_the_file() {
        let e = parse_with("name = 'x'\n\nfoo = 1\n", &[]).unwrap_err();
        assert_eq!(e, "error: unknown key 'foo' in FILE (line 3)\n");
        for key in [
            "out", "certs", "tool", "help", "version", "labels", "tls.ca",
        ] {
            let e = parse_with(&format!("{key} = 'x'"), &[]).unwrap_err();
            let name = key.split('.').next().unwrap();
            assert!(
                e.contains(&format!("unknown key '{name}' in FILE")),
                "{key}: {e}"
            );
        }
        let e = parse_with("slots = 1\nlog_format = 'json'", &[]).unwrap_err();
        assert_eq!(
            e,
            "error: unknown key 'log_format' in FILE (line 2): did you mean 'log-format'?\n"
        );
        let e = parse_with("no_such_thing = 1", &[]).unwrap_err();
        assert_eq!(e, "error: unknown key 'no_such_thing' in FILE (line 1)\n");
        let e = parse_with("[section]\nname = 'x'", &[]).unwrap_err();
        assert!(e.contains("unknown key 'section' in FILE (line 1)"), "{e}");
    }

    #[test]
    fn a_config_file_cannot_name_another() {
        let e = parse_with("config = 'other.toml'", &[]).unwrap_err();
        assert!(
            e.contains("key 'config' in FILE (line 1): a config file cannot name another"),
            "{e}"
        );
    }

    #[test]
    fn bad_toml_is_reported_with_its_line_and_column() {
        let e = parse_with("name = 'x'\ngrace = = 3\n", &[]).unwrap_err();
        assert!(
            e.starts_with("error: FILE is not valid TOML (line 2, column 9): "),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
        let e = parse_with("name = 'x'\nname = 'y'\n", &[]).unwrap_err();
        assert!(e.contains("is not valid TOML (line 2, column 1)"), "{e}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let e =
            try_parse_from::<Flags, _, _>(["prog", "--config", "/nonexistent/x.toml"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e
            .to_string()
            .starts_with("error: cannot read config file /nonexistent/x.toml: "));
    }

    #[test]
    fn the_file_may_come_from_the_variable_and_subcommands_still_parse() {
        #[derive(Debug, clap::Parser)]
        struct FromEnv {
            #[command(subcommand)]
            tool: Option<Tool>,
            #[arg(long, env = "FACTOTUM_CONFIG_TEST_FROM_ENV")]
            config: Option<PathBuf>,
            #[arg(long, default_value = "default")]
            name: String,
        }
        let f = file("name = 'from-file'");
        std::env::set_var("FACTOTUM_CONFIG_TEST_FROM_ENV", f.path());
        let p: FromEnv = try_parse_from(["prog"]).unwrap();
        assert_eq!(p.name, "from-file");
        let p: FromEnv = try_parse_from(["prog", "certs", "--out", "/tmp/x"]).unwrap();
        assert_eq!(p.name, "from-file");
        assert!(matches!(p.tool, Some(Tool::Certs { out }) if out == Path::new("/tmp/x")));
    }

    #[test]
    fn without_a_file_parsing_is_plain_clap() {
        let f: Flags = try_parse_from(["prog", "--name", "n"]).unwrap();
        assert_eq!((f.name.as_str(), f.grace), ("n", Duration::from_secs(60)));
        let e = try_parse_from::<Flags, _, _>(["prog", "--help"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DisplayHelp);
        let e = try_parse_from::<Flags, _, _>(["prog", "--nope"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnknownArgument);
    }

    #[test]
    fn a_file_value_can_satisfy_what_the_command_line_alone_would_lack() {
        #[derive(Debug, clap::Parser)]
        struct Pair {
            #[arg(long)]
            config: Option<PathBuf>,
            #[arg(long, requires = "key")]
            cert: Option<String>,
            #[arg(long, requires = "cert")]
            key: Option<String>,
        }
        let f = file("cert = 'c.pem'");
        let p: Pair = try_parse_from([
            "prog".as_ref(),
            "--key=k.pem".as_ref(),
            "--config".as_ref(),
            f.path().as_os_str(),
        ])
        .unwrap();
        assert_eq!(
            (p.cert.unwrap(), p.key.unwrap()),
            ("c.pem".into(), "k.pem".into())
        );
    }

    #[test]
    fn lines_and_columns_count_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é\nx", 3), (2, 1));
    }
}
