//! "Nothing lost, nothing run twice", proved with an audit file, while real processes (the
//! `factotum` CLI, two `factotum-coordinator`s on etcd, two `factotum-agent`s with state dirs)
//! run a job of 24 tasks across an etcd fault: etcd's raft leader killed, or the leading
//! coordinator cut off from etcd. Every task appends its name to the audit file once per
//! start, so a line missing is a task lost and a line twice is a task run twice.
//! `SHOW_FLEET_LOGS=1` prints the run's status and every process's log even when they pass.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::fleet::{sibling, wait_for_agents, Coordinator, Etcd, EtcdCluster, Proc, Proxy};
use support::*;

/// The coordinators' leader lease (`--lease-ttl`): short, so a failover fits the test's time.
const LEASE_TTL: &str = "3";

/// A coordinator on `etcd` (comma-separated client URLs) with a short lease and grace.
fn coordinator_on(etcd: &str) -> Coordinator {
    Coordinator::start(&[
        "--etcd",
        etcd,
        "--lease-ttl",
        LEASE_TTL,
        "--failover-grace",
        "15",
    ])
}

/// The job's tasks as `(name, dependsOn)`: a chain `c01 → … → c08`, six roots `r01…r06`, eight
/// `m01…m08` fanning out of `c03`, and two joins (`j01` after every root and fan task, `j02`
/// after `j01` and the chain's end). 24 in all.
fn plan() -> Vec<(String, Vec<String>)> {
    let mut tasks = vec![];
    for i in 1..=8 {
        let deps = if i == 1 {
            vec![]
        } else {
            vec![format!("c{:02}", i - 1)]
        };
        tasks.push((format!("c{i:02}"), deps));
    }
    for i in 1..=6 {
        tasks.push((format!("r{i:02}"), vec![]));
    }
    for i in 1..=8 {
        tasks.push((format!("m{i:02}"), vec!["c03".to_string()]));
    }
    let before_j01: Vec<String> = tasks
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| n.starts_with('r') || n.starts_with('m'))
        .collect();
    tasks.push(("j01".into(), before_j01));
    tasks.push(("j02".into(), vec!["j01".into(), "c08".into()]));
    assert_eq!(tasks.len(), 24);
    tasks
}

/// The factfile of [`plan`]: each task appends its name to `audit` (one short line with `>>`:
/// an atomic append) and sleeps 0.2 s.
fn audited_factfile(dir: &Dir, audit: &Path) -> String {
    let tasks = plan()
        .iter()
        .map(|(name, deps)| {
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            task(
                name,
                &format!("echo {name} >> '{}'; sleep 0.2", audit.display()),
                &[],
                &deps,
            )
        })
        .collect();
    dir.write("audited.factfile", &factfile("audited", tasks))
}

/// How many times each task's line is in the audit file (every planned task listed, lines no
/// task wrote too).
fn audit_counts(audit: &Path) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = plan().into_iter().map(|(n, _)| (n, 0)).collect();
    for line in std::fs::read_to_string(audit).unwrap_or_default().lines() {
        *counts.entry(line.to_string()).or_default() += 1;
    }
    counts
}

/// An agent named `name` with its own `--state-dir` under `dir`, 4 slots, given every
/// coordinator (`urls`, comma-separated), logging to `<dir>/<name>.log`.
fn agent_with_state(urls: &str, name: &str, dir: &Dir) -> (Proc, PathBuf) {
    let state = dir.file(&format!("{name}-state"));
    std::fs::create_dir_all(&state).expect("the agent's state dir");
    let log = dir.file(&format!("{name}.log"));
    let child = Command::new(sibling("factotum-agent"))
        .args(["--coordinator", urls, "--name", name, "--slots", "4"])
        .args(["--drain-grace", "5", "--state-dir"])
        .arg(&state)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("the agent's log"))
        .spawn()
        .expect("the agent starts");
    (Proc(child), log)
}

/// Submits `ff` (tasks spread over the agents) to the coordinators `urls`; the run's reference.
fn submit(urls: &[&str], ff: &str) -> String {
    let mut args = vec!["submit", ff, "--placement", "spread"];
    for u in urls {
        args.extend(["--coordinator", u]);
    }
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "submit failed: {}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    assert_eq!(id.len(), 64, "not a run reference: {id:?}");
    id
}

/// `factotum status RUN` through the coordinators `urls`: its output, and the run's state
/// (None when the coordinators did not answer).
fn status(urls: &[&str], id: &str) -> (String, Option<String>) {
    let mut args = vec!["status", id];
    for u in urls {
        args.extend(["--coordinator", u]);
    }
    let o = run(&args);
    let out = format!("{}{}", stdout(&o), stderr(&o));
    let state = stdout(&o)
        .lines()
        .find_map(|l| l.strip_prefix("state "))
        .map(|s| s.trim().to_string());
    (out, state)
}

/// Polls `status` until the run has ended (SUCCEEDED or FAILED) or `limit` passes; the last
/// status output and state.
fn wait_for_end(urls: &[&str], id: &str, limit: Duration) -> (String, Option<String>) {
    let start = Instant::now();
    loop {
        let (out, state) = status(urls, id);
        let ended = matches!(state.as_deref(), Some("SUCCEEDED" | "FAILED"));
        if ended || start.elapsed() >= limit {
            return (out, state);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The leadership lines of a coordinator's log (led, gave up, stepped down), for the test's
/// output.
fn leadership(c: &Coordinator) -> Vec<String> {
    std::fs::read_to_string(&c.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.contains(" leading")
                || l.contains("stepping down")
                || l.contains("giving leadership up")
                || l.contains("resigned")
        })
        .map(String::from)
        .collect()
}

/// The last `n` lines of a file, for failure messages.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Everything worth reading when an assertion fails: the run's status, the audit file, and the
/// end of every coordinator's and agent's log.
fn report(status: &str, audit: &Path, coordinators: &[&Coordinator], agents: &[&Path]) -> String {
    let mut r = format!(
        "--- status:\n{status}\n--- audit:\n{}",
        std::fs::read_to_string(audit).unwrap_or_default()
    );
    for (i, c) in coordinators.iter().enumerate() {
        r += &format!("\n--- coordinator {i} ({}):\n{}", c.url, tail(&c.log, 60));
    }
    for a in agents {
        r += &format!("\n--- agent {}:\n{}", a.display(), tail(a, 60));
    }
    r
}

/// No coordinator exited, no task ran twice, the run SUCCEEDED, and no task was lost: the
/// audit holds each of the 24 tasks exactly once.
fn assert_each_task_once_and_succeeded(
    state: Option<&str>,
    audit: &Path,
    coordinators: &mut [&mut Coordinator],
    report: &str,
) {
    for (i, c) in coordinators.iter_mut().enumerate() {
        let exited = c.proc.0.try_wait().expect("the coordinator's status");
        assert!(
            exited.is_none(),
            "coordinator {i} exited ({exited:?}) during the etcd fault\n{report}"
        );
    }
    let counts = audit_counts(audit);
    let twice: Vec<String> = counts
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(t, n)| format!("{t} ×{n}"))
        .collect();
    let foreign: Vec<&String> = counts
        .keys()
        .filter(|t| !plan().iter().any(|(n, _)| n == *t))
        .collect();
    assert!(
        twice.is_empty() && foreign.is_empty(),
        "tasks run more than once: {twice:?} (unknown audit lines: {foreign:?})\n{report}"
    );
    assert_eq!(
        state,
        Some("SUCCEEDED"),
        "the run did not succeed within 30 s of the fault\n{report}"
    );
    let lost: Vec<&String> = counts
        .iter()
        .filter(|(_, &n)| n == 0)
        .map(|(t, _)| t)
        .collect();
    assert!(
        lost.is_empty(),
        "the run SUCCEEDED but tasks never ran: {lost:?}\n{report}"
    );
}

/// Waits (up to 15 s) until the fan out of `c03` has started (an `m…` line in the audit):
/// the run is under way with up to nine tasks running on the two agents, and six still to
/// be leased after them.
fn wait_for_the_fan(audit: &Path) {
    assert!(
        eventually(Duration::from_secs(15), || {
            std::fs::read_to_string(audit).is_ok_and(|s| s.lines().any(|l| l.starts_with('m')))
        }),
        "the fan out of c03 never started: {}",
        std::fs::read_to_string(audit).unwrap_or_default()
    );
}

/// How many lines the audit file has now.
fn lines_in(audit: &Path) -> usize {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn a_job_survives_losing_etcds_raft_leader_with_each_task_run_once() {
    let began = Instant::now();
    let mut cluster = EtcdCluster::start();
    let mut first = coordinator_on(&cluster.endpoints());
    assert!(
        eventually(Duration::from_secs(15), || first.leads()),
        "the first coordinator did not lead: {}",
        tail(&first.log, 30)
    );
    let mut second = coordinator_on(&cluster.endpoints());
    let urls = [first.url.as_str(), second.url.as_str()];
    let given = urls.join(",");
    let d = Dir::new();
    let (_a1, log1) = agent_with_state(&given, "audit-a", &d);
    let (_a2, log2) = agent_with_state(&given, "audit-b", &d);
    wait_for_agents(&first.url, 2);
    let audit = d.file("audit");
    let ff = audited_factfile(&d, &audit);
    let id = submit(&urls, &ff);

    wait_for_the_fan(&audit);
    let leader = cluster
        .raft_leader(Duration::from_secs(5))
        .expect("etcd has no single raft leader");
    let done_at_kill = lines_in(&audit);
    cluster.kill(leader);
    let killed = Instant::now();
    eprintln!(
        "killed etcd member {leader} (the raft leader) with {done_at_kill} of 24 tasks started"
    );
    assert!(done_at_kill < 24, "the run ended before the fault");
    let new_leader = cluster.raft_leader(Duration::from_secs(10));
    eprintln!(
        "etcd's new raft leader: member {new_leader:?}, {:?} after the kill",
        killed.elapsed()
    );

    let (status_out, state) = wait_for_end(&urls, &id, Duration::from_secs(30));
    eprintln!(
        "the run ended {:?} after the kill ({:?} in all)",
        killed.elapsed(),
        began.elapsed()
    );
    for (name, c) in [("first", &first), ("second", &second)] {
        eprintln!("{name} coordinator: {:#?}", leadership(c));
    }
    let report = report(&status_out, &audit, &[&first, &second], &[&log1, &log2]);
    if std::env::var_os("SHOW_FLEET_LOGS").is_some() {
        eprintln!("{report}");
    }
    assert_each_task_once_and_succeeded(
        state.as_deref(),
        &audit,
        &mut [&mut first, &mut second],
        &report,
    );
    assert!(
        new_leader.is_some(),
        "etcd elected no new raft leader after losing its leader\n{report}"
    );
}

#[test]
fn a_job_survives_its_leader_being_cut_from_etcd_with_each_task_run_once() {
    let began = Instant::now();
    let etcd = Etcd::start();
    let proxy = Proxy::start(etcd.endpoint.trim_start_matches("http://"));
    // The leader reaches etcd only through the proxy; the standby directly.
    let mut leader = coordinator_on(&proxy.url());
    assert!(
        eventually(Duration::from_secs(15), || leader.leads()),
        "the first coordinator did not lead: {}",
        tail(&leader.log, 30)
    );
    let mut standby = coordinator_on(&etcd.endpoint);
    let urls = [leader.url.as_str(), standby.url.as_str()];
    let given = urls.join(",");
    let d = Dir::new();
    let (_a1, log1) = agent_with_state(&given, "audit-a", &d);
    let (_a2, log2) = agent_with_state(&given, "audit-b", &d);
    wait_for_agents(&leader.url, 2);
    let audit = d.file("audit");
    let ff = audited_factfile(&d, &audit);
    let id = submit(&urls, &ff);

    wait_for_the_fan(&audit);
    let done_at_cut = lines_in(&audit);
    proxy.cut();
    let cut = Instant::now();
    eprintln!("cut the leader from etcd with {done_at_cut} of 24 tasks started");
    assert!(done_at_cut < 24, "the run ended before the fault");

    let (status_out, state) = wait_for_end(&urls, &id, Duration::from_secs(30));
    eprintln!(
        "the run ended {:?} after the cut ({:?} in all)",
        cut.elapsed(),
        began.elapsed()
    );
    for (name, c) in [("cut leader", &leader), ("standby", &standby)] {
        eprintln!("{name}: {:#?}", leadership(c));
    }
    let report = report(&status_out, &audit, &[&leader, &standby], &[&log1, &log2]);
    if std::env::var_os("SHOW_FLEET_LOGS").is_some() {
        eprintln!("{report}");
    }
    assert_each_task_once_and_succeeded(
        state.as_deref(),
        &audit,
        &mut [&mut leader, &mut standby],
        &report,
    );
    assert!(
        standby.leads(),
        "the standby never took over: the run did not go through a failover\n{report}"
    );
}
