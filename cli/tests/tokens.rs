//! Client tokens with scopes (issue 12): `factotum-coordinator tokens add`, `--tokens FILE`,
//! the CLI's `--token`; SIGHUP picks up a new token and drops a removed one at once, closing
//! its open watch.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::fleet::{agent, sibling, Coordinator};
use support::*;

fn add_token(file: &str, name: &str, scope: &str) -> String {
    let o = Command::new(sibling("factotum-coordinator"))
        .args([
            "tokens", "add", "--file", file, "--name", name, "--scope", scope,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn with_token(args: &[&str], url: &str, token: Option<&str>) -> std::process::Output {
    let mut all = args.to_vec();
    all.extend(["--coordinator", url]);
    if let Some(t) = token {
        all.extend(["--token", t]);
    }
    run(&all)
}

fn hup(c: &Coordinator) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.proc.pid()),
        nix::sys::signal::SIGHUP,
    )
    .unwrap();
}

#[test]
fn tokens_have_scopes_and_sighup_adds_and_removes_them() {
    let d = Dir::new();
    let file = d.file("tokens").to_string_lossy().into_owned();
    let reader = add_token(&file, "reader", "read");
    let submitter = add_token(&file, "submitter", "submit,read");
    assert!(
        !std::fs::read_to_string(&file).unwrap().contains(&reader),
        "only hashes at rest"
    );
    let c = Coordinator::start(&["--tokens", &file]);
    let _a = agent(&c.url, "worker", None, &[]);

    let o = with_token(&["runs"], &c.url, None);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("a token is needed"), "{}", stderr(&o));
    let o = with_token(&["runs"], &c.url, Some("fct_not-a-token"));
    assert_eq!(o.status.code(), Some(4));
    assert!(
        stderr(&o).contains("not one this coordinator knows"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        with_token(&["runs"], &c.url, Some(&reader)).status.code(),
        Some(0)
    );
    let ff = d.write(
        "t.factfile",
        &factfile("tokened", vec![task("t", "echo hi", &[], &[])]),
    );
    let o = with_token(&["submit", &ff], &c.url, Some(&reader));
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("'reader' may not do this: it needs the 'submit' scope"),
        "{}",
        stderr(&o)
    );
    assert!(eventually(Duration::from_secs(20), || stdout(&with_token(
        &["agents"],
        &c.url,
        Some(&reader)
    ))
    .contains("worker")));
    let o = with_token(&["submit", &ff, "--wait"], &c.url, Some(&submitter));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // A new token works once the coordinator re-reads the file.
    let late = add_token(&file, "late", "read");
    assert_eq!(
        with_token(&["runs"], &c.url, Some(&late)).status.code(),
        Some(4)
    );
    hup(&c);
    assert!(eventually(Duration::from_secs(10), || with_token(
        &["runs"],
        &c.url,
        Some(&late)
    )
    .status
    .success()));

    // A removed token stops working at once, and its open watch closes.
    let slow = d.write(
        "slow.factfile",
        &factfile("slow", vec![task("t", "sleep 30", &[], &[])]),
    );
    let id = stdout(&with_token(&["submit", &slow], &c.url, Some(&submitter)))
        .trim()
        .to_string();
    let watch = factotum()
        .args(["watch", &id, "--coordinator", &c.url, "--token", &reader])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let kept: String = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter(|l| !l.ends_with(" reader"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, kept).unwrap();
    hup(&c);
    let removed = Instant::now();
    let out = watch.wait_with_output().unwrap();
    assert!(
        removed.elapsed() < Duration::from_secs(5),
        "{:?}",
        removed.elapsed()
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the token was removed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        with_token(&["runs"], &c.url, Some(&reader)).status.code(),
        Some(4)
    );

    // Who cancels is kept with the run: its token's name.
    let operator = add_token(&file, "operator", "cancel,read");
    hup(&c);
    assert!(eventually(Duration::from_secs(10), || with_token(
        &["cancel", &id],
        &c.url,
        Some(&operator)
    )
    .status
    .success()));
    assert!(eventually(Duration::from_secs(20), || {
        let o = with_token(&["status", &id, "-o", "json"], &c.url, Some(&operator));
        stdout(&o).contains(r#""cancelledBy": "operator""#)
    }));
    let o = with_token(&["status", &id], &c.url, Some(&operator));
    assert!(stdout(&o).contains("(by operator)"), "{}", stdout(&o));
}
