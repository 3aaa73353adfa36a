use super::*;
use crate::dag::tests::ff;
use chrono::TimeZone;
use std::time::Duration;

fn result(outcome: Outcome, stdout: &str, duration: Duration) -> TaskResult {
    TaskResult {
        outcome,
        stdout: stdout.to_string(),
        stderr: String::new(),
        duration,
    }
}

fn t(ms: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::milliseconds(ms)
}

struct Harness {
    run: RunState,
    now: i64,
    log: Vec<Action>,
}

impl Harness {
    /// A run of an extended factfile: `tasks` are `(name, deps, extra task fields)`, `job` holds
    /// extra job fields.
    fn ext(tasks: &[(&str, &[&str], serde_json::Value)], job: serde_json::Value) -> Harness {
        let list: Vec<serde_json::Value> = tasks
            .iter()
            .map(|(n, deps, extra)| {
                let mut t = serde_json::json!({"name": n, "executor": "shell", "command": "echo",
                    "arguments": [], "dependsOn": deps,
                    "onResult": {"terminateJobWithSuccess": [3], "continueJob": [0]}});
                for (k, v) in extra.as_object().into_iter().flatten() {
                    t[k] = v.clone();
                }
                t
            })
            .collect();
        let mut data = serde_json::json!({"name": "policies", "tasks": list});
        for (k, v) in job.as_object().into_iter().flatten() {
            data[k] = v.clone();
        }
        let text = serde_json::json!({"schema": crate::factfile::FACTOTUM_SCHEMA, "data": data});
        let vars =
            crate::template::Vars::new(&serde_json::Value::Null, &Default::default()).unwrap();
        let ff = crate::Factfile::parse(&text.to_string(), &vars).unwrap();
        let mut h = Harness {
            run: RunState::new(Arc::new(Plan::new(&ff)), t(0), RunOptions::default()),
            now: 0,
            log: vec![],
        };
        h.apply(Event::Start);
        h
    }

    /// Moves the clock to `ms` and ticks.
    fn tick_at(&mut self, ms: i64) -> Vec<Action> {
        self.now = ms;
        let a = self.run.apply(Event::Tick, t(ms));
        self.log.extend(a.clone());
        a
    }

    fn new(spec: &[(&str, &[&str])]) -> Harness {
        let plan = Arc::new(Plan::new(&ff(spec)));
        let mut h = Harness {
            run: RunState::new(plan, t(0), RunOptions::default()),
            now: 0,
            log: vec![],
        };
        h.apply(Event::Start);
        h
    }

    fn id(&self, name: &str) -> TaskId {
        self.run
            .plan()
            .tasks
            .iter()
            .position(|t| &*t.name == name)
            .unwrap() as TaskId
    }

    fn apply(&mut self, e: Event) -> Vec<Action> {
        self.now += 10;
        let a = self.run.apply(e, t(self.now));
        self.log.extend(a.clone());
        a
    }

    /// Leases everything ready, like the embedded runner.
    fn lease_ready(&mut self) -> Vec<&'static str> {
        let ready = self.run.ready().to_vec();
        let names: Vec<&'static str> = ready
            .iter()
            .map(|&r| {
                &*Box::leak(
                    self.run.plan().tasks[r as usize]
                        .name
                        .to_string()
                        .into_boxed_str(),
                )
            })
            .collect();
        self.apply(Event::Lease { tasks: ready });
        names
    }

    fn finish(&mut self, name: &str, code: i32) -> Vec<Action> {
        let id = self.id(name);
        let attempt = self.run.task(id).unwrap().attempt;
        self.apply(Event::AttemptEnded {
            task: id,
            attempt,
            result: result(
                Outcome::Exited(code),
                &format!("{name} out"),
                Duration::from_millis(5),
            ),
        })
    }

    fn state(&self, name: &str) -> TaskState {
        self.run.task(self.id(name)).unwrap().state
    }

    fn reason(&self, name: &str) -> Option<String> {
        self.run.task(self.id(name)).unwrap().error_message.clone()
    }

    fn transitions(&self) -> Vec<String> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Action::Emit(u) => Some(match &u.kind {
                    UpdateKind::Job { previous, current } => {
                        format!(
                            "job {}->{}",
                            previous.map(|p| p.as_str()).unwrap_or("null"),
                            current.as_str()
                        )
                    }
                    UpdateKind::Tasks(ts) => ts
                        .iter()
                        .map(|tr| {
                            format!(
                                "{} {}->{}",
                                self.run.plan().tasks[tr.task as usize].name,
                                tr.previous.as_str(),
                                tr.current.as_str()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(" | "),
                }),
                _ => None,
            })
            .collect()
    }
}

fn finished_state(actions: &[Action]) -> Option<JobState> {
    actions.iter().find_map(|a| match a {
        Action::RunEnded(s) => Some(*s),
        _ => None,
    })
}

#[test]
fn chain_emits_factotums_order() {
    let mut h = Harness::new(&[("a", &[]), ("b", &["a"])]);
    assert_eq!(h.lease_ready(), ["a"]);
    h.finish("a", 0);
    assert_eq!(h.lease_ready(), ["b"]);
    let end = h.finish("b", 0);
    assert_eq!(finished_state(&end), Some(JobState::Succeeded));
    assert_eq!(
        h.transitions(),
        [
            "job null->WAITING",
            "job WAITING->RUNNING",
            "a WAITING->RUNNING",
            "a RUNNING->SUCCEEDED",
            "b WAITING->RUNNING",
            "b RUNNING->SUCCEEDED",
            "job RUNNING->SUCCEEDED"
        ]
    );
}

#[test]
fn job_running_payload_already_shows_the_first_batch_running() {
    let mut h = Harness::new(&[("a", &[]), ("b", &["a"])]);
    let actions = h.apply(Event::Lease { tasks: vec![0] });
    let Action::Emit(job) = &actions[0] else {
        panic!("{actions:?}")
    };
    let snap = job.snapshot.as_ref().unwrap();
    assert_eq!(snap.run_state, JobState::Running);
    assert_eq!(snap.tasks[0].state, TaskState::Running);
    assert_eq!(snap.tasks[0].started, Some(t(20)));
    assert!(matches!(
        actions.last(),
        Some(Action::Dispatch {
            task: 0,
            attempt: 1
        })
    ));
}

#[test]
fn no_level_barrier() {
    // a -> b, and an unrelated slow task s: b starts while s still runs.
    let mut h = Harness::new(&[("a", &[]), ("s", &[]), ("b", &["a"])]);
    h.lease_ready();
    h.finish("a", 0);
    assert_eq!(h.state("s"), TaskState::Running);
    assert_eq!(h.lease_ready(), ["b"]);
    assert_eq!(h.state("b"), TaskState::Running);
}

#[test]
fn failure_skips_descendants_and_accumulates_reasons() {
    let mut h = Harness::new(&[
        ("setup", &[]),
        ("quick", &["setup"]),
        ("slow", &["setup"]),
        ("delayed", &["setup"]),
        ("dq", &["quick"]),
        ("dd", &["delayed"]),
        ("final", &["dq", "dd", "slow"]),
    ]);
    h.lease_ready();
    h.finish("setup", 0);
    assert_eq!(h.lease_ready(), ["delayed", "slow", "quick"]);
    h.finish("quick", 5);
    assert_eq!(h.reason("quick").unwrap(),
        "the task exited with a value not specified in continue_job - 5 (task expects one of the following return codes to continue [0])");
    assert_eq!(h.state("final"), TaskState::Skipped);
    h.finish("slow", 0);
    assert!(h.run.ready().is_empty(), "final must not become ready");
    let end = h.finish("delayed", 2);
    assert_eq!(
        h.reason("final").unwrap(),
        "the task 'quick' failed, the task 'delayed' failed"
    );
    assert_eq!(h.reason("dd").unwrap(), "the task 'delayed' failed");
    assert_eq!(finished_state(&end), Some(JobState::Failed));
    let tr = h.transitions();
    assert!(
        tr.contains(
            &"quick RUNNING->FAILED | dq WAITING->SKIPPED | final WAITING->SKIPPED".to_string()
        ),
        "{tr:?}"
    );
    assert!(
        tr.contains(
            &"delayed RUNNING->FAILED | dd WAITING->SKIPPED | final SKIPPED->SKIPPED".to_string()
        ),
        "{tr:?}"
    );
    assert_eq!(tr.last().unwrap(), "job RUNNING->FAILED");
    assert_eq!(h.run.first_failed(), Some(h.id("quick")));
}

#[test]
fn early_finish_is_branch_local() {
    let mut h = Harness::new(&[
        ("a", &[]),
        ("stop", &["a"]),
        ("after", &["stop"]),
        ("other", &["a"]),
        ("tail", &["other"]),
    ]);
    h.lease_ready();
    h.finish("a", 0);
    h.lease_ready();
    h.finish("stop", 3);
    assert_eq!(h.state("stop"), TaskState::SucceededNoOp);
    assert_eq!(h.state("after"), TaskState::Skipped);
    assert_eq!(
        h.reason("after").unwrap(),
        "the task 'stop' requested early termination"
    );
    h.finish("other", 0);
    assert_eq!(h.lease_ready(), ["tail"]);
    let end = h.finish("tail", 0);
    assert_eq!(finished_state(&end), Some(JobState::Succeeded));
}

#[test]
fn stale_and_unknown_results_are_ignored() {
    let mut h = Harness::new(&[("a", &[])]);
    h.lease_ready();
    let stale = h.apply(Event::AttemptEnded {
        task: 0,
        attempt: 7,
        result: result(Outcome::Exited(1), "", Duration::ZERO),
    });
    assert!(stale.is_empty());
    assert_eq!(h.state("a"), TaskState::Running);
    let unknown = h.apply(Event::AttemptEnded {
        task: 99,
        attempt: 1,
        result: result(Outcome::Exited(0), "", Duration::ZERO),
    });
    assert!(unknown.is_empty());
    assert!(
        h.apply(Event::Lease { tasks: vec![0, 42] }).is_empty(),
        "a running task is not leased twice"
    );
    h.finish("a", 0);
    assert!(
        h.finish("a", 0).is_empty(),
        "a second result for the same attempt is ignored"
    );
}

#[test]
fn spawn_failure_is_minus_one() {
    let mut h = Harness::new(&[("a", &[]), ("b", &["a"])]);
    h.lease_ready();
    h.apply(Event::AttemptEnded {
        task: 0,
        attempt: 1,
        result: result(
            Outcome::SpawnFailed("No such file or directory (os error 2)".into()),
            "",
            Duration::ZERO,
        ),
    });
    let rec = h.run.task(0).unwrap();
    assert_eq!(rec.return_code, Some(-1));
    assert_eq!(
        rec.error_message.as_deref(),
        Some("Error executing process - No such file or directory (os error 2)")
    );
    assert_eq!(h.state("b"), TaskState::Skipped);
}

mod policies;
mod restore;

#[test]
fn cancel_kills_running_and_skips_the_rest() {
    let mut h = Harness::new(&[
        ("a", &[]),
        ("b", &["a"]),
        ("x", &[]),
        ("y", &["x"]),
        ("z", &[]),
    ]);
    h.apply(Event::Lease {
        tasks: vec![h.id("a"), h.id("x")],
    });
    let actions = h.apply(Event::Cancel {
        reason: "job cancelled".into(),
    });
    let kills: Vec<_> = actions
        .iter()
        .filter(|a| matches!(a, Action::Kill { .. }))
        .collect();
    assert_eq!(kills.len(), 2);
    assert_eq!(h.state("z"), TaskState::Skipped);
    assert_eq!(h.reason("z").unwrap(), "job cancelled");
    assert_eq!(
        h.state("b"),
        TaskState::Skipped,
        "below a running task: skipped too"
    );
    assert_eq!(h.reason("b").unwrap(), "job cancelled");
    assert!(h
        .apply(Event::Lease {
            tasks: vec![h.id("z")]
        })
        .is_empty());
    // x ignores TERM and exits 0 anyway: it was killed, so it is FAILED with the reason.
    h.finish("x", 0);
    assert_eq!(h.state("x"), TaskState::Failed);
    assert_eq!(h.reason("x").unwrap(), "job cancelled");
    assert_eq!(h.state("y"), TaskState::Skipped);
    assert_eq!(h.reason("y").unwrap(), "job cancelled", "no second reason");
    assert!(h.run.ready().is_empty());
    let end = h.finish("a", 1);
    assert_eq!(h.reason("a").unwrap(), "job cancelled");
    assert_eq!(finished_state(&end), Some(JobState::Failed));
}

#[test]
fn heartbeat_reports_running_tasks_with_output_so_far() {
    let mut h = Harness::new(&[("a", &[]), ("b", &[])]);
    h.lease_ready();
    h.apply(Event::Output {
        task: 0,
        attempt: 1,
        stream: Stream::Stdout,
        line: "line1".into(),
        continued: false,
    });
    // A long line in pieces joins up again.
    for (line, continued) in [("long-", false), ("line", true)] {
        h.apply(Event::Output {
            task: 0,
            attempt: 1,
            stream: Stream::Stdout,
            line: line.into(),
            continued,
        });
    }
    h.apply(Event::Output {
        task: 0,
        attempt: 2,
        stream: Stream::Stdout,
        line: "stale".into(),
        continued: false,
    });
    h.finish("b", 0);
    let beats = h.apply(Event::Heartbeat);
    assert_eq!(beats.len(), 1);
    let Action::Emit(u) = &beats[0] else { panic!() };
    assert_eq!(
        u.kind,
        UpdateKind::Tasks(vec![TaskTransition {
            task: 0,
            previous: TaskState::Running,
            current: TaskState::Running
        }])
    );
    let snap = u.snapshot.as_ref().unwrap();
    let a = snap.tasks.iter().find(|v| &*v.name == "a").unwrap();
    assert_eq!(a.stdout.as_deref(), Some("line1\nlong-line"));
}

#[test]
fn empty_job_succeeds_at_once() {
    let h = Harness::new(&[]);
    assert_eq!(h.run.job_state(), JobState::Succeeded);
    assert_eq!(
        h.transitions(),
        [
            "job null->WAITING",
            "job WAITING->RUNNING",
            "job RUNNING->SUCCEEDED"
        ]
    );
}

#[test]
fn attempts_are_numbered_and_snapshots_optional() {
    let plan = Arc::new(Plan::new(&ff(&[("a", &[])])));
    let mut run = RunState::new(
        plan,
        t(0),
        RunOptions {
            max_output: 4,
            snapshots: false,
        },
    );
    run.apply(Event::Start, t(1));
    let actions = run.apply(Event::Lease { tasks: vec![0] }, t(2));
    assert!(actions.iter().all(|a| !matches!(
        a,
        Action::Emit(Update {
            snapshot: Some(_),
            ..
        })
    )));
    assert!(actions.contains(&Action::Dispatch {
        task: 0,
        attempt: 1
    }));
    run.apply(
        Event::AttemptEnded {
            task: 0,
            attempt: 1,
            result: result(Outcome::Exited(0), "abcdefgh", Duration::from_millis(3)),
        },
        t(3),
    );
    assert_eq!(run.task(0).unwrap().stdout.as_str(), "efgh");
    assert_eq!(run.snapshot(t(4)).run_duration, Duration::from_millis(4));
}

#[test]
fn lost_attempt_fails_with_its_reason() {
    let mut h = Harness::new(&[("a", &[]), ("b", &["a"])]);
    h.lease_ready();
    h.apply(Event::AttemptEnded {
        task: 0,
        attempt: 1,
        result: result(
            Outcome::Lost("agent etl-3 lost".into()),
            "",
            Duration::from_secs(15),
        ),
    });
    let rec = h.run.task(0).unwrap();
    assert_eq!(rec.state, TaskState::Failed);
    assert_eq!(rec.return_code, None);
    assert_eq!(rec.error_message.as_deref(), Some("agent etl-3 lost"));
    assert_eq!(h.reason("b").unwrap(), "the task 'a' failed");
}
