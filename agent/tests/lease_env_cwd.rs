//! A lease's `env` and `cwd` reach the task: run by the agent itself, recorded by its own shell
//! (`--state-dir`), and under each of the two shims an older agent used (`factotum-shim`, and
//! `factotum-agent --shim`), with real processes.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use factotum_agent::{attempt, shim, Agent, AgentConfig, Link};
use factotum_proto::{
    agent_message, attempt_result, coordinator_message, AttemptResult, CoordinatorMessage, Lease,
    LeaseRef, Welcome,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How the agent runs its tasks.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Direct,
    Shim,
    AgentAsShim,
    /// With a state dir and no shim: the task's shell records it (the agent's default).
    Recorded,
}

const MODES: [Mode; 4] = [Mode::Direct, Mode::Shim, Mode::AgentAsShim, Mode::Recorded];

/// A fresh, empty directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("factotum-lease-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `path` (absolute) as a path relative to our working directory: `../../<path>`.
fn relative(path: &Path) -> PathBuf {
    let up = std::env::current_dir().unwrap().components().count();
    let mut rel: PathBuf = std::iter::repeat_n("..", up).collect();
    rel.extend(path.components().filter(|c| *c != Component::RootDir));
    rel
}

fn config(mode: Mode, state_dir: &Path) -> AgentConfig {
    let shim_exe = match mode {
        Mode::Direct | Mode::Recorded => None,
        Mode::Shim => Some(PathBuf::from(env!("CARGO_BIN_EXE_factotum-shim"))),
        Mode::AgentAsShim => Some(PathBuf::from(env!("CARGO_BIN_EXE_factotum-agent"))),
    };
    AgentConfig {
        agent_id: "test".into(),
        hostname: "test".into(),
        ips: vec![],
        labels: HashMap::new(),
        slots: 1,
        kill_grace: Duration::from_millis(300),
        drain_grace: Duration::ZERO,
        // Relative on purpose: the shim runs in the task's directory and must not care.
        state_dir: (shim_exe.is_some() || matches!(mode, Mode::Recorded))
            .then(|| relative(state_dir)),
        shim_exe,
        max_stream_rate: None,
    }
}

fn lease(command_line: &str, env: &[(&str, &str)], cwd: &Path) -> Lease {
    Lease {
        lease: Some(LeaseRef {
            run_id: "run".into(),
            task: 0,
            attempt: 1,
            epoch: 0,
        }),
        task_name: "t".into(),
        command_line: command_line.into(),
        max_output: 10_000,
        dry_run: false,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cwd: cwd.to_string_lossy().into_owned(),
        redact: vec![],
    }
}

/// Runs `lease` in a session of a fresh agent; returns its result and its output lines.
async fn run(cfg: AgentConfig, lease: Lease) -> (AttemptResult, Vec<String>) {
    let (agent_tx, mut from_agent) = mpsc::channel(1024);
    let (to_agent, agent_rx) = mpsc::channel(16);
    let session = tokio::spawn(async move {
        let mut agent = Agent::new(cfg);
        let link = Link {
            tx: agent_tx,
            rx: agent_rx,
        };
        let never = CancellationToken::new();
        agent.session(link, &never, &never).await
    });
    for msg in [
        coordinator_message::Msg::Welcome(Welcome {
            epoch: 0,
            heartbeat_ms: 0,
            lost_after_ms: 0,
        }),
        coordinator_message::Msg::Lease(lease),
    ] {
        to_agent
            .send(CoordinatorMessage { msg: Some(msg) })
            .await
            .unwrap();
    }
    let mut lines = vec![];
    let finished = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match from_agent.recv().await.and_then(|m| m.msg) {
                // Whole lines of one read come in one message, joined by '\n'.
                Some(agent_message::Msg::Output(o)) => {
                    (o.line.split('\n')).for_each(|l| lines.push(format!("{}:{l}", o.stream)))
                }
                Some(agent_message::Msg::AttemptResult(f)) => return f,
                Some(_) => {}
                None => panic!("the session ended without a result"),
            }
        }
    })
    .await
    .expect("no result in time");
    drop(to_agent);
    let _ = session.await;
    (finished, lines)
}

#[tokio::test]
async fn lease_env_and_cwd_reach_the_task() {
    for mode in MODES {
        let base = scratch(&format!("env-cwd-{mode:?}"));
        let (work, state) = (base.join("work dir"), base.join("state"));
        std::fs::create_dir_all(&work).unwrap();
        let l = lease(
            r#"echo "$FOO"; pwd; echo "${PATH:+PATH kept}"; echo oops >&2; touch made"#,
            &[("FOO", "bar $baz")],
            &work,
        );
        let (f, lines) = run(config(mode, &state), l).await;
        assert_eq!(
            f.outcome,
            Some(attempt_result::Outcome::ExitCode(0)),
            "{mode:?}: {f:?}"
        );
        let work = std::fs::canonicalize(&work).unwrap();
        assert_eq!(
            f.stdout_tail,
            format!("bar $baz\n{}\nPATH kept", work.display()),
            "{mode:?}"
        );
        assert_eq!(f.stderr_tail, "oops", "{mode:?}");
        assert!(
            lines.contains(&"1:bar $baz".to_string()),
            "{mode:?}: {lines:?}"
        );
        // The task ran in its directory; its records were kept in the state directory.
        let mut made: Vec<_> = std::fs::read_dir(&work)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        made.sort();
        assert_eq!(made, ["made"], "{mode:?}");
        if matches!(mode, Mode::Recorded) {
            let name = attempt::recorded::name("run", 0, 1);
            let journal = state.join(attempt::recorded::JOURNAL);
            assert_eq!(attempt::recorded::find_exit(&journal, &name), Some(0));
            let outputs = attempt::recorded::own_outputs(&state, &name);
            let (out, err) = attempt::recorded::read_tails(outputs, 10_000, &Default::default());
            assert_eq!(out, f.stdout_tail);
            assert_eq!(err, "oops");
        }
        if matches!(mode, Mode::Shim | Mode::AgentAsShim) {
            let dir = shim::attempt_dir(&state, "run", 0, 1);
            assert_eq!(
                attempt::read_exit(&dir).map(|r| r.code),
                Some(0),
                "{mode:?}"
            );
            let (out, err) = attempt::read_tails(&dir, 10_000, &Default::default());
            assert_eq!(out, f.stdout_tail, "{mode:?}");
            assert_eq!(err, "oops", "{mode:?}");
        }
        let _ = std::fs::remove_dir_all(base);
    }
}

#[tokio::test]
async fn an_unusable_lease_cwd_is_a_spawn_failure() {
    for mode in MODES {
        let base = scratch(&format!("bad-cwd-{mode:?}"));
        let missing = base.join("missing");
        let l = lease("echo never", &[], &missing);
        let (f, lines) = run(config(mode, &base.join("state")), l).await;
        assert_eq!(
            f.outcome,
            Some(attempt_result::Outcome::SpawnError(format!(
                "cannot use '{}' as the working directory: No such file or directory (os error 2)",
                missing.display()
            ))),
            "{mode:?}"
        );
        assert!(lines.is_empty(), "{mode:?}: {lines:?}");
        let _ = std::fs::remove_dir_all(base);
    }
}

#[tokio::test]
async fn an_empty_lease_cwd_is_the_agents_own() {
    let base = scratch("no-cwd");
    let (f, _) = run(
        config(Mode::Shim, &base.join("state")),
        lease("pwd", &[], Path::new("")),
    )
    .await;
    assert_eq!(f.outcome, Some(attempt_result::Outcome::ExitCode(0)));
    assert_eq!(
        PathBuf::from(f.stdout_tail),
        std::fs::canonicalize(std::env::current_dir().unwrap()).unwrap()
    );
    let _ = std::fs::remove_dir_all(base);
}

#[tokio::test]
async fn secrets_are_redacted_in_what_is_reported_and_attempt_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    const SECRET: &str = "s3cr3t-value";
    // A long line that puts the secret across the agent's piece cut (MAX_LINE) and the shim's
    // (MAX_LINE - 3), then short lines on both streams; the spawn error case is below.
    let pad = factotum_agent::executor::MAX_LINE - 9;
    let command = format!(
        "head -c {pad} /dev/zero | tr '\\0' a; printf \"$TOKEN\"; echo; echo \"token=$TOKEN\"; \
         echo \"$TOKEN\" >&2; echo abc"
    );
    for mode in MODES {
        let base = scratch(&format!("redact-{mode:?}"));
        let (work, state) = (base.join("work"), base.join("state"));
        std::fs::create_dir_all(&work).unwrap();
        let mut l = lease(&command, &[("TOKEN", SECRET)], &work);
        l.redact = vec![SECRET.into(), "abc".into()];
        let (f, lines) = run(config(mode, &state), l).await;
        assert_eq!(
            f.outcome,
            Some(attempt_result::Outcome::ExitCode(0)),
            "{mode:?}"
        );
        let all = lines.concat();
        assert!(!all.contains(SECRET), "{mode:?}: the secret was streamed");
        assert!(!f.stdout_tail.contains(SECRET), "{mode:?}");
        assert!(!f.stderr_tail.contains(SECRET), "{mode:?}");
        assert!(
            f.stdout_tail
                .ends_with("a[redacted]\ntoken=[redacted]\nabc"),
            "{mode:?}"
        );
        assert_eq!(f.stderr_tail, "[redacted]", "{mode:?}");
        assert!(
            lines.contains(&"1:token=[redacted]".to_string()),
            "{mode:?}"
        );
        // Short values are left alone (see MIN_SECRET).
        assert!(lines.contains(&"1:abc".to_string()), "{mode:?}");
        if matches!(mode, Mode::Recorded) {
            // The output files keep the raw output; they and the journal (leases and their
            // environments) are for the agent's owner only.
            let name = attempt::recorded::name("run", 0, 1);
            let outputs = attempt::recorded::own_outputs(&state, &name);
            let raw = std::fs::read_to_string(&outputs[0]).unwrap();
            assert!(raw.contains(&format!("token={SECRET}")));
            for f in outputs
                .iter()
                .chain([&state.join(attempt::recorded::JOURNAL)])
            {
                let bits = std::fs::metadata(f).unwrap().permissions().mode();
                assert_eq!(bits & 0o777, 0o600, "{}", f.display());
            }
            let dir_bits = std::fs::metadata(state.join("output"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(dir_bits & 0o777, 0o700);
            let redact = factotum_common::redact::Redactor::new([SECRET]);
            let (out, err) = attempt::recorded::read_tails(outputs, 10_000, &redact);
            assert_eq!(
                (out.as_str(), err.as_str()),
                (f.stdout_tail.as_str(), "[redacted]")
            );
        }
        if matches!(mode, Mode::Shim | Mode::AgentAsShim) {
            let dir = shim::attempt_dir(&state, "run", 0, 1);
            // The files keep the raw output, for the agent's owner only.
            let raw = std::fs::read_to_string(dir.join(shim::OUTPUT)).unwrap();
            assert!(raw.contains(&format!("token={SECRET}")), "{mode:?}");
            for name in [shim::OUTPUT, shim::LEASE, shim::EXIT, shim::PID] {
                let mode_bits = std::fs::metadata(dir.join(name))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode_bits & 0o777, 0o600, "{mode:?}: {name}");
            }
            let dir_bits = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(dir_bits & 0o777, 0o700, "{mode:?}");
            // Tails read back from the file (after a restart) are redacted the same way.
            let redact = factotum_common::redact::Redactor::new([SECRET]);
            let (out, err) = attempt::read_tails(&dir, 10_000, &redact);
            assert_eq!(
                (out.as_str(), err.as_str()),
                (f.stdout_tail.as_str(), "[redacted]")
            );
        }
        // A spawn error names the working directory: redacted too.
        let missing = base.join(format!("dir-{SECRET}"));
        let mut l = lease("echo never", &[], &missing);
        l.redact = vec![SECRET.into()];
        let (f, _) = run(config(mode, &base.join("state2")), l).await;
        let shown = format!("{:?}", f.outcome);
        assert!(
            !shown.contains(SECRET) && shown.contains("[redacted]"),
            "{mode:?}: {shown}"
        );
        let _ = std::fs::remove_dir_all(base);
    }
}
