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
    let e = try_parse_from::<Flags, _, _>(["prog", "--config", "/nonexistent/x.toml"]).unwrap_err();
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
