use super::*;
use crate::factfile::{Factfile, FactfileError, Job, OnResult, Tags, SNOWPLOW_SCHEMA};
use crate::template::Vars;

pub(crate) fn ff(spec: &[(&str, &[&str])]) -> Factfile {
    Factfile {
        schema: SNOWPLOW_SCHEMA.into(),
        data: Job {
            name: "test".into(),
            tasks: spec
                .iter()
                .map(|(n, deps)| Task {
                    name: n.to_string(),
                    executor: "shell".into(),
                    command: "echo".into(),
                    arguments: vec![n.to_string()],
                    depends_on: deps.iter().map(|d| d.to_string()).collect(),
                    on_result: OnResult {
                        terminate_job_with_success: vec![3],
                        continue_job: vec![0],
                    },
                    ..Task::default()
                })
                .collect(),
            ..Job::default()
        },
    }
}

fn names(p: &Plan) -> Vec<&str> {
    p.order
        .iter()
        .map(|&t| &*p.tasks[t as usize].name)
        .collect()
}

#[test]
fn display_order_matches_factotum_observations() {
    // multi-failure-cascade: Factotum listed setup, delayed-fail, slow-success, quick-fail, ...
    let p = Plan::new(&ff(&[
        ("setup", &[]),
        ("quick-fail", &["setup"]),
        ("slow-success", &["setup"]),
        ("delayed-fail", &["setup"]),
        ("dq", &["quick-fail"]),
        ("dd", &["delayed-fail"]),
        ("final", &["dq", "dd", "slow-success"]),
    ]));
    assert_eq!(
        names(&p),
        [
            "setup",
            "delayed-fail",
            "slow-success",
            "quick-fail",
            "dd",
            "dq",
            "final"
        ]
    );
    let p = Plan::new(&ff(&[
        ("sleep", &[]),
        ("sleep2", &["sleep"]),
        ("sleep3", &["sleep"]),
        ("done", &["sleep2", "sleep3"]),
    ]));
    assert_eq!(names(&p), ["sleep", "sleep3", "sleep2", "done"]);
    let p = Plan::new(&ff(&[("long", &[]), ("short", &[])]));
    assert_eq!(names(&p), ["short", "long"]);
}

#[test]
fn start_planning_follows_factotums_rule() {
    let f = ff(&[
        ("a", &[]),
        ("b", &["a"]),
        ("c", &["a"]),
        ("d", &["b", "c"]),
        ("e", &["b"]),
    ]);
    let p = Plan::from_start(&f, "b").unwrap_err();
    assert_eq!(
        p.to_string(),
        "The job cannot be started from 'b' because the job cannot be started here without triggering prior tasks"
    );
    let p = Plan::from_start(&f, "a").unwrap();
    assert_eq!(p.len(), 5);
    let p = Plan::from_start(&f, "e").unwrap();
    assert_eq!(names(&p), ["e"]);
    assert!(p.tasks[0].deps.is_empty());
    assert_eq!(
        Plan::from_start(&f, "zz").unwrap_err().to_string(),
        "The job cannot be started from 'zz' because the task specified could not be found"
    );
    let chain = ff(&[("x", &[]), ("y", &["x"]), ("z", &["y"])]);
    let p = Plan::from_start(&chain, "y").unwrap();
    assert_eq!(names(&p), ["y", "z"]);
}

#[test]
fn several_starts_plan_the_union_and_a_join_needs_both() {
    let f = ff(&[
        ("a", &[]),
        ("b", &["a"]),
        ("c", &["a"]),
        ("d", &["b", "c"]),
        ("e", &["b"]),
        ("f", &["a"]),
    ]);
    let starts = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let p = Plan::from_starts(&f, &starts(&["b", "c"])).unwrap();
    let mut got = names(&p);
    got.sort();
    assert_eq!(got, ["b", "c", "d", "e"]);
    assert!(p
        .tasks
        .iter()
        .find(|t| &*t.name == "b")
        .unwrap()
        .deps
        .is_empty());
    // c alone would trigger d without b.
    assert_eq!(
        Plan::from_starts(&f, &starts(&["c"])).unwrap_err(),
        PlanError::PriorTasks("c".into())
    );
    assert_eq!(
        Plan::from_starts(&f, &starts(&["b", "nope"])).unwrap_err(),
        PlanError::UnknownStart("nope".into())
    );
    // A start below another start, and a repeated one, change nothing.
    let p = Plan::from_starts(&f, &starts(&["a", "d", "a"])).unwrap();
    assert_eq!(p.len(), 6);
    assert_eq!(Plan::from_starts(&f, &[]).unwrap(), Plan::new(&f));
}

#[test]
fn descendants_in_display_order() {
    let p = Plan::new(&ff(&[
        ("a", &[]),
        ("b", &["a"]),
        ("c", &["a"]),
        ("d", &["b"]),
    ]));
    let d: Vec<&str> = p
        .descendants(0)
        .iter()
        .map(|&t| &*p.tasks[t as usize].name)
        .collect();
    assert_eq!(d, ["c", "b", "d"]);
}

#[test]
fn deep_chains_do_not_overflow() {
    let names: Vec<String> = (0..50_000).map(|i| format!("t{i}")).collect();
    let deps: Vec<Vec<&str>> = (0..50_000)
        .map(|i| {
            if i == 0 {
                vec![]
            } else {
                vec![names[i - 1].as_str()]
            }
        })
        .collect();
    let spec: Vec<(&str, &[&str])> = names
        .iter()
        .zip(&deps)
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let p = Plan::new(&ff(&spec));
    assert_eq!(p.order.len(), 50_000);
    assert_eq!(p.order[49_999], 49_999);
}

/// Every kind of graph problem, as a factfile spec.
fn broken_graphs() -> Vec<Vec<(&'static str, &'static [&'static str])>> {
    vec![
        vec![("a", &[]), ("a", &[])],
        vec![("a", &["a"])],
        vec![("a", &["zz"])],
        vec![("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("d", &[])],
        vec![("x", &["y"]), ("y", &["x"]), ("z", &["nope"])],
    ]
}

#[test]
fn validation_and_planning_report_the_same_problem() {
    let vars = Vars::new(&serde_json::Value::Null, &Tags::new()).unwrap();
    for spec in broken_graphs() {
        let hand_built = ff(&spec);
        let planned = Plan::try_new(&hand_built).unwrap_err();
        let read = Factfile::read(&hand_built.compact_json()).unwrap();
        let validated = read.finish(&vars).unwrap_err();
        assert_eq!(validated, FactfileError::Graph(planned.clone()), "{spec:?}");
        assert_eq!(validated.to_string(), planned.to_string());
    }
}

#[test]
fn planning_a_valid_factfile_agrees_with_the_lenient_plan() {
    let f = ff(&[("a", &[]), ("b", &["a"]), ("c", &["a", "b"])]);
    assert_eq!(Plan::try_new(&f).unwrap(), Plan::new(&f));
}

#[test]
fn planning_a_broken_hand_built_factfile_does_not_panic() {
    for spec in broken_graphs() {
        let p = Plan::new(&ff(&spec));
        assert_eq!(p.len(), spec.len());
    }
}
