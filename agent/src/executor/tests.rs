use super::*;

fn spec(line: &str) -> ExecSpec {
    ExecSpec {
        command_line: line.into(),
        max_output: 10_000,
        dry_run: false,
        kill_grace: Duration::from_millis(300),
        shim: None,
        env: vec![],
        cwd: None,
        redact: Redactor::default(),
        log: None,
    }
}

async fn run(line: &str) -> (TaskResult, Vec<String>) {
    run_spec(&spec(line)).await
}

async fn run_spec(spec: &ExecSpec) -> (TaskResult, Vec<String>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let res = execute(spec, tx, CancellationToken::new()).await;
    let mut lines = vec![];
    while let Ok(e) = rx.try_recv() {
        if let ExecEvent::Line {
            stream,
            line,
            continued,
        } = e
        {
            // Whole lines of one read come together, joined by '\n': one entry per line.
            for (i, line) in line.split('\n').enumerate() {
                let mark = if continued && i == 0 { "+" } else { "" };
                lines.push(format!("{mark}{stream:?}:{line}"));
            }
        }
    }
    (res, lines)
}

#[tokio::test]
async fn streams_lines_and_keeps_tails() {
    let (res, lines) = run("echo one; echo two >&2; printf 'no newline'").await;
    assert_eq!(res.outcome, Outcome::Exited(0));
    assert_eq!(res.stdout, "one\nno newline");
    assert_eq!(res.stderr, "two");
    assert!(lines.contains(&"Stdout:one".to_string()));
    assert!(lines.contains(&"Stderr:two".to_string()));
}

#[tokio::test]
async fn exit_codes_and_signals() {
    assert_eq!(run("exit 7").await.0.outcome, Outcome::Exited(7));
    assert_eq!(run("kill -9 $$").await.0.outcome, Outcome::Exited(1));
}

#[tokio::test]
async fn quoted_arguments_expand_variables() {
    let line = factotum_common::template::command_line("echo", &["$((1+2)) \"q\"".into()]);
    assert_eq!(run(&line).await.0.stdout, "3 \"q\"");
}

#[tokio::test]
async fn cancel_terms_then_kills_the_whole_group() {
    let dir = std::env::temp_dir().join(format!("factotum-exec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("child.pid");
    // The shell ignores TERM and has a child of its own: both must die.
    let line = format!(
        "trap '' TERM; sleep 30 & echo $! > {}; wait",
        marker.display()
    );
    let (tx, _rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c2.cancel();
    });
    let res = execute(&spec(&line), tx, cancel).await;
    assert_eq!(res.outcome, Outcome::Exited(1));
    let child: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{child}/stat"))
            .unwrap_or_default()
            .contains(") Z ");
    assert!(!alive, "grandchild {child} survived the cancel");
    let _ = std::fs::remove_dir_all(dir);
}

/// A fresh, empty directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("factotum-exec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn env_is_added_to_the_agents_own() {
    let mut s = spec(r#"echo "$FOO"; echo "${PATH:+PATH kept}""#);
    s.env = vec![("FOO".into(), "bar  $baz".into())];
    let (res, lines) = run_spec(&s).await;
    assert_eq!(res.outcome, Outcome::Exited(0));
    assert_eq!(res.stdout, "bar  $baz\nPATH kept");
    assert!(lines.contains(&"Stdout:bar  $baz".to_string()));
}

#[tokio::test]
async fn cwd_is_honoured() {
    let dir = scratch("cwd");
    let mut s = spec("pwd; echo x > here");
    s.cwd = Some(dir.clone());
    let (res, _) = run_spec(&s).await;
    assert_eq!(res.outcome, Outcome::Exited(0));
    assert_eq!(
        PathBuf::from(&res.stdout),
        std::fs::canonicalize(&dir).unwrap()
    );
    assert!(dir.join("here").exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_unusable_cwd_is_a_spawn_failure_naming_it() {
    let dir = scratch("badcwd");
    let missing = dir.join("missing");
    let mut s = spec("echo never");
    s.cwd = Some(missing.clone());
    let (res, lines) = run_spec(&s).await;
    assert_eq!(
        res.outcome,
        Outcome::SpawnFailed(format!(
            "cannot use '{}' as the working directory: No such file or directory (os error 2)",
            missing.display()
        ))
    );
    assert!(lines.is_empty());
    let file = dir.join("file");
    std::fs::write(&file, "").unwrap();
    s.cwd = Some(file.clone());
    assert_eq!(
        run_spec(&s).await.0.outcome,
        Outcome::SpawnFailed(format!(
            "cannot use '{}' as the working directory: Not a directory (os error 20)",
            file.display()
        ))
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The lines a run reported, as (stream, text), and which were flagged `continued`.
async fn run_lines(spec: &ExecSpec) -> (TaskResult, Vec<(Stream, String)>, Vec<bool>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let res = execute(spec, tx, CancellationToken::new()).await;
    let (mut lines, mut flags) = (vec![], vec![]);
    while let Ok(e) = rx.try_recv() {
        if let ExecEvent::Line {
            stream,
            line,
            continued,
        } = e
        {
            lines.push((stream, line));
            flags.push(continued);
        }
    }
    (res, lines, flags)
}

#[tokio::test]
async fn a_line_longer_than_the_cap_comes_in_pieces_and_the_tail_keeps_its_bytes() {
    // 2.5 MiB of 'a' with no newline at all, then (on stderr) a line of exactly the cap.
    let line = format!(
        "head -c {} /dev/zero | tr '\\0' a; head -c {MAX_LINE} /dev/zero | tr '\\0' b >&2; printf '\\nafter\\n' >&2",
        MAX_LINE * 5 / 2
    );
    let (res, lines, continued) = run_lines(&spec(&line)).await;
    assert_eq!(res.outcome, Outcome::Exited(0));
    // Each stream's first piece starts a line; the further pieces of a line go on with it.
    let flags = |want: Stream| -> Vec<bool> {
        let pieces = lines.iter().zip(&continued);
        pieces
            .filter(|((s, _), _)| *s == want)
            .map(|(_, &c)| c)
            .collect()
    };
    assert_eq!(flags(Stream::Stdout), [false, true, true]);
    assert_eq!(flags(Stream::Stderr), [false, false]);
    let sizes: Vec<(Stream, usize)> = lines.iter().map(|(s, l)| (*s, l.len())).collect();
    let mut out: Vec<usize> = sizes
        .iter()
        .filter(|(s, _)| *s == Stream::Stdout)
        .map(|(_, n)| *n)
        .collect();
    out.sort();
    assert_eq!(out, [MAX_LINE / 2, MAX_LINE, MAX_LINE]);
    let err: Vec<&String> = lines
        .iter()
        .filter(|(s, _)| *s == Stream::Stderr)
        .map(|(_, l)| l)
        .collect();
    assert_eq!(
        err.len(),
        2,
        "a line of exactly the cap is one piece, its newline no extra line"
    );
    assert_eq!(err[0].len(), MAX_LINE);
    assert_eq!(err[1], "after");
    // The tails hold the bytes as written: no newline where a line was cut.
    assert_eq!(res.stdout, "a".repeat(10_000));
    assert_eq!(res.stderr, format!("{}\nafter", "b".repeat(10_000 - 6)));
}

#[tokio::test]
async fn a_long_line_is_cut_between_characters() {
    // 'x' then two-byte characters: the cap falls inside one of them.
    let n = MAX_LINE / 2 + 10;
    let line = format!("printf x; yes é | head -n {n} | tr -d '\\n'");
    let (res, lines, continued) = run_lines(&spec(&line)).await;
    assert_eq!(res.outcome, Outcome::Exited(0));
    assert_eq!(lines.len(), 2);
    assert_eq!(continued, [false, true]);
    let whole: String = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(whole, format!("x{}", "é".repeat(n)));
    assert_eq!(lines[0].1.len(), MAX_LINE - 1);
}

#[tokio::test]
async fn a_long_framed_line_keeps_its_stream_across_pieces() {
    // A stand-in for the shim: framed lines on stdout, the first longer than the cap.
    let dir = scratch("framed");
    let exe = dir.join("factotum-shim");
    std::fs::write(
        &exe,
        format!(
            "#!/bin/sh\nprintf 2; head -c {} /dev/zero | tr '\\0' e\nprintf '\\n1out\\nX3 1000\\n'\n",
            MAX_LINE * 2
        ),
    )
    .unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut s = spec("unused");
    s.shim = Some((exe, dir.clone()));
    let (res, lines, continued) = run_lines(&s).await;
    assert_eq!(continued, [false, true, true, false]);
    assert_eq!(res.outcome, Outcome::Exited(3));
    let got: Vec<(Stream, usize)> = lines.iter().map(|(s, l)| (*s, l.len())).collect();
    assert_eq!(
        got,
        [
            (Stream::Stderr, MAX_LINE - 1),
            (Stream::Stderr, MAX_LINE),
            (Stream::Stderr, 1),
            (Stream::Stdout, 3)
        ]
    );
    assert_eq!(res.stderr, "e".repeat(10_000));
    assert_eq!(res.stdout, "out");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn dry_run_runs_nothing() {
    let mut s = spec("exit 9");
    s.dry_run = true;
    let (tx, _rx) = mpsc::channel(1);
    assert_eq!(
        execute(&s, tx, CancellationToken::new()).await.outcome,
        Outcome::Exited(0)
    );
}

#[tokio::test]
async fn short_lines_come_in_batches_and_every_line_arrives() {
    // 100,000 short lines: far fewer events than lines (whole lines of a read travel together),
    // and split on '\n' they are every line, in order.
    let (tx, mut rx) = mpsc::channel(16);
    let s = spec("seq 100000; echo err >&2");
    let collect = async {
        let (mut events, mut out, mut err) = (0, vec![], vec![]);
        while let Some(e) = rx.recv().await {
            if let ExecEvent::Line { stream, line, .. } = e {
                events += 1;
                let lines = line.split('\n').map(str::to_string);
                match stream {
                    Stream::Stdout => out.extend(lines),
                    Stream::Stderr => err.extend(lines),
                }
            }
        }
        (events, out, err)
    };
    let (res, (events, out, err)) =
        tokio::join!(execute(&s, tx, CancellationToken::new()), collect);
    assert_eq!(res.outcome, Outcome::Exited(0));
    let want: Vec<String> = (1..=100_000).map(|i| i.to_string()).collect();
    assert_eq!(out, want);
    assert_eq!(err, ["err"]);
    assert!(events < 1_000, "{events} events for 100,001 lines");
    assert!(
        res.stdout.ends_with("99999\n100000"),
        "the tail joins lines with \\n"
    );
}
